"""Monitor decisions and the region reader's refusals (the layout itself is checked against the real
hamicore writer in tests/component/test_monitor.py)."""

from __future__ import annotations

import struct

import pytest
from hami_device_plugin.core import region
from hami_device_plugin.core.monitor import (
    DeviceActivity,
    LimiterSignal,
    container_utilization,
    is_active,
    limiter_signals,
    split_container_dir,
    stale_container_dirs,
)


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


def test_activity_from_utilisation_or_recent_kernel() -> None:
    now = 100_000_000_000
    assert is_active(5, 0, now)
    assert is_active(0, now - 1_000_000_000, now)
    assert not is_active(0, now - 10_000_000_000, now)
    assert not is_active(0, 0, now)
    assert container_utilization([10, 11, 11], {10: 30, 11: 50, 12: 90}) == 80
    assert container_utilization([10, 11], {10: 70, 11: 50}) == 100


def test_stale_dirs_only_ours_and_after_grace() -> None:
    dirs = {"uid-a_main": 0.0, "uid-b_main": 95.0, "uid-live_c": 0.0, "lost+found": 0.0, "noseparator": 0.0}
    assert stale_container_dirs(dirs, frozenset({"uid-live"}), 100.0, grace_seconds=10) == ("uid-a_main",)
    assert split_container_dir("0f1e-22_main") == ("0f1e-22", "main")
    assert split_container_dir("_x") is None


def _header(magic: int = region.MAGIC, major: int = 1) -> bytearray:
    data = bytearray(region.header_size_needed())
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
    struct.pack_into("<QIIIIIIQQ", data, 16, 0, region.HEADER_SIZE, region.DEVICE_RECORD_SIZE, region.SLOT_SIZE,
                     region.MAX_DEVICES, region.MAX_PROCS, 0, region.HEADER_SIZE, 0)
    struct.pack_into("<II", data, region.MONITOR_GENERATION_OFFSET, 41, 500)
    assert region.parse_region(bytes(data), with_processes=False).monitor_generation == 41
    assert region.next_generation(0) == 1
    assert region.next_generation(41) == 42
    assert region.next_generation(0xFFFFFFFF) == 1
