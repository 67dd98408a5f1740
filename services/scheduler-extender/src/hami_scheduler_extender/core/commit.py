"""The pod annotations that record a placement (written before the Binding is created).

HAMi's encodings for the device lists, bind phase and times, plus our per-container slot
annotation, so the device plugin can identify the pod in Allocate without a node lock.
"""

from __future__ import annotations

import datetime as dt

from hami_shared import names
from hami_shared.bind import BindPhase, encode_unix_time
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices

from hami_scheduler_extender.core.model import PodAllocation

PLACEMENT_ANNOTATIONS = (
    names.VGPU_NODE,
    names.VGPU_TIME,
    names.DEVICES_TO_ALLOCATE,
    names.DEVICES_ALLOCATED,
    names.DEVICE_SLOTS,
    names.BIND_PHASE,
    names.BIND_TIME,
)


def placement_annotations(allocation: PodAllocation, *, now: dt.datetime) -> dict[str, str]:
    """Every annotation a placement writes, with HAMi's encodings."""
    devices = encode_pod_devices(
        [
            [
                ContainerDevice(uuid=g.uuid, type=names.DEVICE_TYPE_NVIDIA, usedmem=g.usedmem, usedcores=g.usedcores)
                for g in c
            ]
            for c in allocation.grants
        ]
    )
    stamp = encode_unix_time(now)
    return {
        names.VGPU_NODE: allocation.node,
        names.VGPU_TIME: stamp,
        names.DEVICES_TO_ALLOCATE: devices,
        names.DEVICES_ALLOCATED: devices,
        names.DEVICE_SLOTS: encode_device_slots(allocation.slots),
        names.BIND_PHASE: BindPhase.ALLOCATING.value,
        names.BIND_TIME: stamp,
    }


def placement_patch(allocation: PodAllocation, *, now: dt.datetime) -> dict[str, object]:
    """JSON merge patch for the pod: the annotations, the ``hami.io/vgpu-node`` label HAMi's
    monitor selects on, and the UID as a precondition (a re-created pod of the same name fails)."""
    return {
        "metadata": {
            "uid": allocation.uid,
            "annotations": placement_annotations(allocation, now=now),
            "labels": {names.VGPU_NODE: allocation.node},
        }
    }


def clear_patch(uid: str) -> dict[str, object]:
    """Merge patch removing a placement whose Binding could not be created."""
    return {
        "metadata": {
            "uid": uid,
            "annotations": dict.fromkeys(PLACEMENT_ANNOTATIONS),
            "labels": {names.VGPU_NODE: None},
        }
    }
