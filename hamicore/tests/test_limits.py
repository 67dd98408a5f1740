"""Memory limits through every accounted allocation path: exact cap, virtualised views, limit parsing."""

from __future__ import annotations

import re

import pytest
from conftest import MIB, Hami, by_cmd

OUT_OF_MEMORY = 2


@pytest.mark.parametrize(
    ("path", "args"),
    [
        ("alloc", ["alloc", "10m"]),
        ("managed", ["managed", "10m"]),
        ("async", ["async", "10m"]),
        ("pool", ["pool", "10m"]),
        ("vmm", ["vmm", "10m"]),
        ("procaddr-alloc", ["procaddr-alloc", "12000", "10m"]),
        ("dlsym-alloc", ["dlsym-alloc", "10m"]),
    ],
)
def test_n_allocations_fit_and_the_next_is_refused_at_exactly_the_cap(hami: Hami, path: str, args: list[str]) -> None:
    lines = hami.probe("init", "ctx", "0", *(args * 11), "budget", "0", CUDA_DEVICE_MEMORY_LIMIT="100m")
    results = by_cmd(lines, path)
    assert [r["rc"] for r in results] == [0] * 10 + [OUT_OF_MEMORY]
    budget = by_cmd(lines, "budget")[0]
    assert budget["limit"] == 100 * MIB
    assert budget["used_total"] == 100 * MIB
    assert budget["used_self"] == 100 * MIB


def test_oom_is_one_log_line_in_hami_format(hami: Hami) -> None:
    hami.probe("init", "ctx", "0", "alloc", "60m", "alloc", "60m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    lines = [line for line in hami.last_stderr.splitlines() if "OOM" in line]
    assert len(lines) == 1
    assert re.fullmatch(
        r"\[HAMI-core ERROR \(pid:\d+ thread=\d+ budget\.c:\d+\)\]: Device 0 OOM "
        + str(120 * MIB)
        + " / "
        + str(100 * MIB),
        lines[0],
    )


def test_freed_memory_can_be_allocated_again(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "alloc",
        "60m",
        "free",
        "0",
        "alloc",
        "60m",
        "freeasync",
        "1",
        "async",
        "60m",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in lines if r["cmd"] in ("alloc", "free", "freeasync", "async")] == [0] * 5
    assert by_cmd(lines, "budget")[0]["used_total"] == 60 * MIB


def test_vmm_host_memory_is_not_counted_and_release_returns_device_memory(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "vmmhost",
        "100m",
        "vmm",
        "64m",
        "budget",
        "0",
        "release",
        "1",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in lines if r["cmd"] in ("vmmhost", "vmm", "release")] == [0, 0, 0]
    assert [b["used_total"] for b in by_cmd(lines, "budget")] == [64 * MIB, 0]


def test_pool_allocations_are_charged_where_the_pool_lives(hami: Hami) -> None:
    """A pool on GPU 1 used from a context on GPU 0 charges GPU 1; a host pool charges nothing. The first pool keeps
    its freed 80 MiB until the synchronisation, then gives it back (see test_pools.py)."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "devpool",
        "1",
        "80m",
        "hostpool",
        "500m",
        "freeasync",
        "0",
        "sync",
        "devpool",
        "1",
        "80m",
        "devpool",
        "1",
        "30m",
        "budget",
        "0",
        "budget",
        "1",
        FAKE_GPU_COUNT="2",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
    )
    assert [r["rc"] for r in lines if r["cmd"] in ("devpool", "hostpool", "freeasync")] == [0, 0, 0, 0, OUT_OF_MEMORY]
    budgets = by_cmd(lines, "budget")
    assert [b["used_total"] for b in budgets] == [0, 80 * MIB]


@pytest.mark.parametrize(("alignment", "expected_pitch"), [("2048", 2048), ("256", 1280)])
def test_pitch_allocations_are_counted_by_the_pitch_the_driver_chose(
    hami: Hami, alignment: str, expected_pitch: int
) -> None:
    """libvgpu reserves a 512-byte-aligned estimate (1536 per row here); the double's pitch is wider or
    narrower, and the budget settles on what the driver chose either way."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "pitch",
        "1100",
        "1024",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        FAKE_GPU_PITCH_ALIGNMENT=alignment,
    )
    pitch = by_cmd(lines, "pitch")[0]
    assert (pitch["rc"], pitch["pitch"]) == (0, expected_pitch)
    assert by_cmd(lines, "budget")[0]["used_total"] == expected_pitch * 1024


