"""Monitor decisions and the region reader's refusals (the layout itself is checked against the real
hamicore writer in tests/component/test_monitor.py)."""

from __future__ import annotations

import struct

import pytest
from hami_device_plugin.core import region
from hami_device_plugin.core.monitor import (
    DeviceActivity,
    LimiterSignal,
    UtilizationTracker,
    container_utilization,
    is_active,
    limiter_signals,
    split_container_dir,
    stale_container_dirs,
)
from hypothesis import given
from hypothesis import strategies as st


def test_contention_and_priority_hold_per_gpu() -> None:
    signals = limiter_signals(
        [
            DeviceActivity("a", "GPU-0", priority=0, active=True),
            DeviceActivity("b", "GPU-0", priority=1, active=True),
            DeviceActivity("c", "GPU-0", priority=1, active=False),
            DeviceActivity("d", "GPU-1", priority=1, active=True),
        ]
    )
    assert signals[("a", "GPU-0")] == LimiterSignal(contended=True, priority_hold=False)
    assert signals[("b", "GPU-0")] == LimiterSignal(contended=True, priority_hold=True)
    assert signals[("c", "GPU-0")] == LimiterSignal(contended=True, priority_hold=True)
    assert signals[("d", "GPU-1")] == LimiterSignal(contended=False, priority_hold=False)


@given(
    st.lists(
        st.builds(
            DeviceActivity,
            container=st.sampled_from("abcdef"),
            uuid=st.sampled_from(["GPU-0", "GPU-1"]),
            priority=st.integers(0, 3),
            active=st.booleans(),
        ),
        max_size=30,
    )
)
def test_signals_match_their_definition(entries: list[DeviceActivity]) -> None:
    """The linear computation gives what the definition says: contended while another container is active on
    the GPU, held while one of them has a higher priority (the last entry of a (container, GPU) pair decides)."""
    expected = {}
    for entry in entries:
        others = [o for o in entries if o.uuid == entry.uuid and o.container != entry.container and o.active]
        expected[(entry.container, entry.uuid)] = LimiterSignal(
            contended=bool(others), priority_hold=any(o.priority < entry.priority for o in others)
        )
    assert limiter_signals(entries) == expected


def test_activity_comes_from_nvml_utilisation_only() -> None:
    """A container-written timestamp (last_kernel_ns) no longer counts: only NVML's samples of its processes."""
    assert is_active(5)
    assert not is_active(0)
    assert container_utilization([10, 11, 11], {10: 30, 11: 50, 12: 90}) == 80
    assert container_utilization([10, 11], {10: 70, 11: 50}) == 100


def test_nvml_views_since_the_previous_query() -> None:
    ms = 1_000_000
    t = UtilizationTracker(max_age_ns=2000 * ms)
    assert t.since("GPU-0") == 0  # the first query reads NVML's whole buffer
    assert t.update("GPU-0", {10: 40, 11: 20}, 5_000, 60, 1000 * ms) == {10: 40, 11: 20}
    assert t.since("GPU-0") == 5_000  # the next one asks for newer samples only
    # new samples: they are the view, processes missing from them are idle
    assert t.update("GPU-0", {11: 30}, 5_250, 30, 1250 * ms) == {11: 30}
    # nothing new while the GPU was busy over NVML's latest period: that period has not ended, no news
    assert t.update("GPU-0", {}, 5_250, 30, 1500 * ms) == {11: 30}
    assert t.since("GPU-0") == 5_250
    # nothing new and the GPU idle over its latest period: everyone stopped
    assert t.update("GPU-0", {}, 5_250, 0, 1750 * ms) == {}
    # no news is not believed for ever (nor when the GPU's own utilisation is unknown)
    t.update("GPU-1", {7: 50}, 100, 50, 1000 * ms)
    assert t.update("GPU-1", {}, 100, 50, 2900 * ms) == {7: 50}
    assert t.update("GPU-1", {}, 100, 50, 3100 * ms) == {}
    t.update("GPU-2", {7: 50}, 100, 50, 1000 * ms)
    assert t.update("GPU-2", {}, 100, None, 1100 * ms) == {}


