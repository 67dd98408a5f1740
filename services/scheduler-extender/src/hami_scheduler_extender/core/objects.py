"""Reading the slices of Kubernetes Node and Pod JSON the extender needs into core values.

Node liveness rule (when a node can receive GPU pods). A node is *registered* when all hold:

1. it carries ``hami.io/node-nvidia-register`` and the value decodes to at least one GPU;
2. ``status.allocatable[<count resource>]`` (``nvidia.com/gpu``) is greater than zero.

The device plugin writes (1) and keeps it current; the kubelet computes (2) from the device
plugin's ListAndWatch stream and drops it to 0 when the plugin is gone (its devices turn
unhealthy after the plugin's socket disappears). HAMi v2.8+ uses the same allocatable test.
A node failing the rule answers ``node unregistered: <why>`` to every GPU pod; pods already
on it keep their usage.

Pods hold GPUs when they carry ``hami.io/vgpu-node`` and ``hami.io/vgpu-devices-allocated``
(HAMi's permanent record) and have not terminated (Succeeded/Failed). Our
``hami.io/vgpu-device-slots`` adds the virtual slot indices when present.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.errors import MalformedInputError
from hami_shared.node_register import DeviceInfo, decode_node_devices
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices
from hami_shared.quantity import parse_quantity

from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
LABEL_VALUE_MAX = 63


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeInventory:
    """A node's GPUs as registered, its cordoned GPUs, and whether it passes the liveness rule."""

    name: str
    devices: tuple[DeviceInfo, ...] = ()
    cordoned: frozenset[str] = frozenset()
    registered: bool = False
    detail: str = ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    raw = _mapping(_mapping(obj.get("metadata")).get("annotations"))
    return {str(k): str(v) for k, v in raw.items()} if raw else {}


def node_inventory(node: Mapping[str, Any], *, count_resource: str = "nvidia.com/gpu") -> NodeInventory:
    """Apply the liveness rule (module docstring) to a Node object."""
    metadata = _mapping(node.get("metadata"))
    name = str(metadata.get("name", ""))
    annotations = annotations_of(node)
    cordoned = frozenset(u.strip() for u in annotations.get(names.DEVICE_CORDON, "").split(",") if u.strip())
    raw = annotations.get(names.NODE_REGISTER)
    if raw is None:
        return NodeInventory(
            name=name, cordoned=cordoned, detail=f"no {names.NODE_REGISTER} annotation (is the device plugin running?)"
        )
    try:
        devices = decode_node_devices(raw)
    except MalformedInputError as exc:
        return NodeInventory(name=name, cordoned=cordoned, detail=f"unreadable inventory: {exc}")
    if not devices:
        return NodeInventory(name=name, cordoned=cordoned, detail=f"{names.NODE_REGISTER} lists no GPU")
    allocatable = _mapping(_mapping(node.get("status")).get("allocatable")).get(count_resource)
    count = 0
    if allocatable is not None:
        try:
            count = parse_quantity(allocatable, resource=count_resource, container="node allocatable")
        except MalformedInputError:
            count = 0
    if count <= 0:
        return NodeInventory(
            name=name,
            devices=devices,
            cordoned=cordoned,
            detail=f"allocatable {count_resource} is 0: the device plugin stopped reporting to the kubelet",
        )
    return NodeInventory(name=name, devices=devices, cordoned=cordoned, registered=True)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PodIdentity:
    uid: str
    namespace: str
    name: str


def pod_identity(pod: Mapping[str, Any]) -> PodIdentity:
    metadata = _mapping(pod.get("metadata"))
    return PodIdentity(
        uid=str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
    )


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    return _mapping(pod.get("status")).get("phase") in TERMINAL_PHASES


def node_label_due(pod: Mapping[str, Any]) -> str | None:
    """The node whose name the pod's ``hami.io/vgpu-node`` label must now carry, or ``None``.

    Due once the pod runs on the node of its placement and its device plugin has finished allocating
    (``hami.io/bind-phase=success``: HAMi's vGPU monitor, the label's reader, looks for pods whose
    containers run, and none runs before that), unless the label already names the node, the pod has
    ended, or the node name cannot be a label value (over 63 characters).
    """
    metadata = _mapping(pod.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    node = annotations.get(names.VGPU_NODE)
    if (
        not node
        or node != _mapping(pod.get("spec")).get("nodeName")
        or annotations.get(names.BIND_PHASE) != BindPhase.SUCCESS.value
        or len(node) > LABEL_VALUE_MAX
        or pod_is_terminal(pod)
    ):
        return None
    return None if _mapping(metadata.get("labels")).get(names.VGPU_NODE) == node else str(node)


def pod_allocation(pod: Mapping[str, Any]) -> PodAllocation | None:
    """The pod's hold on GPUs from its annotations, or ``None`` if it holds none.

    Raises :class:`MalformedInputError` when the annotations exist but cannot be read.
    """
    if pod_is_terminal(pod):
        return None
    annotations = annotations_of(pod)
    node = annotations.get(names.VGPU_NODE)
    allocated = annotations.get(names.DEVICES_ALLOCATED)
    if not node or allocated is None:
        return None
    devices = decode_pod_devices(allocated)
    slots = decode_device_slots(annotations.get(names.DEVICE_SLOTS, ""))
    identity = pod_identity(pod)
    spec = _mapping(pod.get("spec"))
    init = spec.get("initContainers")
    return PodAllocation(
        uid=identity.uid,
        namespace=identity.namespace,
        name=identity.name,
        node=node,
        grants=tuple(
            tuple(DeviceGrant(uuid=d.uuid, usedmem=d.usedmem, usedcores=d.usedcores) for d in container)
            for container in devices
        ),
        slots=slots,
        init_containers=len(init) if isinstance(init, list) else 0,
    )
