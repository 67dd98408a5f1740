"""The plugin's own record of each container it allocated: the GPUs (by limit index), their limits and the task
priority, as decided at Allocate.

Node-wide decisions of the monitor take these values, never the container's accounting region, which every
process of the container can write. A record is written at Allocate (in memory and as a small JSON file in a
directory no container sees), and rebuilt after a restart from those files or, for containers allocated before
them, from the pod: ``hami.io/vgpu-devices-allocated`` (which the admission policy reserves to the scheduler
extender) and the container's priority resource (immutable in the pod spec).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from hami_shared.pod_devices import ContainerDevices

from hami_device_plugin.core.pods import ContainerInfo, PodRecord
from hami_device_plugin.core.region import MAX_DEVICES

DEFAULT_PRIORITY: Final = 1
"""hamicore's default ``CUDA_TASK_PRIORITY`` (HAMi: 0 high, 1 low); also what a priority outside 0..100 reads as."""
MAX_RECORD_BYTES: Final = 8192
MAX_UUID_LENGTH: Final = 96
MAX_LIMIT_BYTES: Final = (2**31 - 1) << 20


class RecordError(ValueError):
    """A record file that is not one the plugin wrote; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecordDevice:
    uuid: str
    limit_bytes: int
    sm_limit_percent: int


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerRecord:
    """One allocated container: ``devices[i]`` is its limit index ``i`` (the order of NVIDIA_VISIBLE_DEVICES)."""

    pod_uid: str
    container: str
    priority: int
    devices: tuple[RecordDevice, ...]

    @property
    def dir_name(self) -> str:
        return f"{self.pod_uid}_{self.container}"

    def device(self, index: int) -> RecordDevice | None:
        return self.devices[index] if 0 <= index < len(self.devices) else None


def effective_priority(priority: int | None) -> int:
    """The priority hamicore applies for a container's priority request."""
    return priority if priority is not None and 0 <= priority <= 100 else DEFAULT_PRIORITY


def container_record(pod: PodRecord, container: ContainerInfo, devices: ContainerDevices) -> ContainerRecord:
    """The record of ``container`` of ``pod`` holding ``devices`` (as Allocate gives them)."""
    return ContainerRecord(
        pod_uid=pod.uid,
        container=container.name,
        priority=effective_priority(container.priority),
        devices=tuple(RecordDevice(d.uuid, d.usedmem << 20, d.usedcores) for d in devices[:MAX_DEVICES]),
    )


def record_from_pod(pod: PodRecord, container_name: str) -> ContainerRecord | None:
    """The record rebuilt from the pod's allocated devices (after a restart); None when it has none for it."""
    for position, container in enumerate(pod.containers):
        if container.name == container_name:
            grant = pod.allocated[position] if position < len(pod.allocated) else ()
            return container_record(pod, container, grant) if grant else None
    return None


def encode_record(record: ContainerRecord) -> bytes:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":")).encode()


def decode_record(data: bytes) -> ContainerRecord:
    """A record file's content; RecordError for anything the plugin would not have written."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(data)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"pod_uid", "container", "priority", "devices"}:
        raise RecordError("record must be an object with pod_uid, container, priority and devices")
    pod_uid, container, priority, devices = doc["pod_uid"], doc["container"], doc["priority"], doc["devices"]
    if not (isinstance(pod_uid, str) and isinstance(container, str) and pod_uid and container):
        raise RecordError("pod_uid and container must be non-empty strings")
    if not _int_in(priority, 0, 100):
        raise RecordError(f"priority {priority!r} is not within 0..100")
    if not isinstance(devices, list) or not 0 < len(devices) <= MAX_DEVICES:
        raise RecordError(f"devices must be a list of 1 to {MAX_DEVICES} entries")
    out = []
    for d in devices:
        if not isinstance(d, dict) or set(d) != {"uuid", "limit_bytes", "sm_limit_percent"}:
            raise RecordError("each device must be an object with uuid, limit_bytes and sm_limit_percent")
        if not isinstance(d["uuid"], str) or not 0 < len(d["uuid"]) <= MAX_UUID_LENGTH:
            raise RecordError(f"device uuid {d['uuid']!r} is not a GPU UUID")
        if not _int_in(d["limit_bytes"], 0, MAX_LIMIT_BYTES) or not _int_in(d["sm_limit_percent"], 0, 100):
            raise RecordError(f"device limits {d['limit_bytes']!r}, {d['sm_limit_percent']!r} are out of range")
        out.append(RecordDevice(d["uuid"], d["limit_bytes"], d["sm_limit_percent"]))
    return ContainerRecord(pod_uid, container, priority, tuple(out))


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
