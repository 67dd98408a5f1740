"""The pod annotations that record a placement, written by the Binding itself.

HAMi's encodings for the device lists, bind phase and times, plus our per-container slot annotation (so
the device plugin identifies the pod in Allocate without a node lock). kube-apiserver copies a Binding's
annotations in the same update that sets ``spec.nodeName``: never bound without them, nor annotated unbound.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping

from hami_shared import names
from hami_shared.bind import BindPhase, encode_unix_time
from hami_shared.mig import MigAllocation, encode_mig_allocations
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices

from hami_scheduler_extender.core.model import PodAllocation


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BindingMetadata:
    """What a Binding writes onto the pod in the same update as ``spec.nodeName``: the annotations
    always; the labels only where kube-apiserver's PodTopologyLabelsAdmission gate is on."""

    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


NO_METADATA = BindingMetadata()


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
    mig = mig_reservations(allocation)
    extra = {names.MIG_ALLOCATIONS: encode_mig_allocations(mig)} if mig else {}
    return extra | {
        names.VGPU_NODE: allocation.node,
        names.VGPU_TIME: stamp,
        names.DEVICES_TO_ALLOCATE: devices,
        names.DEVICES_ALLOCATED: devices,
        names.DEVICE_SLOTS: encode_device_slots(allocation.slots),
        names.BIND_PHASE: BindPhase.ALLOCATING.value,
        names.BIND_TIME: stamp,
    }


def mig_reservations(allocation: PodAllocation) -> list[MigAllocation]:
    """HAMi HEAD's MIG reservations: per MIG device, its container, position in that container's device list,
    parent GPU, profile and placement (the device plugin adds the runtime identity)."""
    return [
        MigAllocation(
            container_index=c,
            device_index=k,
            gpu_uuid=grant.uuid,
            profile=grant.mig.profile,
            start=grant.mig.start,
            size=grant.mig.size,
        )
        for c, container in enumerate(allocation.grants)
        for k, grant in enumerate(container)
        if grant.mig is not None
    ]


def placement_labels(node: str) -> dict[str, str]:
    """The pod label HAMi (v2.5+) sets next to the annotations: ``hami.io/vgpu-node``, which HAMi's vGPU
    monitor selects its node's pods by (none when the node name is too long to be a label value)."""
    return {names.VGPU_NODE: node} if len(node) <= names.LABEL_VALUE_MAX else {}


def label_patch(uid: str, labels: Mapping[str, str]) -> dict[str, object]:
    """JSON merge patch setting ``labels``, with the UID as a precondition (a re-created pod fails)."""
    return {"metadata": {"uid": uid, "labels": dict(labels)}}
