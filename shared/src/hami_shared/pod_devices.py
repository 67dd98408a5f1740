"""Codec of the pod device lists written by the scheduler extender.

``hami.io/vgpu-devices-to-allocate`` and ``hami.io/vgpu-devices-allocated`` hold, for every
container of the pod (init containers first, then regular containers), the GPUs it was given:

    device record    = <uuid>,<type>,<usedmem MiB>,<usedcores>:
    container entry  = <device record>* ;

Containers without GPUs keep an empty entry so positions line up with the pod spec, e.g.
``;GPU-aaa,NVIDIA,3000,30:;`` is an init container without GPUs and one container with one.

Our own annotation ``hami.io/vgpu-device-slots`` uses the same container grouping and lists
the virtual device IDs (``<uuid>-<n>``) the extender picked, comma separated.

The decoders are total (any input: a value or :class:`MalformedInputError`) and bounded (the
bounds below and :mod:`hami_shared.bounds`'s); the length is checked before the value is split.

A record with ``usedmem`` 0 decodes: it is HAMi's wire format (HAMi's own decoder takes it, and
its scheduler writes it when a percentage of a card registered with 0 MiB rounds down to 0), and
to the extender a record is a held slot, which it must count whatever its memory; refusing the
record would make the extender drop the pod's whole hold and over-commit the card. What 0 must
not become is a limit: the device plugin treats ``CUDA_DEVICE_MEMORY_LIMIT`` 0 as "no limit", so
the consumers that enforce (the device plugin's Allocate) refuse a 0-MiB device themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from hami_shared.bounds import (
    INT32_MAX,
    KIB,
    MAX_INT_DIGITS,
    MAX_NODE_DEVICES,
    MAX_POD_CONTAINERS,
    MAX_TYPE_CHARS,
    MAX_UUID_CHARS,
    describe,
    parse_int,
    require_text,
)
from hami_shared.errors import MalformedInputError
from hami_shared.names import DEVICE_SLOTS, DEVICE_TYPE_NVIDIA, DEVICES_ALLOCATED

# Half the 256 KiB Kubernetes allows for all of a pod's annotations, and the pod carries two equal device lists:
# no list the API server stores is longer. A record is about 60 characters: some 2,000 records; real pods hold a few.
MAX_POD_DEVICES_CHARS: Final = 128 * KIB
MAX_DEVICE_SLOTS_CHARS: Final = 128 * KIB
MAX_CONTAINER_DEVICES: Final = MAX_NODE_DEVICES  # a container's GPUs are distinct cards of one node
MAX_SLOT_ID_CHARS: Final = MAX_UUID_CHARS + 1 + MAX_INT_DIGITS  # <uuid>-<replica>
MAX_USEDMEM_MIB: Final = INT32_MAX  # HAMi's int32
MAX_USEDCORES: Final = 100  # percent of the card's SMs; HAMi clamps requests above 100 before it writes a record

_SEPARATORS: Final = frozenset(",:;")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ContainerDevice:
    """One GPU slice given to one container: memory in MiB and cores in percent of the card.

    Construction enforces the decoder's bounds, so whatever can be built can be encoded and
    decoded back.
    """

    uuid: str
    type: str = DEVICE_TYPE_NVIDIA
    usedmem: int
    usedcores: int

    def __post_init__(self) -> None:
        for name, limit in (("uuid", MAX_UUID_CHARS), ("type", MAX_TYPE_CHARS)):
            text = getattr(self, name)
            if not isinstance(text, str) or not 0 < len(text) <= limit or _SEPARATORS.intersection(text):
                raise MalformedInputError(
                    DEVICES_ALLOCATED,
                    describe(text),
                    f"device {name} must be 1 to {limit} characters, free of ',', ':' and ';'",
                )
        for name, high in (("usedmem", MAX_USEDMEM_MIB), ("usedcores", MAX_USEDCORES)):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= high:
                raise MalformedInputError(DEVICES_ALLOCATED, describe(number), f"{name} must be within 0..{high}")


ContainerDevices = tuple[ContainerDevice, ...]
PodDevices = tuple[ContainerDevices, ...]
"""Per container (init containers first), the devices it holds; empty tuples keep positions."""


def encode_pod_devices(pod_devices: Sequence[Sequence[ContainerDevice]]) -> str:
    """Encode the whole pod: one ``;``-terminated entry per container."""
    return "".join("".join(f"{d.uuid},{d.type},{d.usedmem},{d.usedcores}:" for d in c) + ";" for c in pod_devices)


def decode_pod_devices(value: str, *, what: str = DEVICES_ALLOCATED) -> PodDevices:
    """Decode a pod device list; ``what`` names the annotation in error messages.

    Empty entries are kept. A record with fewer than 4 fields is refused (HAMi does the same;
    extra fields, which HAMi ignores, are ignored too). Bounds: see the module docstring.
    """
    text = require_text(value, what, MAX_POD_DEVICES_CHARS)
    if not text:
        return ()
    entries = _entries(text, what)
    return tuple(_decode_container(entry, what) for entry in entries)


def _entries(text: str, what: str) -> list[str]:
    """The ``;``-separated container entries, the last one's terminator dropped, at most
    :data:`MAX_POD_CONTAINERS` of them (counted before splitting)."""
    separators = text.count(";")
    if separators - (1 if text.endswith(";") else 0) >= MAX_POD_CONTAINERS:
        raise MalformedInputError(what, text, f"lists more than {MAX_POD_CONTAINERS} containers")
    entries = text.split(";")
    if entries[-1] == "":
        entries.pop()  # the terminator of the last entry
    return entries


def _decode_container(entry: str, what: str) -> ContainerDevices:
    records = [record for record in entry.split(":") if record]
    if len(records) > MAX_CONTAINER_DEVICES:
        raise MalformedInputError(what, entry, f"one container lists more than {MAX_CONTAINER_DEVICES} devices")
    return tuple(_decode_record(record, what) for record in records)


def _decode_record(record: str, what: str) -> ContainerDevice:
    fields = record.split(",", 4)  # a fifth part holds the extra fields, ignored
    if len(fields) < 4:
        raise MalformedInputError(
            what, record, f"device record has {len(fields)} fields, expected uuid,type,usedmem,usedcores"
        )
    uuid, device_type, mem_text, cores_text = fields[:4]
    usedmem = parse_int(mem_text, low=0, high=MAX_USEDMEM_MIB)
    if usedmem is None:
        raise MalformedInputError(
            what, record, f"usedmem is {mem_text[:32]!r}, expected MiB as an integer within 0..{MAX_USEDMEM_MIB}"
        )
    usedcores = parse_int(cores_text, low=0, high=MAX_USEDCORES)
    if usedcores is None:
        raise MalformedInputError(
            what, record, f"usedcores is {cores_text[:32]!r}, expected a percentage within 0..{MAX_USEDCORES}"
        )
    if not uuid or not device_type:
        raise MalformedInputError(what, record, "device record has an empty uuid or type")
    if len(uuid) > MAX_UUID_CHARS or len(device_type) > MAX_TYPE_CHARS:
        raise MalformedInputError(
            what, record, f"device uuid or type is longer than {max(MAX_UUID_CHARS, MAX_TYPE_CHARS)} characters"
        )
    return ContainerDevice(uuid=uuid, type=device_type, usedmem=usedmem, usedcores=usedcores)


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
            if not 0 < len(slot) <= MAX_SLOT_ID_CHARS or _SEPARATORS.intersection(slot):
                raise MalformedInputError(
                    DEVICE_SLOTS, slot, f"device slot ID must be 1 to {MAX_SLOT_ID_CHARS} characters, free of ',:;'"
                )
    return "".join(",".join(slots) + ";" for slots in pod_slots)


def decode_device_slots(value: str) -> PodSlots:
    """Decode ``hami.io/vgpu-device-slots``; empty entries are kept. Bounds: see the module docstring."""
    text = require_text(value, DEVICE_SLOTS, MAX_DEVICE_SLOTS_CHARS)
    if not text:
        return ()
    out = []
    for entry in _entries(text, DEVICE_SLOTS):
        if entry.count(",") >= MAX_CONTAINER_DEVICES:
            raise MalformedInputError(
                DEVICE_SLOTS, entry, f"one container lists more than {MAX_CONTAINER_DEVICES} device slots"
            )
        slots = tuple(entry.split(",")) if entry else ()
        if any(not 0 < len(s) <= MAX_SLOT_ID_CHARS or ":" in s for s in slots):
            raise MalformedInputError(
                DEVICE_SLOTS, entry, f"device slot IDs must be 1 to {MAX_SLOT_ID_CHARS} characters, free of ':'"
            )
        out.append(slots)
    return tuple(out)


def slot_id(uuid: str, replica: int) -> str:
    """The virtual device ID the device plugin advertises for replica ``replica`` of a GPU."""
    return f"{uuid}-{replica}"


def split_slot_id(device_id: str) -> tuple[str, int]:
    """Inverse of :func:`slot_id`: ``GPU-abc-3`` -> (``GPU-abc``, 3)."""
    text = require_text(device_id, DEVICE_SLOTS, MAX_SLOT_ID_CHARS)
    uuid, sep, replica_text = text.rpartition("-")
    replica = parse_int(replica_text, low=0, high=INT32_MAX)
    if not sep or not uuid or len(uuid) > MAX_UUID_CHARS or replica is None:
        raise MalformedInputError(DEVICE_SLOTS, text, "virtual device ID must be '<gpu-uuid>-<replica>'")
    return uuid, replica
