"""Does a pod fit a node, on which GPUs, and how good is the node: pure functions of a NodeView.

Per container (init containers first), per card, the first failing check names the card's reason, in
HAMi's order: health, cordon, type/mode, UUID, split slots, memory, cores, exclusive use (a 100-core request
needs an idle card), compute exhausted (no 0-core request on a card whose cores are all held). Each
container is fitted against the node plus what runs beside it (``model.runs_alone``). Among fitting cards
the GPU policy picks: ``spread`` the emptiest, ``binpack`` the fullest (HAMi's device score: slot, core and
memory ratios after placing). With ``numa-bind`` the cards of one container come from one NUMA node.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

from hami_scheduler_extender.core.model import (
    ContainerGrants,
    DeviceGrant,
    DeviceView,
    FailureReason,
    NodeView,
    PodGrants,
    Policy,
    runs_alone,
)
from hami_scheduler_extender.core.request import ContainerNeed, PlacementOptions, PodRequest

MAX_PRIORITY = 10
"""kube-scheduler's MaxExtenderPriority: prioritize scores are 0..10."""

REASON_ORDER = {reason: position for position, reason in enumerate(FailureReason)}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeFit:
    """The answer for one node: the grants per container, or why not (reason -> number of cards)."""

    node: str
    grants: PodGrants | None = None
    reasons: Mapping[FailureReason, int] = dataclasses.field(default_factory=dict)
    cards: int = 0
    detail: str = ""

    @property
    def fits(self) -> bool:
        return self.grants is not None

    @property
    def message(self) -> str:
        """HAMi's per-node failure text, e.g. ``6/8 CardInsufficientMemory, 2/8 CardNotHealth``."""
        if self.fits:
            return ""
        if FailureReason.NODE_UNREGISTERED in self.reasons:
            reason = FailureReason.NODE_UNREGISTERED.value
            return f"{reason}: {self.detail}" if self.detail else reason
        ordered = sorted(self.reasons.items(), key=lambda item: REASON_ORDER[item[0]])
        return ", ".join(f"{n}/{self.cards} {reason.value}" for reason, n in ordered)


def _type_matches(device: DeviceView, options: PlacementOptions) -> bool:
    # A device without a mode (HAMi's legacy record with an empty mode field) matches every
    # nvidia.com/vgpu-mode request, as in HAMi (strings.Contains(request, "") is true).
    mode = device.mode
    if mode == "mig":
        # MIG cards need profile placement, which this extender does not do (documented).
        return False
    if options.vgpu_mode is not None and mode not in options.vgpu_mode:
        return False
    type_lower = device.type.lower()
    if options.use_types and not any(t in type_lower for t in options.use_types):
        return False
    return not any(t in type_lower for t in options.nouse_types)


def _uuid_matches(device: DeviceView, options: PlacementOptions) -> bool:
    if options.use_uuids and device.uuid not in options.use_uuids:
        return False
    return device.uuid not in options.nouse_uuids