def test_stale_dirs_only_ours_and_after_grace() -> None:
    dirs = {"uid-a_main": 0.0, "uid-b_main": 95.0, "uid-live_c": 0.0, "lost+found": 0.0, "noseparator": 0.0}
    assert stale_container_dirs(dirs, frozenset({"uid-live"}), 100.0, grace_seconds=10) == ("uid-a_main",)
    assert split_container_dir("0f1e-22_main") == ("0f1e-22", "main")
    assert split_container_dir("_x") is None


def _header(magic: int = region.MAGIC, major: int = 1) -> bytearray:
    data = bytearray(region.HEADER_SIZE + region.MAX_DEVICES * region.DEVICE_RECORD_SIZE)  # no process slots
    struct.pack_into("<QII", data, 0, magic, major, 0)
    return data


def test_region_refusals_say_why() -> None:
    with pytest.raises(region.RegionFormatError, match="magic"):
        region.parse_region(bytes(_header(magic=0)), with_processes=False)
    with pytest.raises(region.RegionFormatError, match="version 2"):
        region.parse_region(bytes(_header(major=2)), with_processes=False)
    with pytest.raises(region.RegionFormatError, match="shorter"):
        region.parse_region(b"\0" * 10)


def test_heartbeat_is_read_and_never_wraps_to_zero() -> None:
    data = _header()
    # region_size, header_size, record_size, slot_size, max_devices, max_procs, device_count, offsets
    struct.pack_into(
        "<QIIIIIIQQ",
        data,
        16,
        0,
        region.HEADER_SIZE,
        region.DEVICE_RECORD_SIZE,
        region.SLOT_SIZE,
        region.MAX_DEVICES,
        region.MAX_PROCS,
        0,
        region.HEADER_SIZE,
        0,
    )
    struct.pack_into("<II", data, region.MONITOR_GENERATION_OFFSET, 41, 500)
    assert region.parse_region(bytes(data), with_processes=False).monitor_generation == 41
    assert region.next_generation(0) == 1
    assert region.next_generation(41) == 42
    assert region.next_generation(0xFFFFFFFF) == 1


def _region(device_count: int = 0) -> bytearray:
    data = bytearray(
        region.HEADER_SIZE + region.MAX_DEVICES * region.DEVICE_RECORD_SIZE + region.MAX_PROCS * region.SLOT_SIZE
    )
    struct.pack_into("<QII", data, 0, region.MAGIC, 1, 1)
    slots_offset = region.HEADER_SIZE + region.MAX_DEVICES * region.DEVICE_RECORD_SIZE
    struct.pack_into(
        "<QIIIIIIQQ",
        data,
        16,
        len(data),
        region.HEADER_SIZE,
        region.DEVICE_RECORD_SIZE,
        region.SLOT_SIZE,
        region.MAX_DEVICES,
        region.MAX_PROCS,
        device_count,
        region.HEADER_SIZE,
        slots_offset,
    )
    return data


def test_live_slots_with_pid_start_time_and_host_pid() -> None:
    data = _region()
    slots_offset = region.HEADER_SIZE + region.MAX_DEVICES * region.DEVICE_RECORD_SIZE
    for k, state, pid, start, host in ((0, 2, 1, 500, 0), (5, 1, 9, 9, 9), (700, 2, 37, 812, 4242), (1023, 2, 8, 9, 0)):
        struct.pack_into("<IiQi", data, slots_offset + k * region.SLOT_SIZE, state, pid, start, host)
    snap = region.parse_region(memoryview(data))
    assert [(p.slot, p.pid, p.start_time, p.host_pid) for p in snap.processes] == [
        (0, 1, 500, 0),
        (700, 37, 812, 4242),
        (1023, 8, 9, 0),
    ]  # slot 5 is being claimed: not a process yet
    assert snap.slot_field_offset(700, region.SLOT_HOST_PID_FIELD) == slots_offset + 700 * region.SLOT_SIZE + 16
