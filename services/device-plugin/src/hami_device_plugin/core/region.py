"""The per-container shared accounting region of hamicore (read side, plus the monitor's fields).

Layout (hamicore/src/accounting/region_layout.h, version 1.x; little-endian, fixed offsets):

    header (4096 bytes)      magic "HAMIREG1", version, sizes, device_count, task_priority, core_policy, ...,
                             at 112 monitor_generation and at 116 monitor_interval_ms (the monitor's
                             heartbeat, version 1.1: hamicore's `default` core policy acts as `force`
                             while no monitor keeps the generation moving)
    device records (16 x 256 at 4096)  used/limit/total/peak bytes, OOM count, UUID, and at +128 the
                                       limiter block: sm_limit_percent, utilization_pct, contended,
                                       priority_hold (written by the node monitor), last_kernel_ns
    process slots (1024 x 192 at 8192) state, pid, start time, host pid, per-device bytes

:func:`parse_region` turns the bytes into values; the ``*_FIELD`` constants and
:meth:`RegionSnapshot.device_field_offset` give where the monitor writes its signals. A file with another
magic, a newer major version or an inconsistent size is refused with the reason, never guessed at.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid as uuidlib
from typing import Final

MAGIC: Final = 0x31474552494D4148  # bytes "HAMIREG1" little-endian
VERSION_MAJOR: Final = 1
HEADER_SIZE: Final = 4096
DEVICE_RECORD_SIZE: Final = 256
SLOT_SIZE: Final = 192
MAX_DEVICES: Final = 16
MAX_PROCS: Final = 1024
LIMITER_OFFSET: Final = 128
UUID_VALID: Final = 2
SLOT_LIVE: Final = 2
CORE_POLICIES: Final = {0: "default", 1: "force", 2: "disable"}

# magic, major, minor, region_size, header_size, device_record_size, slot_size, max_devices, max_procs,
# device_count, devices_offset, slots_offset, task_priority, core_policy, utilization_switch, recent_kernel,
# created_unix_ns, attach_count, reclaim_count
_HEADER: Final = struct.Struct("<QIIQIIIIIIQQiIIiQQQ")
# monitor_generation, monitor_interval_ms (header offset 112; zero in version 1.0 files)
_HEARTBEAT: Final = struct.Struct("<II")
MONITOR_GENERATION_OFFSET: Final = 112
MONITOR_INTERVAL_OFFSET: Final = 116
# used, limit, total, uuid[16], uuid_state, pad, peak, oom
_DEVICE: Final = struct.Struct("<QQQ16sIIQQ")
# sm_limit_percent, utilization_pct, contended, priority_hold, last_kernel_ns
_LIMITER: Final = struct.Struct("<IIIIQ")
# state, pid, start_time, host_pid
_SLOT_HEAD: Final = struct.Struct("<IiQi")
UTILIZATION_FIELD: Final = LIMITER_OFFSET + 4
CONTENDED_FIELD: Final = LIMITER_OFFSET + 8
PRIORITY_HOLD_FIELD: Final = LIMITER_OFFSET + 12


class RegionFormatError(ValueError):
    """The file is not a region this reader understands; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceUsage:
    """One limit index of a container."""

    index: int
    uuid: str | None
    used_bytes: int
    limit_bytes: int
    total_bytes: int
    peak_bytes: int
    oom_count: int
    sm_limit_percent: int
    utilization_pct: int
    contended: bool
    priority_hold: bool
    last_kernel_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessUsage:
    pid: int
    host_pid: int
    used_bytes: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RegionSnapshot:
    version: tuple[int, int]
    task_priority: int
    core_policy: str
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]
    devices_offset: int
    monitor_generation: int = 0

    def device_field_offset(self, index: int, field: int) -> int:
        """File offset of a field of device record ``index`` (``field`` is one of the *_FIELD constants)."""
        return self.devices_offset + index * DEVICE_RECORD_SIZE + field


def header_size_needed() -> int:
    """Bytes to read for the header and every device record (without the process slots)."""
    return HEADER_SIZE + MAX_DEVICES * DEVICE_RECORD_SIZE


def parse_region(data: bytes, *, with_processes: bool = True) -> RegionSnapshot:
    """Parse a region image (at least header + device records; the slots too for process data)."""
    if len(data) < _HEADER.size:
        raise RegionFormatError(f"file has {len(data)} bytes, shorter than the {_HEADER.size}-byte header start")
    (
        magic,
        major,
        minor,
        region_size,
        header_size,
        record_size,
        slot_size,
        max_devices,
        max_procs,
        device_count,
        devices_offset,
        slots_offset,
        task_priority,
        core_policy,
        _utilization_switch,
        _recent_kernel,
        _created,
        _attaches,
        _reclaims,
    ) = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise RegionFormatError(f"magic is {magic:#x}, not hamicore's region (file not initialised yet or foreign)")
    if major != VERSION_MAJOR:
        raise RegionFormatError(f"region version {major}.{minor}; this monitor reads version {VERSION_MAJOR}.x")
    if record_size < LIMITER_OFFSET + _LIMITER.size or slot_size < 64 + 8 * max_devices or header_size < _HEADER.size:
        raise RegionFormatError("record or slot size in the header is smaller than version 1 defines")
    (monitor_generation, _monitor_interval) = _HEARTBEAT.unpack_from(data, MONITOR_GENERATION_OFFSET)
    count = min(device_count, max_devices)
    if devices_offset + count * record_size > len(data):
        raise RegionFormatError(f"file has {len(data)} bytes, too short for {count} device records")
    devices = []
    for i in range(count):
        base = devices_offset + i * record_size
        used, limit, total, raw_uuid, uuid_state, _pad, peak, oom = _DEVICE.unpack_from(data, base)
        sm_limit, util, contended, hold, last_kernel = _LIMITER.unpack_from(data, base + LIMITER_OFFSET)
        devices.append(
            DeviceUsage(
                index=i,
                uuid=f"GPU-{uuidlib.UUID(bytes=raw_uuid)}" if uuid_state == UUID_VALID else None,
                used_bytes=used,
                limit_bytes=limit,
                total_bytes=total,
                peak_bytes=peak,
                oom_count=oom,
                sm_limit_percent=sm_limit,
                utilization_pct=util,
                contended=bool(contended),
                priority_hold=bool(hold),
                last_kernel_ns=last_kernel,
            )
        )
    processes = []
    if with_processes:
        slots_end = slots_offset + max_procs * slot_size
        if region_size < slots_end or len(data) < slots_end:
            raise RegionFormatError(f"file has {len(data)} bytes, the header promises process slots up to {slots_end}")
        for s in range(max_procs):
            base = slots_offset + s * slot_size
            state, pid, _start, host_pid = _SLOT_HEAD.unpack_from(data, base)
            if state != SLOT_LIVE:
                continue
            used_per_device = struct.unpack_from(f"<{count}Q", data, base + 64)
            processes.append(ProcessUsage(pid=pid, host_pid=host_pid, used_bytes=tuple(used_per_device)))
    return RegionSnapshot(
        version=(major, minor),
        task_priority=task_priority,
        core_policy=CORE_POLICIES.get(core_policy, "default"),
        devices=tuple(devices),
        processes=tuple(processes),
        devices_offset=devices_offset,
        monitor_generation=monitor_generation,
    )


def next_generation(generation: int) -> int:
    """The heartbeat after ``generation``: counts up, wraps past 2**32 - 1, never 0 (0 = no monitor)."""
    return generation % 0xFFFFFFFF + 1
