"""Nothing crashes: NULL arguments, untracked frees, bad region files, processes that never use CUDA,
and the export list of libvgpu.so."""

from __future__ import annotations

import subprocess

import pytest
from conftest import BUILD, MIB, Hami, by_cmd

INVALID_VALUE, OUT_OF_MEMORY, INVALID_HANDLE = 1, 2, 400


def test_null_arguments_reach_the_driver_and_return_its_codes(hami: Hami) -> None:
    with_hook = by_cmd(hami.probe("init", "ctx", "0", "null-args", CUDA_DEVICE_MEMORY_LIMIT="100m"), "null-args")[0]
    without = by_cmd(hami.probe("init", "ctx", "0", "null-args", preload=False), "null-args")[0]
    assert with_hook == without  # same CUresult for every call, none crashed
    assert with_hook["alloc"] == INVALID_VALUE
    assert with_hook["free0"] == 0
    assert with_hook["launch"] == INVALID_HANDLE
    assert hami.inspect()["devices"][0]["used"] == 0


def test_null_arguments_before_any_context(hami: Hami) -> None:
    with_hook = by_cmd(hami.probe("init", "null-args", CUDA_DEVICE_MEMORY_LIMIT="100m"), "null-args")[0]
    without = by_cmd(hami.probe("init", "null-args", preload=False), "null-args")[0]
    assert with_hook == without


def test_calls_before_cuinit_fail_like_the_driver(hami: Hami) -> None:
    lines = hami.probe("alloc", "1m", "info", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert [line["rc"] for line in lines] == [3, 3]  # CUDA_ERROR_NOT_INITIALIZED


def test_free_of_an_untracked_pointer_reaches_the_driver(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "alloc", "10m", "free-untracked", "5m", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="100m"
    )
    untracked = by_cmd(lines, "free-untracked")[0]
    assert untracked["alloc_rc"] == 0
    assert untracked["rc"] == 0
    assert untracked["driver_calls"] == 1
    assert untracked["second_rc"] == INVALID_VALUE  # the driver really freed it
    assert by_cmd(lines, "budget")[0]["used_total"] == 10 * MIB  # the tracked allocation is untouched


def test_a_failing_driver_call_rolls_the_reservation_back(hami: Hami) -> None:
    # 64m physical GPU, 1g limit: the driver refuses, the budget must not keep the bytes.
    lines = hami.probe(
        "init", "ctx", "0", "alloc", "100m", "budget", "0", FAKE_GPU_MEMORY_MIB="64", CUDA_DEVICE_MEMORY_LIMIT="1g"
    )
    assert by_cmd(lines, "alloc")[0]["rc"] == 2
    assert by_cmd(lines, "budget")[0]["used_total"] == 0


def test_free_never_goes_below_what_the_cap_view_can_show(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "info", CUDA_DEVICE_MEMORY_LIMIT="100m", FAKE_GPU_MEMORY_MIB="64")
    info = by_cmd(lines, "info")[0]
    assert info["total"] == 64 * MIB  # limit above physical: the physical size wins
    assert 0 <= info["free"] <= info["total"]


def test_an_empty_region_file_is_initialised(hami: Hami) -> None:
    hami.region.write_bytes(b"")
    lines = hami.probe("init", "ctx", "0", "alloc", "10m", "alloc", "200m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert [line["rc"] for line in lines] == [0, 0, 0, OUT_OF_MEMORY]


@pytest.mark.parametrize("content", [b"garbage" * 100, b"\x00" * 4096])
def test_an_unusable_region_file_fails_closed_and_the_process_still_runs(hami: Hami, content: bytes) -> None:
    hami.region.write_bytes(content)
    lines = hami.probe("init", "ctx", "0", "alloc", "10m", "info", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert [line["rc"] for line in lines] == [0, 0, OUT_OF_MEMORY, 0]
    assert hami.last_stderr.count("is unusable") == 1
    assert "every device memory allocation of this process is refused" in hami.last_stderr


def test_an_unwritable_region_path_fails_closed(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "10m",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(hami.tmp / "missing-dir" / "x.cache"),
    )
    assert [line["rc"] for line in lines] == [0, 0, OUT_OF_MEMORY]
    assert "cannot open it" in hami.last_stderr


def test_an_unusable_region_without_a_limit_only_loses_accounting(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "10m",
        "free",
        "0",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(hami.tmp / "missing-dir" / "x.cache"),
    )
    assert [line["rc"] for line in lines] == [0, 0, 0, 0]
    assert "memory usage is not accounted (no limit is configured)" in hami.last_stderr


def test_a_process_that_never_uses_cuda_is_untouched(hami: Hami) -> None:
    out = subprocess.run(
        ["sh", "-c", "echo hello"],
        env=hami.environ(CUDA_DEVICE_MEMORY_LIMIT="1m"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout == "hello\n"
    assert "HAMI" not in out.stderr
    assert not hami.region.exists()  # nothing attached


def test_cuda_used_from_another_librarys_constructor_is_enforced(hami: Hami) -> None:
    client = BUILD / "tests" / "libctor_client.so"
    env = hami.environ(CUDA_DEVICE_MEMORY_LIMIT="100m")
    env["LD_PRELOAD"] += f" {client}"
    out = subprocess.run(["sh", "-c", "true"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if '"ctor"' in line]
    assert lines == ['{"cmd":"ctor","init":0,"first":0,"second":2}']  # one process: sh -c true
    assert "Device 0 OOM" in out.stderr


def test_rtld_next_lookups_keep_their_meaning(hami: Hami) -> None:
    """dlsym(RTLD_NEXT, ...) from Python's ctypes still resolves (glibc sees the real caller)."""
    code = (
        "import ctypes; libc = ctypes.CDLL(None); "
        "print(bool(ctypes.cast(libc.getpid, ctypes.c_void_p).value), libc.getpid() > 0)"
    )
    assert hami.python(code, CUDA_DEVICE_MEMORY_LIMIT="1m").strip() == "True True"


def test_libvgpu_exports_only_the_hooks_dlsym_and_the_budget_api() -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(BUILD / "libvgpu.so")], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert not any(n.startswith("vk") for n in names)
    assert {
        "dlsym",
        "cuMemAlloc_v2",
        "cuGetProcAddress_v2",
        "nvmlDeviceGetMemoryInfo",
        "hami_budget_reserve",
        "hami_budget_release",
        "hami_budget_query",
        "hami_budget_device_by_uuid",
    } <= names
    assert all(n.startswith(("cu", "nvml", "hami_budget_", "dlsym")) for n in names), names
