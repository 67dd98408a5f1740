"""Which pod a kubelet request is for, decided from the pods bound to this node (no node lock).

kubelet's GetPreferredAllocation and Allocate name device IDs, never the pod. The scheduler extender records on
each pod, before binding it, the GPUs of every container (``hami.io/vgpu-devices-to-allocate``, HAMi's encoding)
and the exact virtual device IDs it chose for them (``hami.io/vgpu-device-slots``, ours), picking replica IDs that
no other live pod on the node holds. So:

* GetPreferredAllocation steers kubelet to the slot IDs of the next pending container of the pod kubelet is
  admitting: the one kubelet's pod-resources List names (core/admission.py), else the first in kubelet's admission
  order as inferred here (:attr:`PodRecord.arrival`: the order in which our watch saw the pods bound to the node,
  as kubelet's watch does; creation timestamps cannot order a burst). A restarted kubelet admits in an order no one
  outside it can know: only the pod-resources answer closes that gap;
* in Allocate the requested IDs equal the slot list of exactly one pending container;
* fallbacks, when kubelet picked other IDs (a slot still held by a terminating pod, or devices reused
  from an init container): the same multiset of physical GPUs, oldest pod first; then devices reused from
  one of the pod's own finished init containers.

Candidates wait for Allocate on this node with containers left to allocate and a placement our extender made
(:func:`placement_problem`: a scheduler we serve, ``hami.io/vgpu-node`` this node, every pending entry within the
pod's own GPU request and this node's GPUs). Anyone who may create a pod can write its annotations and
``spec.nodeName``; a pod that fails the check is never matched, and Allocate's error names it and says why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.errors import MalformedInputError
from hami_shared.mig import MigAllocation, decode_mig_allocations
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames
from hami_shared.pod_devices import (
    ContainerDevices,
    PodDevices,
    PodSlots,
    decode_device_slots,
    decode_pod_devices,
    split_slot_id,
)
from hami_shared.quantity import container_gpu_request

TRUE_VALUES: Final = frozenset({"true", "1", "yes", "on"})
DEFAULT_SCHEDULER_NAMES: Final = frozenset({names.SCHEDULER_NAME})
MAX_PLACEMENT_ANNOTATION_BYTES: Final = 64 * 1024
"""A device list or slot list longer than this is refused unread (a node's 110 pods x 16 GPUs fit in 8 KiB)."""
MAX_CORES: Final = 100


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What Allocate needs from a container's spec."""

    name: str
    init: bool
    disable_control: bool = False
    priority: int | None = None
    gpu_count: int | None = None
    """The container's own ``nvidia.com/gpu`` request (None: none, or unreadable)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord:
    """The fields of a pod that identification and Allocate read."""

    uid: str
    namespace: str
    name: str
    created: str
    node: str
    scheduler_name: str = ""
    vgpu_node: str | None = None
    """``hami.io/vgpu-node``: the node the scheduler extender placed the pod on."""
    deleting: bool = False
    terminal: bool = False
    bind_phase: str | None = None
    to_allocate: PodDevices = ()
    allocated: PodDevices = ()
    """``hami.io/vgpu-devices-allocated`` (empty when absent or malformed): rebuilds the plugin's record of an
    allocated container after a restart."""
    slots: PodSlots = ()
    containers: tuple[ContainerInfo, ...] = ()
    vulkan: bool = False
    arrival: int = 0
    """Position in which the pod cache first saw the pod bound to this node (kubelet's admission order)."""
    problem: str | None = None
    """Why the pod's annotations cannot be used (malformed), if so."""
    container_ids: tuple[tuple[str, str], ...] = ()
    """(container name, runtime container ID) from the pod's status (the kubelet's): the node backstop tells a
    container's processes by the ID in their cgroup."""
    mig_allocations: tuple[MigAllocation, ...] = ()
    """``hami.io/vgpu-mig-allocations``: the MIG instances the extender reserved for the pod (core/mig.py)."""
    mig_problem: str | None = None
    """Why ``hami.io/vgpu-mig-allocations`` cannot be read, if so."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def order(self) -> tuple[int, str, str, str]:
        """kubelet's admission order: arrival on the node, then creation time, namespace and name."""
        return (self.arrival, self.created, self.namespace, self.name)

    def pending_positions(self, claimed: Collection[tuple[str, int]] = ()) -> tuple[int, ...]:
        return tuple(i for i, devices in enumerate(self.to_allocate) if devices and (self.uid, i) not in claimed)

    def is_waiting(self, node: str) -> bool:
        """Bound to ``node``, alive, and marked as waiting for Allocate (whoever marked it)."""
        return self.node == node and not self.deleting and not self.terminal and self.bind_phase == BindPhase.ALLOCATING

    def is_candidate(
        self, node: str, claimed: Collection[tuple[str, int]] = (), policy: PlacementPolicy | None = None
    ) -> bool:
        return (
            self.is_waiting(node)
            and bool(self.pending_positions(claimed))
            and placement_problem(self, node, policy or PlacementPolicy(), claimed) is None
        )

    def slots_of(self, position: int) -> tuple[str, ...]:
        return self.slots[position] if position < len(self.slots) else ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlacementPolicy:
    """What makes a placement one that our scheduler extender made for this node."""

    schedulers: frozenset[str] = DEFAULT_SCHEDULER_NAMES
    """``spec.schedulerName`` values served (the scheduler profiles that call our extender)."""
    gpu_memory_mib: Mapping[str, int] | None = None
    """This node's GPUs: UUID -> registered memory in MiB (after scaling), the most one container may hold.
    None: not checked (unit tests of identification alone)."""


def _devices_annotation(annotations: Mapping[str, Any], key: str) -> PodDevices:
    value = str(annotations.get(key, ""))
    if len(value) > MAX_PLACEMENT_ANNOTATION_BYTES:
        raise MalformedInputError(key, value, f"is {len(value)} bytes long, more than {MAX_PLACEMENT_ANNOTATION_BYTES}")
    return decode_pod_devices(value, what=key)


def pod_record(pod: Mapping[str, Any], resource_names: ResourceNames = DEFAULT_RESOURCE_NAMES) -> PodRecord:
    """A :class:`PodRecord` from a pod's JSON. Malformed annotations end up in ``problem``, never raise."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = metadata.get("annotations") or {}
    containers = tuple(
        _container_info(c, init=True, resource_names=resource_names) for c in spec.get("initContainers") or []
    ) + tuple(_container_info(c, init=False, resource_names=resource_names) for c in spec.get("containers") or [])
    problem = None
    to_allocate: PodDevices = ()
    allocated: PodDevices = ()
    slots: PodSlots = ()
    # ValueError: the project's MalformedInputError, and any plain ValueError a decoder lets through (such as
    # int()'s refusal of a number with thousands of digits): either way the pod is unusable, never a crash.
    try:
        to_allocate = _devices_annotation(annotations, names.DEVICES_TO_ALLOCATE)
        slot_text = str(annotations.get(names.DEVICE_SLOTS, ""))
        if len(slot_text) > MAX_PLACEMENT_ANNOTATION_BYTES:
            raise MalformedInputError(names.DEVICE_SLOTS, slot_text, "is longer than a node's slots can be")
        slots = decode_device_slots(slot_text)
    except ValueError as exc:
        problem = str(exc)[:500]
    try:
        allocated = _devices_annotation(annotations, names.DEVICES_ALLOCATED)
    except ValueError:
        allocated = ()
    mig_allocations: tuple[MigAllocation, ...] = ()
    mig_problem = None
    try:
        mig_allocations = decode_mig_allocations(str(annotations.get(names.MIG_ALLOCATIONS, "")))
    except ValueError as exc:
        mig_problem = str(exc)[:500]
    if problem is None and len(to_allocate) > len(containers):
        problem = (
            f"{names.DEVICES_TO_ALLOCATE} has {len(to_allocate)} container entries but the pod has "
            f"{len(containers)} containers"
        )
    return PodRecord(
        uid=str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        created=str(metadata.get("creationTimestamp", "")),
        node=str(spec.get("nodeName") or ""),
        scheduler_name=str(spec.get("schedulerName") or ""),
        vgpu_node=None if annotations.get(names.VGPU_NODE) is None else str(annotations[names.VGPU_NODE]),
        deleting=bool(metadata.get("deletionTimestamp")),
        terminal=status.get("phase") in names.TERMINAL_POD_PHASES,
        bind_phase=annotations.get(names.BIND_PHASE),
        to_allocate=to_allocate,
        allocated=allocated,
        slots=slots,
        containers=containers,
        vulkan=str(annotations.get(names.VULKAN, "")).strip().lower() in TRUE_VALUES,
        problem=problem,
        container_ids=_container_ids(status),
        mig_allocations=mig_allocations,
        mig_problem=mig_problem,
    )


def _container_ids(status: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, ID) of every container status with an ID (``<runtime>://<hex ID>``; anything else is skipped)."""
    out = []
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if isinstance(entry, Mapping):
            cid = str(entry.get("containerID") or "").rpartition("://")[2]
            if 12 <= len(cid) <= 128 and all(c in "0123456789abcdef" for c in cid):
                out.append((str(entry.get("name", "")), cid))
    return tuple(out)


def _container_info(container: Mapping[str, Any], *, init: bool, resource_names: ResourceNames) -> ContainerInfo:
    disable = False
    for item in container.get("env") or []:
        if isinstance(item, Mapping) and item.get("name") == names.ENV_DISABLE_CONTROL:
            disable = str(item.get("value", "")).strip().lower() in TRUE_VALUES
    try:
        request = container_gpu_request(container, resource_names)
        priority, count = request.priority, request.count
    except MalformedInputError:
        priority = count = None
    return ContainerInfo(
        name=str(container.get("name", "")), init=init, disable_control=disable, priority=priority, gpu_count=count
    )


def placement_problem(
    pod: PodRecord, node: str, policy: PlacementPolicy, claimed: Collection[tuple[str, int]] = ()
) -> str | None:
    """Why the pod's pending placement is not one our scheduler extender made for ``node`` (None: it is)."""
    if pod.problem is not None:
        return pod.problem
    if pod.scheduler_name not in policy.schedulers:
        return (
            f"its spec.schedulerName is {pod.scheduler_name!r}, not one this plugin serves "
            f"({', '.join(sorted(policy.schedulers))}): only pods placed by the HAMi scheduler get GPUs here; "
            "create the pod without spec.schedulerName and spec.nodeName so that the webhook routes it"
        )
    if pod.vgpu_node != node:
        return (
            f"its {names.VGPU_NODE} is {pod.vgpu_node!r}, not this node {node!r}: the scheduler did not place it here"
        )
    for position in pod.pending_positions(claimed):
        devices = pod.to_allocate[position]
        container = pod.containers[position]
        wanted = container.gpu_count or 0
        if len(devices) != wanted:
            return (
                f"{names.DEVICES_TO_ALLOCATE} gives container {container.name!r} {len(devices)} GPU(s) but it "
                f"requests {wanted}"
            )
        for device in devices:
            if policy.gpu_memory_mib is not None:
                memory = policy.gpu_memory_mib.get(device.uuid)
                if memory is None:
                    return f"{names.DEVICES_TO_ALLOCATE} names GPU {device.uuid!r}, which is not a GPU of node {node}"
            else:
                memory = device.usedmem
            if not 0 < device.usedmem <= memory:
                return (
                    f"{names.DEVICES_TO_ALLOCATE} gives container {container.name!r} {device.usedmem} MiB of "
                    f"{device.uuid}; a placement holds 1 to {memory} MiB of it"
                )
            if device.usedcores > MAX_CORES:
                return (
                    f"{names.DEVICES_TO_ALLOCATE} gives container {container.name!r} {device.usedcores}% of the cores "
                    f"of {device.uuid}; at most {MAX_CORES}"
                )
    return None


# --- identification ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """The pending container an Allocate request is for."""

    pod: PodRecord
    position: int
    devices: ContainerDevices
    matched_by: str
    """``slots``, ``gpus`` or ``init-reuse``: how the request was matched (logged and counted)."""

    @property
    def container(self) -> ContainerInfo:
        return self.pod.containers[self.position]


@dataclasses.dataclass(frozen=True, slots=True)
class NoMatch:
    reason: str


def candidates(
    pods: Iterable[PodRecord],
    node: str,
    claimed: Collection[tuple[str, int]],
    policy: PlacementPolicy | None = None,
) -> list[PodRecord]:
    """Pods waiting for Allocate on ``node`` with a placement we made, in kubelet's admission order."""
    return sorted((p for p in pods if p.is_candidate(node, claimed, policy)), key=lambda p: p.order)


def refused(
    pods: Iterable[PodRecord], node: str, claimed: Collection[tuple[str, int]], policy: PlacementPolicy
) -> list[tuple[PodRecord, str]]:
    """Pods marked as waiting for Allocate on ``node`` whose placement is refused, with the reason."""
    out = []
    for pod in pods:
        if pod.is_waiting(node):
            problem = placement_problem(pod, node, policy, claimed)
            if problem is not None:
                out.append((pod, problem))
    return sorted(out, key=lambda entry: entry[0].order)


def gpus_of(device_ids: Iterable[str]) -> Counter[str] | None:
    """The physical GPUs (UUID -> how many IDs) of our device IDs; None where one is not ours."""
    try:
        return Counter(split_slot_id(d)[0] for d in device_ids)
    except MalformedInputError:
        return None


def identify(
    pods: Iterable[PodRecord],
    node: str,
    device_ids: Sequence[str],
    claimed: Collection[tuple[str, int]] = (),
    policy: PlacementPolicy | None = None,
) -> Assignment | NoMatch:
    """The pending container that kubelet's Allocate request for ``device_ids`` is for."""
    policy = policy or PlacementPolicy()
    pods = list(pods)
    waiting = candidates(pods, node, claimed, policy)
    requested = set(device_ids)
    if not device_ids:
        return NoMatch("the Allocate request names no devices")
    # 1. The exact slot IDs the extender chose.
    for pod in waiting:
        for position in pod.pending_positions(claimed):
            slots = pod.slots_of(position)
            if slots and set(slots) == requested and len(slots) == len(device_ids):
                return Assignment(pod, position, pod.to_allocate[position], "slots")
    # 2. The same physical GPUs (kubelet picked other replicas of them), oldest pod first.
    gpus = gpus_of(device_ids)
    if gpus is None:
        return NoMatch(f"device IDs {sorted(requested)} are not '<gpu-uuid>-<replica>' IDs of this plugin")
    for pod in waiting:
        for position in pod.pending_positions(claimed):
            if Counter(d.uuid for d in pod.to_allocate[position]) == gpus:
                return Assignment(pod, position, pod.to_allocate[position], "gpus")
    # 3. kubelet reused devices of one of the pod's finished init containers for a later container.
    for pod in waiting:
        reused = {s for i, c in enumerate(pod.containers) if c.init for s in pod.slots_of(i)}
        if not reused & requested:
            continue
        for position in pod.pending_positions(claimed):
            if not pod.containers[position].init and len(pod.to_allocate[position]) == len(device_ids):
                return Assignment(pod, position, pod.to_allocate[position], "init-reuse")
    return NoMatch(_no_match_reason(waiting, refused(pods, node, claimed, policy), node, device_ids, claimed))


def _no_match_reason(
    waiting: Sequence[PodRecord],
    refusals: Sequence[tuple[PodRecord, str]],
    node: str,
    device_ids: Sequence[str],
    claimed: Collection[tuple[str, int]],
) -> str:
    asked = ",".join(sorted(device_ids))
    if refusals:
        why = "; ".join(f"pod {pod.key} is refused: {problem}" for pod, problem in refusals[:3])
        more = f" (and {len(refusals) - 3} more)" if len(refusals) > 3 else ""
        prefix = f"no pod on node {node} with a placement by the HAMi scheduler matches devices {asked}; {why}{more}"
        if not waiting:
            return prefix
        return prefix + "; " + _no_match_reason(waiting, (), node, device_ids, claimed)
    if not waiting:
        return (
            f"no pod on node {node} is waiting for GPUs (none has {names.BIND_PHASE}=allocating with devices left "
            f"in {names.DEVICES_TO_ALLOCATE}); was the pod scheduled by the HAMi scheduler? requested devices: {asked}"
        )
    shown = []
    for pod in waiting[:5]:
        for position in pod.pending_positions(claimed)[:1]:
            gpus = ",".join(d.uuid for d in pod.to_allocate[position])
            slots = ",".join(pod.slots_of(position)) or "-"
            shown.append(f"{pod.key} container {pod.containers[position].name} (slots {slots}; GPUs {gpus})")
    return (
        f"no pending container on node {node} was assigned devices {asked}: {len(waiting)} pod(s) wait for GPUs: "
        + "; ".join(shown)
    )


Preference = Callable[[Sequence[str], Sequence[str], int], tuple[str, ...] | None]
"""Device IDs to prefer from (available, must_include, size) when no scheduled container names them; None: no
preference."""


def preferred_devices(
    pods: Iterable[PodRecord],
    node: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    claimed: Collection[tuple[str, int]] = (),
    policy: PlacementPolicy | None = None,
    fallback: Preference | None = None,
) -> tuple[str, ...]:
    """Device IDs to prefer for the next container kubelet admits (advisory; never fails): the exact slots of
    the first pending container they fit, else free replicas of the GPUs of the first one they fit, else
    ``fallback``'s choice (the topology-aware one, core/topology.py), else kubelet's order."""
    pending = [
        (pod.slots_of(position), [d.uuid for d in pod.to_allocate[position]])
        for pod in candidates(pods, node, claimed, policy)
        for position in pod.pending_positions(claimed)[:1]
    ]
    for slots, wanted in [*((slots, []) for slots, _ in pending), *pending]:
        chosen = preferred_for(slots, wanted, available, must_include, size)
        if chosen is not None:
            return chosen
    if fallback is not None:
        chosen = fallback(available, must_include, size)
        if chosen is not None:
            return chosen
    must = list(dict.fromkeys(must_include))
    return _with_must(must, [d for d in available if d not in must], size)


def preferred_for(
    slots: Sequence[str], wanted: Sequence[str], available: Sequence[str], must_include: Sequence[str], size: int
) -> tuple[str, ...] | None:
    """Device IDs to prefer for one known container: its ``slots``, else free replicas of its GPUs ``wanted``;
    None when neither fits kubelet's request."""
    pool = set(available) | set(must_include)
    must = list(dict.fromkeys(must_include))
    if len(slots) == size and set(slots) <= pool and set(must) <= set(slots):
        return _with_must(must, slots, size)
    if len(wanted) != size:
        return None
    own = [d for d in slots if d in available and d not in must]
    picked = _replicas_of(wanted, [*own, *(d for d in available if d not in must and d not in own)], must)
    return None if picked is None else _with_must(must, picked, size)


def _replicas_of(wanted: Sequence[str], available: Sequence[str], must: Sequence[str]) -> list[str] | None:
    by_uuid: dict[str, list[str]] = {}
    for device_id in [*must, *available]:
        gpus = gpus_of([device_id])
        if gpus is None:
            continue
        by_uuid.setdefault(next(iter(gpus)), []).append(device_id)
    picked = []
    for uuid in wanted:
        free = [d for d in by_uuid.get(uuid, []) if d not in picked]
        if not free:
            return None
        picked.append(free[0])
    return picked


def _with_must(must: Sequence[str], chosen: Sequence[str], size: int) -> tuple[str, ...]:
    out = list(must)
    out += [d for d in chosen if d not in out]
    return tuple(out[:size])
