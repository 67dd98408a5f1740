"""The spec the plugin publishes at Allocate, read by the real hamicore (libvgpu.so in hamicore's CUDA test client
over the fake driver, test doubles of the GPU): the layout agrees with hamicore's C header, and a container whose
environment asks for more memory gets what the spec says. The container's view is a private mount namespace with
the spec bind-mounted read-only at its fixed path and the per-container directory at the hook directory, as the
Allocate response mounts them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hami_device_plugin.adapters import files
from hami_device_plugin.core import region, spec
from hami_device_plugin.core.allocation import InjectionConfig, container_allocation
from hami_device_plugin.core.pods import ContainerInfo, pod_record
from hami_device_plugin.core.region import MAX_DEVICES, build_region
from hami_shared.pod_devices import ContainerDevice
from hamicore_client import BUILD, PROBE, client_env
from podspecs import Ctr, pod_json

G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
MIB = 1 << 20

# The container's mounts made real: the per-container directory at the hook directory, the spec read-only.
_CONTAINER = r"""
set -e
mount --bind "$1" "$2"
mount -t tmpfs -o size=64k hami-spec /etc/hami
: > /etc/hami/vgpu.spec
mount --bind -o ro "$3" /etc/hami/vgpu.spec
shift 3
export LD_PRELOAD="$PRELOAD"
exec "$@"
"""


def test_the_spec_layout_is_hamicores() -> None:
    out = subprocess.run([str(BUILD / "hami-region-inspect"), "--spec-layout"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    layout = json.loads(out.stdout)
    assert (layout["path"], layout["magic"], layout["version_major"]) == (
        spec.CONTAINER_PATH,
        spec.MAGIC,
        spec.VERSION_MAJOR,
    )
    assert (layout["size"], layout["device_size"], layout["region_path_bytes"]) == (
        spec.SPEC_SIZE,
        spec.DEVICE_SIZE,
        spec.REGION_PATH_BYTES,
    )
    assert (layout["allow_disable_control"], layout["vulkan"], layout["oversubscribe"], layout["uuid_valid"]) == (
        spec.FLAG_ALLOW_DISABLE_CONTROL,
        spec.FLAG_VULKAN,
        spec.FLAG_OVERSUBSCRIBE,
        spec.DEVICE_UUID_VALID,
    )
    assert layout["version_minor"] == spec.VERSION_MINOR
    offsets = [
        layout[f"spec.{f}"]
        for f in (
            "magic",
            "version_major",
            "version_minor",
            "spec_size",
            "device_count",
            "task_priority",
            "core_policy",
            "flags",
            "default_sm_limit_percent",
        )
    ]
    assert offsets == [0, 8, 12, 16, 20, 24, 28, 32, 36]  # the order spec._HEADER packs
    assert (layout["spec.region_path"], layout["spec.devices"]) == (spec.HEADER_SIZE, spec.DEVICES_OFFSET)
    assert [layout[f"device.{f}"] for f in ("uuid", "limit_bytes", "sm_limit_percent", "flags")] == [0, 16, 24, 28]
    assert spec.SPEC_SIZE == spec.DEVICES_OFFSET + MAX_DEVICES * spec.DEVICE_SIZE


def test_the_region_layout_is_hamicores() -> None:
    """core/region.py reads region_layout.h (through the generated core/layout.py): every constant and offset it
    uses, against what hamicore's own inspector prints."""
    out = subprocess.run([str(BUILD / "hami-region-inspect"), "--layout"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    lay = json.loads(out.stdout)
    assert (lay["magic"], lay["version_major"], lay["version_minor"]) == (
        region.MAGIC,
        region.VERSION_MAJOR,
        region.VERSION_MINOR,
    )
    assert (lay["region_size"], lay["header_size"], lay["devices_offset"], lay["slots_offset"]) == (
        region.REGION_SIZE,
        region.HEADER_SIZE,
        region.DEVICES_OFFSET,
        region.SLOTS_OFFSET,
    )
    assert (lay["device_record_size"], lay["slot_size"], lay["max_devices"], lay["max_procs"]) == (
        region.DEVICE_RECORD_SIZE,
        region.SLOT_SIZE,
        region.MAX_DEVICES,
        region.MAX_PROCS,
    )
    assert (lay["header.discovery_state"], lay["header.monitor_generation"], lay["header.monitor_interval_ms"]) == (
        region.DISCOVERY_STATE_OFFSET,
        region.MONITOR_GENERATION_OFFSET,
        region.MONITOR_INTERVAL_OFFSET,
    )
    assert lay["device.limiter"] == region.LIMITER_OFFSET
    assert (lay["limiter.utilization_pct"], lay["limiter.contended"], lay["limiter.priority_hold"]) == (
        region.UTILIZATION_FIELD,
        region.CONTENDED_FIELD,
        region.PRIORITY_HOLD_FIELD,
    )
    assert (lay["slot.host_pid"], lay["slot.used_bytes"]) == (region.SLOT_HOST_PID_FIELD, region.SLOT_USED_FIELD)


def _config(tmp_path: Path, *, oversubscribe: bool = False) -> InjectionConfig:
    return InjectionConfig(host_hook_dir=str(tmp_path / "host"), container_hook_dir=str(tmp_path / "hook-in-container"),
                           oversubscribe=oversubscribe)  # fmt: skip


def _run_in_container(
    tmp_path: Path, usedmem: int, config: InjectionConfig, pod_env: dict[str, str], *probe: str
) -> subprocess.CompletedProcess[str]:
    """Allocate for one container holding ``usedmem`` MiB of G0, publish its region and spec as the adapter does,
    and run hamicore's probe in the container's view with the pod's ``pod_env`` over the plugin's env."""
    if not PROBE.is_file():
        pytest.fail(f"hamicore's test client is missing at {PROBE}: run `make hamicore` first")
    hook = tmp_path / "hook-in-container"  # stands for /usr/local/vgpu inside the container
    hook.mkdir()
    pod = pod_record(pod_json("p", uid="uid-1", node="n", containers=[Ctr("main", [(G0, usedmem, 0, 0)])]))
    allocation = container_allocation(
        pod, ContainerInfo("main", False), (ContainerDevice(uuid=G0, usedmem=usedmem, usedcores=0),), config
    )
    assert allocation.region is not None
    assert allocation.spec is not None
    assert allocation.spec_file is not None
    files.prepare_container_dir(Path(allocation.cache_dir))
    files.publish_region(Path(allocation.region_file), build_region(allocation.region, 1))
    files.publish_spec(Path(allocation.spec_file), allocation.spec)
    assert Path(allocation.spec_file).stat().st_mode & 0o777 == 0o444
    env = client_env(Path(allocation.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"]), tmp_path / "gpu.state")
    env.update(allocation.envs)
    env.update(pod_env)
    env["PRELOAD"] = env.pop("LD_PRELOAD")
    os.makedirs("/etc/hami", exist_ok=True)  # the mount point (empty; the spec is in a private namespace)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _CONTAINER, "sh",
         allocation.cache_dir, str(hook), allocation.spec_file, str(PROBE), *probe],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_hamicore_enforces_the_published_spec_over_the_pods_environment(tmp_path: Path) -> None:
    config = _config(tmp_path)
    # What the pod adds after the plugin's env: every escape the environment used to allow.
    escapes = {
        "CUDA_DEVICE_MEMORY_LIMIT_0": "80g",
        "CUDA_DEVICE_MEMORY_LIMIT": "80g",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / "mine.cache"),
        "CUDA_DISABLE_CONTROL": "true",
    }
    run = _run_in_container(tmp_path, 300, config, escapes, "init", "ctx", "0", "alloc", "200m", "alloc", "200m")
    allocs = [json.loads(line)["rc"] for line in run.stdout.splitlines() if '"alloc"' in line]
    assert allocs == [0, 2]  # 300 MiB, as the spec says
    assert not (tmp_path / "mine.cache").exists()
    assert "ignoring" in run.stderr


@pytest.mark.parametrize(
    ("oversubscribe", "pod_env", "count"),
    [
        (True, {}, 6),  # memory-scaling 1.5: 4 x 256 MiB on the 1 GiB card, 2 spilled to managed memory
        (True, {"CUDA_OVERSUBSCRIBE": "false"}, 6),
        (False, {"CUDA_OVERSUBSCRIBE": "true"}, 4),  # the pod's own variable: no spill
    ],
)
def test_oversubscription_is_the_published_spec_s_not_the_pods_environment(
    tmp_path: Path, oversubscribe: bool, pod_env: dict[str, str], count: int
) -> None:
    config = _config(tmp_path, oversubscribe=oversubscribe)
    run = _run_in_container(tmp_path, 1536, config, {"FAKE_GPU_MEMORY_MIB": "1024", **pod_env},
                            "init", "ctx", "0", "fill", "256m")  # fmt: skip
    fill = next(json.loads(line) for line in run.stdout.splitlines() if '"fill"' in line)
    assert (fill["count"], fill["rc"]) == (count, 2)


def test_removing_a_container_directory_removes_its_spec(tmp_path: Path) -> None:
    files.prepare_container_dir(tmp_path / "uid-1_main")
    files.publish_spec(tmp_path / "uid-1_main.spec", b"old")
    files.publish_spec(tmp_path / "uid-1_main.spec", b"new")  # kubelet asking again: replaced
    assert (tmp_path / "uid-1_main.spec").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    files.remove_container_dir(tmp_path, "uid-1_main")
    assert list(tmp_path.iterdir()) == []
    files.remove_container_dir(tmp_path, "uid-1_main")  # gone already: fine
