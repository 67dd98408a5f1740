"""The per-container shared accounting region of hamicore (read side, plus the monitor's fields).

The layout is hamicore/src/accounting/region_layout.h (version 1.x, little-endian, fixed offsets; a newer minor
of major 1 only gives meaning to bytes older ones keep zero); its numbers reach this module through
:mod:`.layout`, generated from the header at build time. A file with another magic, a newer major version or an
inconsistent size is refused with the reason, never guessed at.

Since 1.3 each process slot says which part of its ``used_bytes`` CUDA contexts and loaded modules hold
(``kind_bytes``); the per-device split is the sum over live slots of libraries of 1.3 or later (:func:`kind_split`),
the rest of ``used_bytes`` is buffers. Slots of older libraries, and regions they alone wrote, have no split: their
context and module memory counts as buffer. There is no stored per-device total to drift: whatever reclaims a
dead process's slot, its split leaves with it.

The container can write its region. Since 1.2 hamicore takes no limit from it (the limits, SM limits, priority and
policy written at creation are for libraries of 1.1 and for inspection; hamicore enforces the read-only spec,
:mod:`hami_device_plugin.core.spec`), so node-wide decisions must not trust these fields either.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import sys
import uuid as uuidlib
from typing import Final

from hami_device_plugin.core import layout
from hami_device_plugin.core.layout import DEVICE_RECORD, LIMITER_FIELDS, PROC_SLOT, REGION, REGION_HEADER

MAGIC: Final = layout.constant("HAMI_REGION_MAGIC")  # bytes "HAMIREG1" little-endian
VERSION_MAJOR: Final = layout.constant("HAMI_REGION_VERSION_MAJOR")
VERSION_MINOR: Final = layout.constant("HAMI_REGION_VERSION_MINOR")
HEADER_SIZE: Final = REGION_HEADER.size
DEVICE_RECORD_SIZE: Final = DEVICE_RECORD.size
SLOT_SIZE: Final = PROC_SLOT.size
MAX_DEVICES: Final = layout.constant("HAMI_MAX_DEVICES")
MAX_PROCS: Final = layout.constant("HAMI_MAX_PROCS")
LIMITER_OFFSET: Final = DEVICE_RECORD.offset("limiter")
UUID_VALID: Final = layout.constant("HAMI_UUID_VALID")
SLOT_LIVE: Final = layout.constant("HAMI_SLOT_LIVE")
CORE_POLICIES: Final = {code: name.lower() for name, code in layout.constants_with_prefix("HAMI_CORE_POLICY_").items()}

_HEADER: Final = REGION_HEADER.packer("magic", "reclaim_count")
# the monitor's heartbeat (zero in version 1.0 files)
_HEARTBEAT: Final = REGION_HEADER.packer("monitor_generation", "monitor_interval_ms")
MONITOR_GENERATION_OFFSET: Final = REGION_HEADER.offset("monitor_generation")
MONITOR_INTERVAL_OFFSET: Final = REGION_HEADER.offset("monitor_interval_ms")
_DEVICE: Final = DEVICE_RECORD.packer("used_bytes", "oom_count")
_LIMITER: Final = LIMITER_FIELDS.packer("sm_limit_percent", "last_kernel_ns")
_SLOT_HEAD: Final = PROC_SLOT.packer("state", "lib_version")
SLOT_KIND_FIELD: Final = PROC_SLOT.offset("kind_bytes")
KIND_ENTRIES: Final = layout.constant("HAMI_KIND_ENTRIES")
_KINDS: Final = struct.Struct(f"<{KIND_ENTRIES}Q")
_KIND_IN_USE: Final = layout.constant("HAMI_KIND_IN_USE")
_KIND_KIND_SHIFT: Final = layout.constant("HAMI_KIND_KIND_SHIFT")
_KIND_DEVICE_SHIFT: Final = layout.constant("HAMI_KIND_DEVICE_SHIFT")
_KIND_BYTES_MASK: Final = layout.constant("HAMI_KIND_BYTES_MASK")
KIND_CONTEXT: Final = layout.constant("HAMI_KIND_CONTEXT")
KIND_MODULE: Final = layout.constant("HAMI_KIND_MODULE")
KIND_SPLIT_SINCE: Final = (1 << 16) | 3
"""The first ``lib_version`` whose slots carry the context/module split (layout 1.3)."""
SLOT_HOST_PID_FIELD: Final = PROC_SLOT.offset("host_pid")
SLOT_USED_FIELD: Final = PROC_SLOT.offset("used_bytes")
UTILIZATION_FIELD: Final = LIMITER_OFFSET + LIMITER_FIELDS.offset("utilization_pct")
CONTENDED_FIELD: Final = LIMITER_OFFSET + LIMITER_FIELDS.offset("contended")
PRIORITY_HOLD_FIELD: Final = LIMITER_OFFSET + LIMITER_FIELDS.offset("priority_hold")

DEVICES_OFFSET: Final = REGION.offset("devices")
SLOTS_OFFSET: Final = REGION.offset("slots")
REGION_SIZE: Final = REGION.size
DISCOVERY_STATE_OFFSET: Final = REGION_HEADER.offset("discovery_state")
DISCOVERY_DONE: Final = layout.constant("HAMI_DISCOVERY_DONE")
_DEVICE_STATIC: Final = DEVICE_RECORD.packer("used_bytes", "uuid_state")
_U32_AT: Final = struct.Struct("<I")


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
    context_bytes: int = 0
    """Part of ``used_bytes`` CUDA contexts hold (live slots of 1.3+ libraries; 0 for older ones)."""
    module_bytes: int = 0
    """Part of ``used_bytes`` loaded modules and libraries hold (as ``context_bytes``)."""

    @property
    def buffer_bytes(self) -> int:
        """The rest of ``used_bytes``: allocations (HAMi-core's ``data``), never negative."""
        return max(0, self.used_bytes - self.context_bytes - self.module_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessUsage:
    """A live process slot: ``pid`` as the container sees it, ``start_time`` in clock ticks after boot."""

    slot: int
    pid: int
    start_time: int
    host_pid: int
    used_bytes: tuple[int, ...]
    lib_version: int = 0
    context_bytes: tuple[int, ...] = ()
    """Per limit index, the part of ``used_bytes`` its contexts hold (zeros for a library older than 1.3)."""
    module_bytes: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RegionSnapshot:
    version: tuple[int, int]
    task_priority: int
    core_policy: str
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]
    devices_offset: int
    monitor_generation: int = 0
    monitor_interval_ms: int = 0
    slots_offset: int = HEADER_SIZE + MAX_DEVICES * DEVICE_RECORD_SIZE
    slot_size: int = SLOT_SIZE

    def device_field_offset(self, index: int, field: int) -> int:
        """File offset of a field of device record ``index`` (``field`` is one of the *_FIELD constants)."""
        return self.devices_offset + index * DEVICE_RECORD_SIZE + field

    def slot_field_offset(self, slot: int, field: int) -> int:
        """File offset of a field of process slot ``slot`` (``SLOT_HOST_PID_FIELD``)."""
        return self.slots_offset + slot * self.slot_size + field


@functools.lru_cache(maxsize=1024)
def uuid_text(raw: bytes) -> str:
    """``GPU-<uuid>`` of the 16 bytes of a GPU's UUID."""
    return f"GPU-{uuidlib.UUID(bytes=raw)}"


def kind_split(
    lib_version: int, entries: tuple[int, ...], used: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A slot's context and module bytes per limit index, from its ``kind_bytes`` entries.

    Only a slot a 1.3 or later library claimed has a split (an older one neither writes nor clears the entries,
    which may be left over from a previous owner). The container can write its region: entries for an index
    outside ``used`` are ignored, and each index's split is bounded by what the slot holds there, context first."""
    context = [0] * len(used)
    module = [0] * len(used)
    if lib_version >= KIND_SPLIT_SINCE:
        for entry in entries:
            if not entry & _KIND_IN_USE:
                continue
            device = (entry >> _KIND_DEVICE_SHIFT) & 0xF
            if device >= len(used):
                continue
            kind = (entry >> _KIND_KIND_SHIFT) & 1
            (module if kind == KIND_MODULE else context)[device] += entry & _KIND_BYTES_MASK
    for d, held in enumerate(used):
        context[d] = min(context[d], held)
        module[d] = min(module[d], held - context[d])
    return tuple(context), tuple(module)


def parse_region(data: bytes | bytearray | memoryview, *, with_processes: bool = True) -> RegionSnapshot:
    """Parse a region image (at least header + device records; the slots too for process data).

    Only live slots are decoded: their states are picked out of the slot table in one strided copy, so a
    region with a few processes costs about as little as one with none."""
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
    short_slot = slot_size < SLOT_USED_FIELD + 8 * max_devices
    if record_size < LIMITER_OFFSET + _LIMITER.size or short_slot or header_size < _HEADER.size:
        raise RegionFormatError("record or slot size in the header is smaller than version 1 defines")
    (monitor_generation, monitor_interval_ms) = _HEARTBEAT.unpack_from(data, MONITOR_GENERATION_OFFSET)
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
                uuid=uuid_text(raw_uuid) if uuid_state == UUID_VALID else None,
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
    context_total = [0] * count
    module_total = [0] * count
    if with_processes:
        slots_end = slots_offset + max_procs * slot_size
        if region_size < slots_end or len(data) < slots_end:
            raise RegionFormatError(f"file has {len(data)} bytes, the header promises process slots up to {slots_end}")
        used_format = struct.Struct(f"<{count}Q")
        for s in _live_slots(data, slots_offset, slot_size, max_procs):
            base = slots_offset + s * slot_size
            state, pid, start, host_pid, lib_version = _SLOT_HEAD.unpack_from(data, base)
            if state != SLOT_LIVE:  # changed under the reader: a later scan sees it settled
                continue
            used = used_format.unpack_from(data, base + SLOT_USED_FIELD)
            context, module = kind_split(lib_version, _KINDS.unpack_from(data, base + SLOT_KIND_FIELD), used)
            for d in range(count):
                context_total[d] += context[d]
                module_total[d] += module[d]
            processes.append(
                ProcessUsage(
                    slot=s,
                    pid=pid,
                    start_time=start,
                    host_pid=host_pid,
                    used_bytes=used,
                    lib_version=lib_version,
                    context_bytes=context,
                    module_bytes=module,
                )
            )
        # The slots' split, bounded by the device's count (a reader may see a slot before the device moved).
        devices = [
            dataclasses.replace(
                dev,
                context_bytes=min(context_total[i], dev.used_bytes),
                module_bytes=min(module_total[i], dev.used_bytes - min(context_total[i], dev.used_bytes)),
            )
            if context_total[i] or module_total[i]
            else dev
            for i, dev in enumerate(devices)
        ]
    return RegionSnapshot(
        version=(major, minor),
        task_priority=task_priority,
        core_policy=CORE_POLICIES.get(core_policy, "default"),
        devices=tuple(devices),
        processes=tuple(processes),
        devices_offset=devices_offset,
        monitor_generation=monitor_generation,
        monitor_interval_ms=monitor_interval_ms,
        slots_offset=slots_offset,
        slot_size=slot_size,
    )


_LIVE_WORD: Final = SLOT_LIVE.to_bytes(4, "little")


def _live_slots(data: bytes | bytearray | memoryview, slots_offset: int, slot_size: int, max_procs: int) -> list[int]:
    """Indices of the slots whose state word is LIVE: the state words, every ``slot_size`` bytes, copied out in
    one strided slice and searched at C speed (most slots are free)."""
    if slots_offset % 4 or slot_size % 4 or sys.byteorder != "little":  # not hamicore's layout: one by one
        states = [struct.unpack_from("<I", data, slots_offset + s * slot_size)[0] for s in range(max_procs)]
        return [s for s, state in enumerate(states) if state == SLOT_LIVE]
    table = memoryview(data).cast("B")[slots_offset : slots_offset + max_procs * slot_size]
    words = table.cast("I")[:: slot_size // 4].tobytes()
    out = []
    at = words.find(_LIVE_WORD)
    while at >= 0:
        if at % 4 == 0:
            out.append(at // 4)
            at = words.find(_LIVE_WORD, at + 4)
        else:  # the pattern across two words
            at = words.find(_LIVE_WORD, at + 1)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class RegionDevice:
    """What a new region says of one limit index: the GPU, its memory limit and its SM limit."""

    uuid: str
    limit_bytes: int
    sm_limit_percent: int
    total_bytes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RegionSpec:
    """A container's region as hamicore would create it from the container's environment.

    ``devices`` are the limit indices 0..n-1 (``CUDA_DEVICE_MEMORY_LIMIT_<i>``); indices beyond them get no memory
    limit and ``default_sm_limit_percent`` (``CUDA_DEVICE_SM_LIMIT``). Percentages of 100 or more mean no limit (0),
    as hamicore reads them."""

    devices: tuple[RegionDevice, ...]
    default_sm_limit_percent: int = 0
    task_priority: int = 1
    core_policy: str = "default"

    def __post_init__(self) -> None:
        if not 0 < len(self.devices) <= MAX_DEVICES:
            raise ValueError(f"a region holds 1 to {MAX_DEVICES} devices, not {len(self.devices)}")
        if self.core_policy not in CORE_POLICIES.values():
            raise ValueError(f"core policy {self.core_policy!r} is not one of {sorted(CORE_POLICIES.values())}")
        if not 0 <= self.task_priority <= 100:
            raise ValueError(f"task priority {self.task_priority} is outside 0..100")
        for d in self.devices:
            if d.limit_bytes < 0 or d.sm_limit_percent < 0 or d.total_bytes < 0:
                raise ValueError(f"negative limit or size for GPU {d.uuid}")


def sm_limit(percent: int) -> int:
    """An SM limit as hamicore reads it: 100 or more is no limit (0)."""
    return 0 if percent >= 100 else percent


def core_policy_code(name: str) -> int:
    return next(code for code, policy in CORE_POLICIES.items() if policy == name)


def uuid_bytes(text: str) -> bytes | None:
    """The 16 bytes of a ``GPU-<uuid>`` (as NVML and CUDA name the GPU), or None for other forms (MIG)."""
    if not text.startswith("GPU-"):
        return None
    try:
        return uuidlib.UUID(text[4:]).bytes
    except ValueError:
        return None


def build_region(spec: RegionSpec, created_unix_ns: int) -> bytes:
    """The image of a new region, complete: header, limits, the GPUs' UUIDs by limit index, no process.

    The device plugin publishes it at Allocate, so that a container's processes find their region ready instead
    of one creating it (and enumerating GPUs through NVML) while the others wait. When every GPU is named by a
    ``GPU-`` UUID the image records GPU discovery as done; otherwise hamicore enumerates through NVML as usual."""
    image = bytearray(REGION_SIZE)
    _HEADER.pack_into(
        image, 0, MAGIC, VERSION_MAJOR, VERSION_MINOR, REGION_SIZE, HEADER_SIZE, DEVICE_RECORD_SIZE, SLOT_SIZE,
        MAX_DEVICES, MAX_PROCS, len(spec.devices), DEVICES_OFFSET, SLOTS_OFFSET, spec.task_priority,
        core_policy_code(spec.core_policy),
        1, 0, created_unix_ns, 0, 0,
    )  # fmt: skip
    all_named = True
    for i in range(MAX_DEVICES):
        base = DEVICES_OFFSET + i * DEVICE_RECORD_SIZE
        if i < len(spec.devices):
            device = spec.devices[i]
            raw = uuid_bytes(device.uuid)
            all_named &= raw is not None
            _DEVICE_STATIC.pack_into(
                image, base, 0, device.limit_bytes, device.total_bytes, raw or bytes(16), UUID_VALID if raw else 0
            )
            percent = device.sm_limit_percent
        else:
            percent = spec.default_sm_limit_percent
        _U32_AT.pack_into(image, base + LIMITER_OFFSET, sm_limit(percent))
    if all_named:
        _U32_AT.pack_into(image, DISCOVERY_STATE_OFFSET, DISCOVERY_DONE)
    return bytes(image)


def next_generation(generation: int) -> int:
    """The heartbeat after ``generation``: counts up, wraps past 2**32 - 1, never 0 (0 = no monitor)."""
    return generation % 0xFFFFFFFF + 1