def test_a_pitch_wider_than_the_estimate_is_refused_at_the_cap_and_freed(hami: Hami) -> None:
    """The estimate (1536 x 32768 = 48 MiB) fits in 60 MiB, the driver's 2048-byte pitch (64 MiB) does not: the
    allocation is given back to the driver and refused, and nothing stays charged."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "pitch",
        "1100",
        "32768",
        "budget",
        "0",
        CUDA_DEVICE_MEMORY_LIMIT="60m",
        FAKE_GPU_PITCH_ALIGNMENT="2048",
    )
    assert by_cmd(lines, "pitch")[0]["rc"] == OUT_OF_MEMORY
    assert by_cmd(lines, "budget")[0]["used_total"] == 0


def test_mem_get_info_and_device_total_show_the_slice(hami: Hami) -> None:
    lines = hami.probe(
        "init", "ctx", "0", "info", "alloc", "30m", "info", "total", "0", CUDA_DEVICE_MEMORY_LIMIT="100m"
    )
    before, after = by_cmd(lines, "info")
    assert (before["total"], before["free"]) == (100 * MIB, 100 * MIB)
    assert (after["total"], after["free"]) == (100 * MIB, 70 * MIB)
    assert by_cmd(lines, "total")[0]["total"] == 100 * MIB


def test_without_a_limit_the_physical_view_is_untouched_but_usage_is_counted(hami: Hami) -> None:
    lines = hami.probe("init", "ctx", "0", "info", "alloc", "30m", "budget", "0", FAKE_GPU_MEMORY_MIB="2048")
    assert by_cmd(lines, "info")[0]["total"] == 2048 * MIB
    budget = by_cmd(lines, "budget")[0]
    assert (budget["limit"], budget["used_total"]) == (0, 30 * MIB)


def test_a_second_process_sees_the_usage_of_the_first(hami: Hami) -> None:
    holder = hami.spawn("init", "ctx", "0", "alloc", "40m", "hold", CUDA_DEVICE_MEMORY_LIMIT="100m")
    try:
        assert holder.stdout is not None
        for _ in range(3):
            holder.stdout.readline()
        lines = hami.probe("init", "ctx", "0", "info", "alloc", "70m", CUDA_DEVICE_MEMORY_LIMIT="100m")
        assert by_cmd(lines, "info")[0]["free"] == 60 * MIB
        assert by_cmd(lines, "alloc")[0]["rc"] == OUT_OF_MEMORY
    finally:
        hami.stop(holder)


def test_a_process_that_exits_without_freeing_gives_its_memory_back(hami: Hami) -> None:
    hami.probe("init", "ctx", "0", "alloc", "80m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    lines = hami.probe("init", "ctx", "0", "info", "alloc", "80m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert by_cmd(lines, "info")[0]["free"] == 100 * MIB
    assert by_cmd(lines, "alloc")[0]["rc"] == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1073741824", 1 << 30),
        ("1048576k", 1 << 30),
        ("1024m", 1 << 30),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("2gb", 2 << 30),
    ],
)
def test_limit_syntax(hami: Hami, value: str, expected: int) -> None:
    lines = hami.probe("init", "ctx", "0", "budget", "0", CUDA_DEVICE_MEMORY_LIMIT=value)
    assert by_cmd(lines, "budget")[0]["limit"] == expected


@pytest.mark.parametrize("value", ["lots", "1x", "-5m", "99999999999999999999999"])
def test_a_bad_limit_is_reported_and_ignored(hami: Hami, value: str) -> None:
    lines = hami.probe("init", "ctx", "0", "budget", "0", "alloc", "1m", CUDA_DEVICE_MEMORY_LIMIT=value)
    assert by_cmd(lines, "budget")[0]["limit"] == 0
    assert f"CUDA_DEVICE_MEMORY_LIMIT='{value}' is not a size" in hami.last_stderr


def test_per_device_limit_overrides_the_global_one(hami: Hami) -> None:
    lines = hami.probe(
        "init",
        "ctx",
        "1",
        "info",
        "budget",
        "0",
        "budget",
        "1",
        FAKE_GPU_COUNT="2",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        CUDA_DEVICE_MEMORY_LIMIT_1="300m",
    )
    assert by_cmd(lines, "info")[0]["total"] == 300 * MIB
    assert [b["limit"] for b in by_cmd(lines, "budget")] == [100 * MIB, 300 * MIB]


@pytest.mark.parametrize(
    "visible", ["1", "GPU-fa4e0000-0000-4000-8000-000000000001", "GPU-fa4e0000-0000-4000-8000-000000000001,0"]
)
def test_cuda_visible_devices_maps_to_the_right_limit_on_every_path(hami: Hami, visible: str) -> None:
    """Ordinal 0 is container GPU 1 here (index form and UUID form)."""
    lines = hami.probe(
        "init",
        "ctx",
        "0",
        "info",
        "total",
        "0",
        "alloc",
        "150m",
        "alloc",
        "60m",
        "vmm",
        "50m",
        "budget",
        "0",
        "budget",
        "1",
        FAKE_GPU_COUNT="2",
        CUDA_VISIBLE_DEVICES=visible,
        CUDA_DEVICE_MEMORY_LIMIT_0="100m",
        CUDA_DEVICE_MEMORY_LIMIT_1="200m",
    )
    assert by_cmd(lines, "info")[0]["total"] == 200 * MIB
    assert by_cmd(lines, "total")[0]["total"] == 200 * MIB
    assert [r["rc"] for r in by_cmd(lines, "alloc")] == [0, OUT_OF_MEMORY]
    assert by_cmd(lines, "vmm")[0]["rc"] == 0
    budgets = by_cmd(lines, "budget")
    assert budgets[0]["used_total"] == 0
    assert budgets[1]["used_total"] == 200 * MIB


def test_processes_with_different_visible_devices_share_per_gpu_budgets(hami: Hami) -> None:
    hami.env.update({"FAKE_GPU_COUNT": "2", "CUDA_DEVICE_MEMORY_LIMIT": "100m"})
    first = hami.spawn("init", "ctx", "0", "alloc", "70m", "hold", CUDA_VISIBLE_DEVICES="1")
    try:
        assert first.stdout is not None
        for _ in range(4):
            first.stdout.readline()
        lines = hami.probe("init", "ctx", "0", "alloc", "70m", "ctx", "1", "alloc", "70m")
        assert [r["rc"] for r in by_cmd(lines, "alloc")] == [0, OUT_OF_MEMORY]
    finally:
        hami.stop(first)


def test_log_level_zero_still_prints_errors_and_hides_warnings(hami: Hami) -> None:
    hami.probe("init", "ctx", "0", "alloc", "200m", CUDA_DEVICE_MEMORY_LIMIT="100m", LIBCUDA_LOG_LEVEL="0")
    assert "Device 0 OOM" in hami.last_stderr
    hami.probe("init", "ctx", "0", CUDA_DEVICE_MEMORY_LIMIT="999m", LIBCUDA_LOG_LEVEL="0")
    assert "Limit inconsistency" not in hami.last_stderr
    hami.probe("init", "ctx", "0", CUDA_DEVICE_MEMORY_LIMIT="999m", LIBCUDA_LOG_LEVEL="2")
    assert "Limit inconsistency detected for device 0" in hami.last_stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LIBCUDA_LOG_LEVEL", "loud", "LIBCUDA_LOG_LEVEL='loud' is not a level"),
        ("CUDA_TASK_PRIORITY", "high", "CUDA_TASK_PRIORITY='high' is not a priority"),
        ("GPU_CORE_UTILIZATION_POLICY", "sometimes", "GPU_CORE_UTILIZATION_POLICY='sometimes' is not a policy"),
        ("CUDA_DEVICE_SM_LIMIT", "half", "CUDA_DEVICE_SM_LIMIT='half' is not a percentage"),
    ],
)
def test_other_bad_settings_are_reported_with_what_to_write(hami: Hami, name: str, value: str, message: str) -> None:
    hami.env.update({name: value})
    lines = hami.probe("init", "ctx", "0", "alloc", "1m", "alloc", "200m", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert [line["rc"] for line in lines] == [0, 0, 0, OUT_OF_MEMORY]
    assert message in hami.last_stderr