def _fit_container(
    devices: tuple[DeviceView, ...],
    need: ContainerNeed,
    options: PlacementOptions,
    used: list[int],
    used_mem: list[int],
    used_cores: list[int],
) -> tuple[ContainerGrants | None, Counter[FailureReason]]:
    """Pick ``need.count`` cards given the usage lists; returns grants or the reasons."""
    reasons: Counter[FailureReason] = Counter()
    if need.count > len(devices):
        reasons[FailureReason.NODE_INSUFFICIENT_DEVICE] = len(devices)
        return None, reasons
    cores = need.cores
    fitting: list[tuple[float, int, int, int]] = []  # (sort key, numa, index, memory)
    binpack = options.gpu_policy is Policy.BINPACK
    for i, device in enumerate(devices):
        if not device.healthy:
            reasons[FailureReason.CARD_NOT_HEALTH] += 1
            continue
        if device.cordoned:
            reasons[FailureReason.CARD_CORDONED] += 1
            continue
        if not _type_matches(device, options):
            reasons[FailureReason.CARD_TYPE_MISMATCH] += 1
            continue
        if not _uuid_matches(device, options):
            reasons[FailureReason.CARD_UUID_MISMATCH] += 1
            continue
        if used[i] >= device.count:
            reasons[FailureReason.CARD_TIME_SLICING_EXHAUSTED] += 1
            continue
        memory = need.memory_on(device.total_mem)
        if device.total_mem - used_mem[i] < memory:
            reasons[FailureReason.CARD_INSUFFICIENT_MEMORY] += 1
            continue
        if device.total_cores - used_cores[i] < cores:
            reasons[FailureReason.CARD_INSUFFICIENT_CORE] += 1
            continue
        if cores >= 100 and used[i] > 0:
            reasons[FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] += 1
            continue
        if cores == 0 and used_cores[i] >= device.total_cores:
            reasons[FailureReason.CARD_COMPUTE_UNITS_EXHAUSTED] += 1
            continue
        score = (used[i] + 1) / device.count
        if device.total_cores:
            score += (used_cores[i] + cores) / device.total_cores
        if device.total_mem:
            score += (used_mem[i] + memory) / device.total_mem
        fitting.append((-score if binpack else score, device.numa, i, memory))
    if len(fitting) < need.count:
        if fitting:
            reasons[FailureReason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] += len(fitting)
        return None, reasons
    fitting.sort(key=lambda item: (item[0], item[2]))
    chosen = fitting[: need.count]
    if options.numa_bind and need.count > 1:
        groups: dict[int, list[tuple[float, int, int, int]]] = {}
        for item in fitting:
            groups.setdefault(item[1], []).append(item)
        # Groups are visited in the order of their best card, so the policy still decides.
        complete = [g for g in groups.values() if len(g) >= need.count]
        if not complete:
            reasons[FailureReason.NUMA_NOT_FIT] += len(fitting)
            return None, reasons
        chosen = complete[0][: need.count]
    grants = tuple(DeviceGrant(uuid=devices[i].uuid, usedmem=memory, usedcores=cores) for _, _, i, memory in chosen)
    return grants, reasons


def fit_pod(node: NodeView, request: PodRequest) -> NodeFit:
    """Fit every container of ``request`` on ``node``; never mutates the view."""
    if not node.registered:
        return NodeFit(node=node.name, reasons={FailureReason.NODE_UNREGISTERED: 1}, detail=node.unregistered_detail)
    devices = node.devices
    # The node's usage plus the pod's containers that keep running (sidecars and app containers so far).
    used = [d.used for d in devices]
    used_mem = [d.used_mem for d in devices]
    used_cores = [d.used_cores for d in devices]
    grants: list[ContainerGrants] = []
    for position, need in enumerate(request.needs):
        if need.count == 0:
            grants.append(())
            continue
        chosen, reasons = _fit_container(devices, need, request.options, used, used_mem, used_cores)
        if chosen is None:
            return NodeFit(node=node.name, reasons=dict(reasons), cards=len(devices))
        if not runs_alone(position, init_containers=request.init_containers, sidecars=request.sidecars):
            index = {d.uuid: i for i, d in enumerate(devices)}
            for grant in chosen:
                i = index[grant.uuid]
                used[i] += 1
                used_mem[i] += grant.usedmem
                used_cores[i] += grant.usedcores
        grants.append(chosen)
    return NodeFit(node=node.name, grants=tuple(grants), cards=len(devices))


def node_priority(node: NodeView, policy: Policy) -> int:
    """Prioritize score 0..10 from HAMi's node score: binpack prefers busy nodes, spread idle ones."""
    if not node.registered or not node.devices:
        return 0
    scaled = round(node.utilisation / 3 * MAX_PRIORITY)
    scaled = min(max(scaled, 0), MAX_PRIORITY)
    return scaled if policy is Policy.BINPACK else MAX_PRIORITY - scaled
