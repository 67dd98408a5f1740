"""Reading the slices of Kubernetes Node and Pod JSON the extender needs into core values.

Node liveness rule (when a node can receive GPU pods): it is *registered* when it carries
``hami.io/node-nvidia-register`` decoding to at least one GPU (the device plugin writes it) and
``status.allocatable[<count resource>]`` is above zero (the kubelet drops it to 0 when the plugin is gone;
HAMi v2.8+ uses the same test). Any other node answers ``node unregistered: <why>`` to every GPU pod; pods
already on it keep their usage.

Placement trust: any pod author can write annotations, so a pod's ``hami.io/vgpu-devices-allocated`` counts
only when the pod was bound through us: it has not terminated, ``spec.nodeName`` equals its
``hami.io/vgpu-node``, its ``spec.schedulerName`` is one we serve (only their kube-scheduler profile calls
our bind, whose Binding writes the annotations with ``spec.nodeName``), and it asks for one of our GPU
resources. Anything else counts nothing, with the reason (:class:`Ignored`) logged and counted; our own
reservations (``state.py``) cover the time before the pod is bound.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.errors import MalformedInputError
from hami_shared.mig import MigAllocation, decode_mig_allocations
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames
from hami_shared.node_register import DeviceInfo, decode_node_devices
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices
from hami_shared.quantity import parse_quantity, sidecar_positions
from hami_shared.topology_codec import node_pair_scores

from hami_scheduler_extender.core.mig import MigInstance
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation
from hami_scheduler_extender.core.topology import NodeLinks


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeInventory:
    """A node's GPUs as registered, its cordoned GPUs, and whether it passes the liveness rule."""

    name: str
    devices: tuple[DeviceInfo, ...] = ()
    cordoned: frozenset[str] = frozenset()
    registered: bool = False
    detail: str = ""
    topology: NodeLinks | None = None
    """The cards' interconnect (``hami.io/node-nvidia-topology`` or HAMi's ``hami.io/node-nvidia-score``)."""
    topology_error: str = ""
    """Why the topology annotation was ignored (malformed: the node is placed as if it published none)."""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    raw = _mapping(_mapping(obj.get("metadata")).get("annotations"))
    # Values are strings on the wire; anything else is not an annotation we can read.
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if raw else {}


def node_inventory(node: Mapping[str, Any], *, count_resource: str = DEFAULT_RESOURCE_NAMES.count) -> NodeInventory:
    """Apply the liveness rule (module docstring) to a Node object."""
    name = node_name(node)
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
    topology, topology_error = _node_links(annotations, devices)
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
            topology=topology,
            topology_error=topology_error,
        )
    return NodeInventory(
        name=name,
        devices=devices,
        cordoned=cordoned,
        registered=True,
        topology=topology,
        topology_error=topology_error,
    )


def _node_links(annotations: Mapping[str, str], devices: tuple[DeviceInfo, ...]) -> tuple[NodeLinks | None, str]:
    """The cards' interconnect, or None with why: a malformed annotation (anyone who may patch the node can
    write it) is ignored, the node placed as if it had none; the decoders bound what they read."""
    try:
        scores = node_pair_scores(annotations)
    except MalformedInputError as exc:
        return None, str(exc)[:512]
    if scores is None:
        return None, ""
    return NodeLinks.of([d.id for d in devices], scores), ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PodIdentity:
    uid: str
    namespace: str
    name: str


def pod_identity(pod: Mapping[str, Any]) -> PodIdentity:
    metadata = _mapping(pod.get("metadata"))
    return PodIdentity(
        uid=_text(metadata.get("uid")), namespace=_text(metadata.get("namespace")), name=_text(metadata.get("name"))
    )


def _text(value: Any) -> str:
    """A string field; anything else (a forged or mangled object) reads as empty."""
    return value if isinstance(value, str) else ""


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    phase = _mapping(pod.get("status")).get("phase")
    return isinstance(phase, str) and phase in names.TERMINAL_POD_PHASES


def node_name(node: Mapping[str, Any]) -> str:
    return _text(_mapping(node.get("metadata")).get("name"))


