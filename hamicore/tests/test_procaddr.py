"""cuGetProcAddress(_v2): the requested CUDA version and the per-thread default stream flag decide
which variant the caller gets; hooked variants come from libvgpu.so, the rest straight from the driver.

The driver double hands out internal addresses (not its exported symbols), like the real driver, so libvgpu
cannot recognise its own hooks' targets by pointer and must go by the driver's naming rules; with
FAKE_PROCADDR_INTERNAL_PERCENT=0 it hands out the exported symbols and the pointer match is exercised."""

from __future__ import annotations

import pytest
from conftest import MIB, Hami, by_cmd

PER_THREAD = "2"


@pytest.mark.parametrize(
    ("symbol", "version", "flags", "expected"),
    [
        ("cuMemAlloc", "12000", "0", "cuMemAlloc_v2"),
        ("cuMemGetInfo", "11000", "0", "cuMemGetInfo_v2"),
        ("cuDeviceTotalMem", "12000", "0", "cuDeviceTotalMem_v2"),
        ("cuLaunchKernel", "12000", "0", "cuLaunchKernel"),
        ("cuLaunchKernel", "12000", PER_THREAD, "cuLaunchKernel_ptsz"),
        ("cuMemAllocAsync", "12000", PER_THREAD, "cuMemAllocAsync_ptsz"),
        ("cuMemFreeAsync", "12000", PER_THREAD, "cuMemFreeAsync_ptsz"),
        ("cuLaunchKernelEx", "12000", PER_THREAD, "cuLaunchKernelEx_ptsz"),
        ("cuGraphLaunch", "12000", PER_THREAD, "cuGraphLaunch_ptsz"),
        ("cuGetProcAddress", "12000", "0", "cuGetProcAddress_v2"),
        ("cuGetProcAddress", "11030", "0", "cuGetProcAddress"),
        ("cuMemCreate", "12000", "0", "cuMemCreate"),
        ("cuCtxCreate", "13000", "0", "cuCtxCreate_v4"),
        ("cuCtxCreate", "12000", "0", "cuCtxCreate_v3"),
        ("cuCtxCreate", "11000", "0", "cuCtxCreate_v2"),
        ("cuDevicePrimaryCtxReset", "12000", "0", "cuDevicePrimaryCtxReset_v2"),
        ("cuModuleLoad", "12000", "0", "cuModuleLoad"),
        ("cuModuleLoadFatBinary", "12000", "0", "cuModuleLoadFatBinary"),
        ("cuLibraryLoadFromFile", "12000", "0", "cuLibraryLoadFromFile"),
        ("cuDevicePrimaryCtxRelease", "12000", "0", "cuDevicePrimaryCtxRelease_v2"),
    ],
)
@pytest.mark.parametrize("internal_percent", ["100", "0"])
def test_hooked_symbols_come_from_libvgpu_in_the_requested_variant(
    hami: Hami, symbol: str, version: str, flags: str, expected: str, internal_percent: str
) -> None:
    result = by_cmd(
        hami.probe(
            "init",
            "procaddr",
            symbol,
            version,
            flags,
            CUDA_DEVICE_MEMORY_LIMIT="1g",
            FAKE_PROCADDR_INTERNAL_PERCENT=internal_percent,
        ),
        "procaddr",
    )[0]
    assert (result["rc"], result["status"], result["symbol"], result["exact_symbol"]) == (0, 0, expected, True)
    assert str(result["library"]).endswith("/libvgpu.so")


def test_the_driver_double_hands_out_internal_addresses(hami: Hami) -> None:
    internal = by_cmd(hami.probe("init", "procaddr", "cuMemAlloc", "12000", "0", preload=False), "procaddr")[0]
    assert (internal["rc"], internal["driver_entry"], internal["exact_symbol"]) == (0, "cuMemAlloc_v2", False)
    exported = by_cmd(
        hami.probe("init", "procaddr", "cuMemAlloc", "12000", "0", preload=False, FAKE_PROCADDR_INTERNAL_PERCENT="0"),
        "procaddr",
    )[0]
    assert (exported["symbol"], exported["exact_symbol"]) == ("cuMemAlloc_v2", True)


