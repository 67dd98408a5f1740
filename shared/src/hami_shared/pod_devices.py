"""Codec of the pod device lists written by the scheduler extender.

``hami.io/vgpu-devices-to-allocate`` and ``hami.io/vgpu-devices-allocated`` hold, for every
container of the pod (init containers first, then regular containers), the GPUs it was given:

    device record    = <uuid>,<type>,<usedmem MiB>,<usedcores>:
    container entry  = <device record>* ;

Containers without GPUs keep an empty entry so positions line up with the pod spec, e.g.
``;GPU-aaa,NVIDIA,3000,30:;`` is an init container without GPUs and one container with one.

Our own annotation ``hami.io/vgpu-device-slots`` uses the same container grouping and lists
the virtual device IDs (``<uuid>-<n>``) the extender picked, comma separated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from hami_shared.errors import MalformedInputError
from hami_shared.names import DEVICE_SLOTS, DEVICE_TYPE_NVIDIA, DEVICES_ALLOCATED

_INT32_MAX: Final = 2**31 - 1
_SEPARATORS: Final = frozenset(",:;")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ContainerDevice:
    """One GPU slice given to one container: memory in MiB and cores in percent of the card."""

    uuid: str
    type: str = DEVICE_TYPE_NVIDIA
    usedmem: int
    usedcores: int

    def __post_init__(self) -> None:
        for name in ("uuid", "type"):
            text = getattr(self, name)
            if not text or _SEPARATORS.intersection(text):
                raise MalformedInputError(
                    DEVICES_ALLOCATED, text, f"device {name} must be non-empty and free of ',', ':' and ';'"
                )
        for name in ("usedmem", "usedcores"):
            number = getattr(self, name)
            if not 0 <= number <= _INT32_MAX:
                raise MalformedInputError(DEVICES_ALLOCATED, str(number), f"{name} must be within 0..{_INT32_MAX}")


ContainerDevices = tuple[ContainerDevice, ...]
PodDevices = tuple[ContainerDevices, ...]
"""Per container (init containers first), the devices it holds; empty tuples keep positions."""


def encode_container_devices(devices: Sequence[ContainerDevice]) -> str:
    """Encode one container entry without its trailing ``;``."""
    return "".join(f"{d.uuid},{d.type},{d.usedmem},{d.usedcores}:" for d in devices)


def encode_pod_devices(pod_devices: Sequence[Sequence[ContainerDevice]]) -> str:
    """Encode the whole pod: one ``;``-terminated entry per container."""
    return "".join(encode_container_devices(c) + ";" for c in pod_devices)


def decode_pod_devices(value: str, *, what: str = DEVICES_ALLOCATED) -> PodDevices:
    """Decode a pod device list; ``what`` names the annotation in error messages.

    Empty entries are kept. A record with fewer than 4 fields is refused (HAMi does the same;
    extra fields, which HAMi ignores, are ignored too).
    """
    if not value:
        return ()
    entries = value.split(";")
    if entries[-1] == "":
        entries.pop()  # the terminator of the last entry
    return tuple(_decode_container(entry, what) for entry in entries)


def _decode_container(entry: str, what: str) -> ContainerDevices:
    devices = []
    for record in entry.split(":"):
        if not record:
            continue
        fields = record.split(",")
        if len(fields) < 4:
            raise MalformedInputError(
                what, record, f"device record has {len(fields)} fields, expected uuid,type,usedmem,usedcores"
            )
        usedmem = _nonnegative_int(fields[2], "usedmem", record, what)
        usedcores = _nonnegative_int(fields[3], "usedcores", record, what)
        if not fields[0] or not fields[1]:
            raise MalformedInputError(what, record, "device record has an empty uuid or type")
        devices.append(ContainerDevice(uuid=fields[0], type=fields[1], usedmem=usedmem, usedcores=usedcores))
    return tuple(devices)


def _nonnegative_int(text: str, name: str, record: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise MalformedInputError(what, record, f"{name} is {text!r}, expected a non-negative integer")
    number = int(text)
    if number > _INT32_MAX:
        raise MalformedInputError(what, record, f"{name} is out of the int32 range")
    return number


def consume_container(pod_devices: PodDevices, position: int) -> PodDevices:
    """The device list with one container's entry emptied (what Allocate writes back)."""
    if not 0 <= position < len(pod_devices):
        raise IndexError(f"container position {position} outside 0..{len(pod_devices) - 1}")
    return (*pod_devices[:position], (), *pod_devices[position + 1 :])


# --- our per-container virtual device slots -------------------------------------------------

ContainerSlots = tuple[str, ...]
PodSlots = tuple[ContainerSlots, ...]


def encode_device_slots(pod_slots: Sequence[Sequence[str]]) -> str:
    """Encode ``hami.io/vgpu-device-slots``: per container, comma-separated IDs, ``;``-terminated."""
    for slots in pod_slots:
        for slot in slots:
            if not slot or _SEPARATORS.intersection(slot):
                raise MalformedInputError(DEVICE_SLOTS, slot, "device slot ID must be non-empty and free of ',:;'")
    return "".join(",".join(slots) + ";" for slots in pod_slots)


def decode_device_slots(value: str) -> PodSlots:
    """Decode ``hami.io/vgpu-device-slots``; empty entries are kept."""
    if not value:
        return ()
    entries = value.split(";")
    if entries[-1] == "":
        entries.pop()
    out = []
    for entry in entries:
        slots = tuple(entry.split(",")) if entry else ()
        if any(not s or ":" in s for s in slots):
            raise MalformedInputError(DEVICE_SLOTS, entry, "empty or malformed device slot ID")
        out.append(slots)
    return tuple(out)


def slot_id(uuid: str, replica: int) -> str:
    """The virtual device ID the device plugin advertises for replica ``replica`` of a GPU."""
    return f"{uuid}-{replica}"


def split_slot_id(device_id: str) -> tuple[str, int]:
    """Inverse of :func:`slot_id`: ``GPU-abc-3`` -> (``GPU-abc``, 3)."""
    uuid, sep, replica = device_id.rpartition("-")
    if not sep or not uuid or not replica.isascii() or not replica.isdigit():
        raise MalformedInputError(DEVICE_SLOTS, device_id, "virtual device ID must be '<gpu-uuid>-<replica>'")
    return uuid, int(replica)