def node_label_due(pod: Mapping[str, Any]) -> str | None:
    """The node whose name the pod's ``hami.io/vgpu-node`` label must now carry, or ``None``: once the pod runs
    on its placement's node with ``hami.io/bind-phase=success`` (HAMi's vGPU monitor, the label's reader, looks
    at running containers only), unless the label is there, the pod has ended or the name is over 63 characters.
    """
    metadata = _mapping(pod.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    node = annotations.get(names.VGPU_NODE)
    if (
        not node
        or node != _mapping(pod.get("spec")).get("nodeName")
        or annotations.get(names.BIND_PHASE) != BindPhase.SUCCESS.value
        or len(node) > names.LABEL_VALUE_MAX
        or pod_is_terminal(pod)
    ):
        return None
    return None if _mapping(metadata.get("labels")).get(names.VGPU_NODE) == node else str(node)


class Ignored(enum.StrEnum):
    """Why a pod's placement annotations count for nothing (the ``reason`` label of the metric)."""

    NOT_BOUND_THROUGH_US = "not-bound-through-us"
    """Placement annotations on a pod that is not bound, bound elsewhere, or not of our schedulers."""
    NO_GPU_REQUEST = "no-gpu-request"
    """Bound through us but asks for none of our GPU resources."""
    MALFORMED = "malformed"
    """The annotations or the object cannot be read."""
    UNKNOWN_DEVICE = "unknown-device"
    """Names GPUs its node does not register (those devices count nothing)."""
    CHANGED_AFTER_BIND = "changed-after-bind"
    """The placement changed after the first one we counted (the first one stays)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlacementTrust:
    """What makes a pod's placement ours: the scheduler names we serve and the GPU resource names."""

    scheduler_names: frozenset[str]
    gpu_resources: frozenset[str]

    @classmethod
    def of(cls, scheduler_names: frozenset[str], resources: ResourceNames) -> PlacementTrust:
        return cls(
            scheduler_names=scheduler_names,
            gpu_resources=frozenset({resources.count, resources.memory, resources.memory_percentage, resources.cores}),
        )


DEFAULT_TRUST = PlacementTrust.of(frozenset({names.SCHEDULER_NAME}), ResourceNames())


def requests_gpu(spec: Mapping[str, Any], gpu_resources: frozenset[str]) -> bool:
    """Some container (init or app) names one of ``gpu_resources`` in its limits or requests."""
    for key in ("initContainers", "containers"):
        containers = spec.get(key)
        if not isinstance(containers, list):
            continue
        for container in containers:
            resources = _mapping(_mapping(container).get("resources"))
            for part in ("limits", "requests"):
                if not gpu_resources.isdisjoint(_mapping(resources.get(part)).keys()):
                    return True
    return False


def placement_status(pod: Mapping[str, Any], trust: PlacementTrust = DEFAULT_TRUST) -> Ignored | None:
    """Whether the pod's placement annotations may count (module docstring): ``None`` when they may
    (or when there are none), else why not. Reads no annotation value beyond ``hami.io/vgpu-node``."""
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    node = annotations.get(names.VGPU_NODE)
    if names.DEVICES_ALLOCATED not in annotations or pod_is_terminal(pod):
        return None
    spec = _mapping(pod.get("spec"))
    if (
        not isinstance(node, str)
        or not node
        or spec.get("nodeName") != node
        or spec.get("schedulerName") not in trust.scheduler_names
    ):
        return Ignored.NOT_BOUND_THROUGH_US
    if not requests_gpu(spec, trust.gpu_resources):
        return Ignored.NO_GPU_REQUEST
    return None


def trusted_allocation(
    pod: Mapping[str, Any], trust: PlacementTrust = DEFAULT_TRUST
) -> tuple[PodAllocation | None, Ignored | None]:
    """The pod's hold on GPUs if its placement counts, else ``None`` and why not (``None`` reason:
    the pod simply holds nothing). Raises :class:`MalformedInputError` when the annotations of a
    trusted pod cannot be read."""
    ignored = placement_status(pod, trust)
    if ignored is not None:
        return None, ignored
    return pod_allocation(pod), None


def pod_allocation(pod: Mapping[str, Any]) -> PodAllocation | None:
    """The pod's hold on GPUs from its annotations (trusted: see :func:`placement_status`), or ``None``.
    Raises :class:`MalformedInputError` when the annotations exist but cannot be read."""
    if pod_is_terminal(pod):
        return None
    annotations = annotations_of(pod)
    node = annotations.get(names.VGPU_NODE)
    allocated = annotations.get(names.DEVICES_ALLOCATED)
    if not node or allocated is None:
        return None
    devices = decode_pod_devices(allocated)
    reserved = decode_mig_allocations(annotations.get(names.MIG_ALLOCATIONS, ""))
    mig = _mig_by_device(reserved, [[d.uuid for d in container] for container in devices])
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
            tuple(
                DeviceGrant(uuid=d.uuid, usedmem=d.usedmem, usedcores=d.usedcores, mig=mig.get((c, k)))
                for k, d in enumerate(container)
            )
            for c, container in enumerate(devices)
        ),
        slots=slots,
        init_containers=len(init) if isinstance(init, list) else 0,
        sidecars=sidecar_positions(init),
        mig_realized=tuple(a for a in reserved if a.realized and (a.container_index, a.device_index) in mig),
        priority=pod_priority(spec),
    )


def _mig_by_device(reserved: tuple[MigAllocation, ...], devices: list[list[str]]) -> dict[tuple[int, int], MigInstance]:
    """The reservations that name a device of the device list (same container, position and GPU UUID); one that
    names anything else describes no device the pod holds and counts for nothing."""
    out: dict[tuple[int, int], MigInstance] = {}
    for a in reserved:
        container = devices[a.container_index] if a.container_index < len(devices) else []
        if a.device_index < len(container) and container[a.device_index] == a.gpu_uuid:
            out[(a.container_index, a.device_index)] = MigInstance(a.start, a.size, a.profile)
    return out


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def pod_priority(spec: Mapping[str, Any]) -> int | None:
    """``spec.priority`` (set by the Priority admission plugin from the pod's PriorityClass), or ``None`` when it is
    missing or not an int32: such a pod is never proposed as a preemption victim by us."""
    value = spec.get("priority")
    if isinstance(value, bool) or not isinstance(value, int) or not INT32_MIN <= value <= INT32_MAX:
        return None
    return value