@pytest.mark.parametrize(
    ("symbol", "version", "flags"),
    [
        ("cuMemAllocAsync", "11010", "0"),
        ("cuMemAllocAsync", "11010", PER_THREAD),
        ("cuLaunchKernelEx", "11070", "0"),
        ("cuMemCreate", "10010", "0"),
        ("cuGetProcAddress", "11020", "0"),
    ],
)
def test_entries_newer_than_the_requested_version_are_refused_as_the_driver_refuses_them(
    hami: Hami, symbol: str, version: str, flags: str
) -> None:
    with_hook = by_cmd(
        hami.probe("init", "procaddr", symbol, version, flags, CUDA_DEVICE_MEMORY_LIMIT="1g"), "procaddr"
    )[0]
    without = by_cmd(hami.probe("init", "procaddr", symbol, version, flags, preload=False), "procaddr")[0]
    assert with_hook == without
    assert (with_hook["rc"], with_hook["status"], with_hook["symbol"]) == (500, 2, "")  # VERSION_NOT_SUFFICIENT


@pytest.mark.parametrize(
    ("symbol", "flags", "expected"),
    [
        ("cuStreamSynchronize", PER_THREAD, "cuStreamSynchronize_ptsz"),
        ("cuCtxGetDevice", "0", "cuCtxGetDevice"),
        ("cuCtxGetCurrent", "0", "cuCtxGetCurrent"),
    ],
)
def test_other_symbols_are_the_drivers_own(hami: Hami, symbol: str, flags: str, expected: str) -> None:
    result = by_cmd(hami.probe("init", "procaddr", symbol, "13000", flags, CUDA_DEVICE_MEMORY_LIMIT="1g"), "procaddr")[
        0
    ]
    assert (result["rc"], result["driver_entry"], result["exact_symbol"]) == (0, expected, False)
    assert str(result["library"]).endswith("/fake/libcuda.so.1")


def test_unknown_symbols_keep_the_drivers_answer(hami: Hami) -> None:
    result = by_cmd(
        hami.probe("init", "procaddr", "cuNoSuchThing", "13000", "0", CUDA_DEVICE_MEMORY_LIMIT="1g"), "procaddr"
    )[0]
    assert (result["rc"], result["status"], result["symbol"]) == (500, 1, "")  # CUDA_ERROR_NOT_FOUND


@pytest.mark.parametrize("internal_percent", ["100", "0"])
def test_allocations_through_cugetprocaddress_are_enforced(hami: Hami, internal_percent: str) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        *(["procaddr-alloc", "12000", "30m"] * 4),
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        FAKE_PROCADDR_INTERNAL_PERCENT=internal_percent,
    )
    assert [r["rc"] for r in by_cmd(lines, "procaddr-alloc")] == [0, 0, 0, 2]


def test_every_launch_path_reaches_the_drivers_matching_variant(hami: Hami) -> None:
    with_hook = by_cmd(
        hami.probe("init", "ctx", "0", "kernel", "launch-all", CUDA_DEVICE_MEMORY_LIMIT="1g"), "launch-all"
    )[0]
    without = by_cmd(hami.probe("init", "ctx", "0", "kernel", "launch-all", preload=False), "launch-all")[0]
    assert with_hook == without
    assert with_hook["rcs"] == [0] * 6
    assert with_hook["driver"] == [1] * 6


@pytest.mark.parametrize("how", ["legacy-alloc", "legacy-dlsym-alloc"])
def test_the_pre_3_2_entry_points_are_enforced(hami: Hami, how: str) -> None:
    """cuMemAlloc without _v2 (32-bit sizes and pointers) is still in the driver, reached by cuGetProcAddress
    with CUDA 3.1 or by dlsym: it is charged like cuMemAlloc_v2, and freed by cuMemFree_v2."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        *([how, "30m"] * 4),
        "budget",
        "0",
        "free",
        "0",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in by_cmd(lines, how)] == [0, 0, 0, 2]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [90 * MIB, 60 * MIB]
