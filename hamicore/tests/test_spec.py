"""The device plugin's read-only spec decides what hamicore enforces, and an unusable region fails closed.

Each process runs in a private mount namespace where /etc/hami/vgpu.spec (a path fixed in the library) shows a
spec written by the device plugin's own writer (``hami_device_plugin.core.spec``), the way a container sees it:
a read-only bind mount of its own. The tests then replay what a container can do: set the interposer's variables
in its environment, rewrite the limits in its writable region, put a spec of its own at the path, or break the
region; none of it raises a limit. Release, ASan/UBSan and TSan builds run this file alike.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import BUILD, MIB, Hami, by_cmd, region_layout
from hami_device_plugin.core import spec as spec_format
from hami_device_plugin.core.region import RegionDevice, RegionSpec

OUT_OF_MEMORY = 2
G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"  # the fake driver's GPU 0
ESCAPES = {
    "CUDA_DEVICE_MEMORY_LIMIT": "80g",
    "CUDA_DEVICE_MEMORY_LIMIT_0": "80g",
    "CUDA_DEVICE_SM_LIMIT": "100",
    "GPU_CORE_UTILIZATION_POLICY": "disable",
    "CUDA_TASK_PRIORITY": "0",
}


def write_spec(
    hami: Hami,
    limit_mib: int = 100,
    *,
    allow_disable_control: bool = False,
    how: str = "mount",
    image: bytes | None = None,
) -> Path:
    region = RegionSpec(devices=(RegionDevice(G0, limit_mib * MIB, 0),))
    data = (
        image
        if image is not None
        else spec_format.build_spec(region, str(hami.region), allow_disable_control=allow_disable_control, vulkan=False)
    )
    path = hami.tmp / "vgpu.spec"
    path.write_bytes(data)
    path.chmod(0o444)
    hami.spec, hami.spec_how = path, how
    return path


def rcs(lines: list[dict[str, object]]) -> list[object]:
    return [line["rc"] for line in by_cmd(lines, "alloc")]


def test_limits_come_from_the_spec_and_the_environment_cannot_raise_them(hami: Hami) -> None:
    write_spec(hami, 100)
    elsewhere = hami.tmp / "elsewhere.cache"
    hami.env.update(ESCAPES)
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "60m",
        "alloc",
        "60m",
        "info",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(elsewhere),
    )
    assert rcs(lines) == [0, OUT_OF_MEMORY]
    assert by_cmd(lines, "info")[0]["total"] == 100 * MIB
    assert by_cmd(lines, "budget")[0]["limit"] == 100 * MIB
    assert not elsewhere.exists()  # the spec's region, not the environment's
    assert hami.inspect()["devices"][0]["used"] == 0  # the probe exited: its slot was given back
    warnings = [line for line in hami.last_stderr.splitlines() if "ignoring" in line]
    assert len(warnings) == 1, hami.last_stderr
    for name in (
        "CUDA_DEVICE_MEMORY_LIMIT",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        "CUDA_TASK_PRIORITY",
        "GPU_CORE_UTILIZATION_POLICY",
    ):
        assert name in warnings[0]


def test_env_equal_to_the_spec_is_not_warned_about(hami: Hami) -> None:
    write_spec(hami, 100)
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "60m",
        CUDA_DEVICE_MEMORY_LIMIT_0="100m",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(hami.region),
    )
    assert rcs(lines) == [0]
    assert "ignoring" not in hami.last_stderr


def test_without_a_spec_the_environment_still_works(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert rcs(lines) == [0, OUT_OF_MEMORY]
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "150m",
        CUDA_DEVICE_MEMORY_LIMIT="200m",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(hami.tmp / "second.cache"),
    )
    assert rcs(lines) == [0]


def _rewrite_limit(region: Path, value: int) -> None:
    lay = region_layout()
    with region.open("r+b") as f:
        f.seek(lay["devices_offset"] + lay["device.limit_bytes"])
        f.write(struct.pack("<Q", value))


@pytest.mark.parametrize("value", [0, 80 << 30])
def test_a_limit_rewritten_in_the_writable_region_has_no_effect(hami: Hami, value: int) -> None:
    write_spec(hami, 100)
    assert rcs(hami.probe("init", "ctx", "0", "alloc", "10m")) == [0]  # creates the region
    _rewrite_limit(hami.region, value)
    lines = hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m", "budget", "0")
    assert rcs(lines) == [0, OUT_OF_MEMORY]
    assert by_cmd(lines, "budget")[0]["limit"] == 100 * MIB


def test_a_limit_rewritten_in_the_region_has_no_effect_without_a_spec_either(hami: Hami) -> None:
    assert rcs(hami.probe("init", "ctx", "0", "alloc", "10m", CUDA_DEVICE_MEMORY_LIMIT="100m")) == [0]
    _rewrite_limit(hami.region, 0)
    lines = hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert rcs(lines) == [0, OUT_OF_MEMORY]


def test_cuda_disable_control_is_ignored_unless_the_spec_allows_it(hami: Hami) -> None:
    write_spec(hami, 100)
    lines = hami.probe("init", "ctx", "0", "alloc", "150m", CUDA_DISABLE_CONTROL="true")
    assert rcs(lines) == [OUT_OF_MEMORY]
    assert "CUDA_DISABLE_CONTROL" in hami.last_stderr
    write_spec(hami, 100, allow_disable_control=True)
    lines = hami.probe("init", "ctx", "0", "alloc", "150m", CUDA_DISABLE_CONTROL="true")
    assert rcs(lines) == [0]
    # Allowed but not asked for: enforced as usual.
    lines = hami.probe("init", "ctx", "0", "alloc", "150m")
    assert rcs(lines) == [OUT_OF_MEMORY]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("file", "is on a writable file system"),  # a file the image brought or the container wrote
        ("rw", "is on a writable file system"),
        ("rofile", "is not a mount of its own"),
    ],
)
def test_a_spec_that_is_not_the_plugins_read_only_mount_fails_closed(hami: Hami, how: str, message: str) -> None:
    write_spec(hami, 80 * 1024, how=how)
    lines = hami.probe("init", "ctx", "0", "alloc", "10m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert rcs(lines) == [OUT_OF_MEMORY]
    assert message in hami.last_stderr
    assert hami.last_stderr.count("is refused (CUDA_ERROR_OUT_OF_MEMORY)") == 1


def _image(**changes: int) -> bytes:
    data = bytearray(
        spec_format.build_spec(
            RegionSpec(devices=(RegionDevice(G0, 100 * MIB, 0),)),
            "/tmp/x.cache",
            allow_disable_control=False,
            vulkan=False,
        )
    )
    offsets = {
        "magic": (0, "<Q"),
        "major": (8, "<I"),
        "size": (16, "<I"),
        "count": (20, "<I"),
        "priority": (24, "<i"),
        "policy": (28, "<I"),
    }
    for name, value in changes.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (_image(magic=1), "bad magic"),
        (_image(major=2), f"spec version 2.{spec_format.VERSION_MINOR},"),
        (_image(size=64), "needs at least"),
        (_image()[:100], "needs at least"),
        (_image(count=0), "names 0 GPUs"),
        (_image(count=17), "names 17 GPUs"),
        (_image(priority=-1), "out of range"),
        (_image(policy=9), "out of range"),
        (b"", "has 0 bytes, not 1..65536"),
        (b"\xff" * 70000, "not 1..65536"),
    ],
)
def test_a_corrupt_spec_fails_closed(hami: Hami, image: bytes, message: str) -> None:
    write_spec(hami, image=image)
    lines = hami.probe("init", "ctx", "0", "alloc", "1m")
    assert rcs(lines) == [OUT_OF_MEMORY]
    assert message in hami.last_stderr, hami.last_stderr


def test_a_newer_spec_minor_with_appended_fields_is_read(hami: Hami) -> None:
    data = bytearray(
        spec_format.build_spec(
            RegionSpec(devices=(RegionDevice(G0, 100 * MIB, 0),)),
            str(hami.region),
            allow_disable_control=False,
            vulkan=False,
        )
    )
    data += b"\x01" * 64  # a field this library does not know
    struct.pack_into("<II", data, 12, 7, len(data))  # minor 7, the new size
    write_spec(hami, image=bytes(data))
    assert rcs(hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m")) == [0, OUT_OF_MEMORY]


def _region_with(hami: Hami, **header: int) -> None:
    """A region created by the library, then given another layout version (or magic) in its header."""
    assert rcs(hami.probe("init", "ctx", "0", "alloc", "1m")) == [0]
    lay = region_layout()
    with hami.region.open("r+b") as f:
        for name, value in header.items():
            f.seek(lay[f"header.{name}"])
            f.write(struct.pack("<Q" if name == "magic" else "<I", value))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"version_major": 2}, "layout version 2.3"),
        ({"magic": 0x1234}, "bad magic"),
    ],
)
def test_a_region_of_another_major_or_magic_fails_closed(hami: Hami, header: dict[str, int], message: str) -> None:
    write_spec(hami, 100)
    _region_with(hami, **header)
    lines = hami.probe("init", "ctx", "0", "alloc", "1m")
    assert rcs(lines) == [OUT_OF_MEMORY]
    assert message in hami.last_stderr
    assert "every device memory allocation of this process is refused" in hami.last_stderr


@pytest.mark.parametrize("where", ["missing-dir/x.cache", "dir", "/dev/null", "short"])
def test_a_region_that_cannot_be_opened_or_sized_fails_closed(hami: Hami, where: str) -> None:
    path = Path(where) if where.startswith("/") else hami.tmp / where
    if where == "dir":
        path.mkdir()
    if where == "short":
        path.write_bytes(b"\0" * 4096)
    region = RegionSpec(devices=(RegionDevice(G0, 100 * MIB, 0),))
    spec = hami.tmp / "vgpu.spec"
    spec.write_bytes(spec_format.build_spec(region, str(path), allow_disable_control=False, vulkan=False))
    hami.spec = spec
    lines = hami.probe("init", "ctx", "0", "alloc", "1m", "info")
    assert rcs(lines) == [OUT_OF_MEMORY]
    assert by_cmd(lines, "info")[0]["rc"] == 0  # the rest of CUDA still works
    assert hami.last_stderr.count("is refused (CUDA_ERROR_OUT_OF_MEMORY)") == 1


def test_a_future_minor_region_is_shared(hami: Hami) -> None:
    write_spec(hami, 100)
    _region_with(hami, version_minor=9)
    assert rcs(hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m")) == [0, OUT_OF_MEMORY]


LAYOUT11 = BUILD / "libvgpu-layout11.so"


def _old(hami: Hami, *args: str, **extra: str) -> subprocess.Popen[str]:
    """A process of a 1.1 library (no spec support, limits from the region) in the same container."""
    argv, env = hami.command([str(BUILD / "tests" / "cuda_probe"), *args], hami.environ(True, **extra))
    env["HAMI_TEST_PRELOAD" if hami.spec else "LD_PRELOAD"] = env.get(
        "HAMI_TEST_PRELOAD" if hami.spec else "LD_PRELOAD", ""
    ).replace(str(hami.lib), str(LAYOUT11))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hold(proc: subprocess.Popen[str], steps: int) -> list[str]:
    assert proc.stdout is not None
    return [proc.stdout.readline() for _ in range(steps)]


@pytest.mark.parametrize("first", ["old", "new"])
def test_a_1_1_and_a_1_2_library_share_one_region_and_both_enforce(hami: Hami, first: str) -> None:
    """Rolling upgrade: the plugin sets env (for 1.1) and the spec (for 1.2) to the same limits; whichever library
    creates the region, the other attaches, and together they never exceed the limit."""
    write_spec(hami, 100)
    hami.env.update({"CUDA_DEVICE_MEMORY_LIMIT_0": "100m", "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(hami.region)})
    if first == "old":
        holder = _old(hami, "init", "ctx", "0", "alloc", "70m", "ready", "hold")
    else:
        holder = hami.spawn("init", "ctx", "0", "alloc", "70m", "ready", "hold")
    try:
        out = _hold(holder, 4)
        assert '"rc":0' in out[2], out
        inspected = hami.inspect()
        assert inspected["version"] == ("1.1" if first == "old" else "1.3")
        if first == "old":
            lines = hami.probe("init", "ctx", "0", "alloc", "50m", "alloc", "20m")
            assert rcs(lines) == [OUT_OF_MEMORY, 0]
        else:
            late = _old(hami, "init", "ctx", "0", "alloc", "50m", "alloc", "20m")
            stdout, stderr = late.communicate(timeout=120)
            assert late.returncode == 0, stderr
            assert [line.count('"rc":0') for line in stdout.splitlines()[2:]] == [0, 1], stdout
    finally:
        hami.stop(holder)


def test_slots_say_which_library_version_attached(hami: Hami) -> None:
    write_spec(hami, 100)
    env = {"CUDA_DEVICE_MEMORY_LIMIT_0": "100m", "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(hami.region)}
    old = _old(hami, "init", "ctx", "0", "alloc", "1m", "ready", "hold", **env)
    new = hami.spawn("init", "ctx", "0", "alloc", "1m", "ready", "hold", **env)
    try:
        _hold(old, 4), _hold(new, 4)
        lay, data = region_layout(), hami.region.read_bytes()
        versions = set()
        for slot in range(lay["max_procs"]):
            base = lay["slots_offset"] + slot * lay["slot_size"]
            if struct.unpack_from("<I", data, base + lay["slot.state"])[0] == 2:
                versions.add(struct.unpack_from("<I", data, base + lay["slot.lib_version"])[0])
        assert versions == {0, (1 << 16) | 3}
    finally:
        hami.stop(old), hami.stop(new)


def test_a_gpu_outside_the_specs_set_gets_no_memory(hami: Hami) -> None:
    """A pod that overrides NVIDIA_VISIBLE_DEVICES sees more GPUs than it was given: none of them is unlimited."""
    write_spec(hami, 100)  # the container's one GPU is the driver's GPU 0
    lines = hami.probe(
        "init",
        "ctx",
        "1",
        "alloc",
        "1m",
        "ctx",
        "0",
        "alloc",
        "60m",
        "alloc",
        "60m",
        FAKE_GPU_COUNT="2",
        CUDA_DEVICE_MEMORY_LIMIT="80g",
    )
    assert rcs(lines) == [OUT_OF_MEMORY, 0, OUT_OF_MEMORY]
    assert "a GPU outside this container's set" in hami.last_stderr
    # The same GPU as the driver's second one, listed first by the pod: still the spec's GPU by UUID.
    lines = hami.probe(
        "init", "ctx", "0", "alloc", "60m", "ctx", "1", "alloc", "1m", FAKE_GPU_COUNT="2", CUDA_VISIBLE_DEVICES="1,0"
    )
    assert rcs(lines) == [OUT_OF_MEMORY, 0]
