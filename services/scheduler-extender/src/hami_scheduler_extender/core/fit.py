"""Does a pod fit a node, on which GPUs, and how good is the node: pure functions of a NodeView.

Per container (init containers first), per card, the first failing check names the card's reason, in
HAMi's order, except that exclusive use comes before memory: health, cordon, type/mode, UUID, split slots,
exclusive use (a 100-core or ``mutex`` request needs a card with no tenant; a card a ``mutex`` pod holds takes no
one: that pod is charged the whole card, its memory and 100 % of its cores, so a tight GPU quota cannot be escaped
with ``mutex``), memory, cores, compute exhausted (no 0-core request on a card whose cores are all held).
Each container is fitted against the node plus what runs beside it
(``model.runs_alone``). The fitting cards are ordered by the GPU policy chain (``core.policy``): ``spread`` the
emptiest first, ``binpack`` the fullest (HAMi's device score: slot, core and memory ratios after placing, weighted
by ``hami.io/device-scoring-weights``), ``numa`` the lowest NUMA node, in the order written, then the card index.
With ``numa-bind`` the cards of one container come from one NUMA node. With ``topology-aware`` and a node that
publishes its interconnect, the best-connected set among them is taken (``core.topology``), ties to that order.

A MIG-mode card (``core.mig``) takes the same health, cordon, type/mode and UUID checks, then its slots (one
per instance), then the geometry fit: the least-waste free instance of a geometry compatible with the
instances in use, or ``CardMigTopologyInfeasible``; cores and the memory sum do not apply (an instance is
isolated hardware). Its score uses instances, memory slices and profile memory in place of slots, cores and
memory. One instance per requested GPU, each on a different card, as for sharing cards.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

from hami_scheduler_extender.core.mig import MigInstance
from hami_scheduler_extender.core.model import (
    MODE_MIG,
    ContainerGrants,
    DeviceGrant,
    DeviceView,
    FailureReason,
    NodeView,
    PodGrants,
    Policy,
    runs_alone,
)
from hami_scheduler_extender.core.policy import SortKey
from hami_scheduler_extender.core.request import ContainerNeed, PlacementOptions, PodRequest
from hami_scheduler_extender.core.topology import BestSets, NodeLinks

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
    topology_score: int | None = None
    """The summed pair scores of the sets the topology chose (``topology-aware`` pods on nodes with topology)."""

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


Fitting = tuple[tuple[float, ...], int, int, int, MigInstance | None]
"""A card that fits: (sort key, NUMA node, card position, memory it would give, MIG instance)."""


def _sort_key(keys: tuple[SortKey, ...], score: float, numa: int, index: int) -> tuple[float, ...]:
    """The chain's ordering of one card (core.policy): each key in turn, then the card position."""
    out: list[float] = []
    for key in keys:
        if key is SortKey.BINPACK:
            out.append(-score)
        elif key is SortKey.SPREAD:
            out.append(score)
        else:
            out.append(numa)
    out.append(index)
    return tuple(out)


def _fit_container(
    node: NodeView,
    need: ContainerNeed,
    options: PlacementOptions,
    used: list[int],
    used_mem: list[int],
    used_cores: list[int],
    mig_used: list[list[MigInstance]],
    best_sets: BestSets | None,
) -> tuple[ContainerGrants | None, Counter[FailureReason], int | None]:
    """Pick ``need.count`` cards given the usage lists; returns grants or the reasons, and the chosen set's
    interconnect score when the topology decided."""
    devices = node.devices
    reasons: Counter[FailureReason] = Counter()
    if need.count > len(devices):
        reasons[FailureReason.NODE_INSUFFICIENT_DEVICE] = len(devices)
        return None, reasons, None
    cores = need.cores
    fitting: list[Fitting] = []
    chain = options.chain
    weights = options.weights
    mutex = options.mutex
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
        if device.mode == MODE_MIG:
            if device.exclusive or (mutex and used[i] > 0):
                reasons[FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] += 1
                continue
            choice = None if device.mig is None or device.mig_foreign else device.mig.choose(mig_used[i], memory)
            if choice is None:
                reasons[FailureReason.CARD_MIG_TOPOLOGY_INFEASIBLE] += 1
                continue
            slices = device.mig.total_slices if device.mig is not None else 0
            score = weights.slot * (used[i] + 1) / device.count
            if slices:
                score += weights.core * (sum(m.size for m in mig_used[i]) + choice.instance.size) / slices
            if device.total_mem:
                score += weights.memory * (used_mem[i] + choice.memory) / device.total_mem
            # A mutex pod holds the whole card (no other instance is created on it while it runs), so it is charged
            # the whole card, as on a sharing card below; the device plugin still creates only the chosen instance.
            charged = device.total_mem if mutex else choice.memory
            fitting.append((_sort_key(chain.keys, score, device.numa, i), device.numa, i, charged, choice.instance))
            continue
        if device.exclusive or ((cores >= 100 or mutex) and used[i] > 0):
            # A 100-core or mutex request needs a card with no tenant; a card a mutex pod holds takes no one. Checked
            # before memory: a mutex pod is charged its whole card, so its card is full and the conflict is the reason.
            reasons[FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] += 1
            continue
        if device.total_mem - used_mem[i] < memory:
            reasons[FailureReason.CARD_INSUFFICIENT_MEMORY] += 1
            continue
        if device.total_cores - used_cores[i] < cores:
            reasons[FailureReason.CARD_INSUFFICIENT_CORE] += 1
            continue
        if cores == 0 and used_cores[i] >= device.total_cores:
            reasons[FailureReason.CARD_COMPUTE_UNITS_EXHAUSTED] += 1
            continue
        score = weights.slot * (used[i] + 1) / device.count
        if device.total_cores:
            score += weights.core * (used_cores[i] + cores) / device.total_cores
        if device.total_mem:
            score += weights.memory * (used_mem[i] + memory) / device.total_mem
        # A mutex pod has the card to itself, so it is charged the whole card (its quota, the metrics, its limit), not
        # the slice it asked for: else asking 1 MiB with `mutex` would hold a card against a GPU quota of 1 MiB.
        charged = device.total_mem if mutex else memory
        fitting.append((_sort_key(chain.keys, score, device.numa, i), device.numa, i, charged, None))
    if len(fitting) < need.count:
        if fitting:
            reasons[FailureReason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] += len(fitting)
        return None, reasons, None
    fitting.sort(key=lambda item: item[0])
    groups: list[list[Fitting]] = [fitting]
    if options.numa_bind and need.count > 1:
        by_numa: dict[int, list[Fitting]] = {}
        for item in fitting:
            by_numa.setdefault(item[1], []).append(item)
        # Groups are visited in the order of their best card, so the policy still decides.
        groups = [g for g in by_numa.values() if len(g) >= need.count]
        if not groups:
            reasons[FailureReason.NUMA_NOT_FIT] += len(fitting)
            return None, reasons, None
    chosen = groups[0][: need.count]
    set_score: int | None = None
    if options.topology_aware and node.topology is not None:
        chosen, set_score = _best_connected(node.topology, groups, need.count, best_sets)
    grants = tuple(
        DeviceGrant(
            uuid=devices[i].uuid,
            usedmem=memory,
            usedcores=100 if mig or options.mutex else cores,
            mig=mig,
        )
        for _, _, i, memory, mig in chosen
    )
    return grants, reasons, set_score


def _best_connected(
    links: NodeLinks, groups: list[list[Fitting]], k: int, best_sets: BestSets | None
) -> tuple[list[Fitting], int]:
    """HAMi's ``topology-aware`` pick among the fitting cards (per NUMA group with numa-bind: the best group):
    ``k > 1`` the set with the highest summed pair score, ``k == 1`` the card least connected to the others;
    ties go to the policy's order."""
    sets = best_sets if best_sets is not None else BestSets(max_entries=16)
    best: tuple[list[Fitting], int] | None = None
    for group in groups:
        by_position = {item[2]: item for item in group}
        picked = sets.choose(links, [item[2] for item in group], k)
        if picked is not None and (best is None or picked[1] > best[1]):
            best = ([by_position[p] for p in picked[0]], picked[1])
    assert best is not None  # every group holds at least k cards
    return best


def fit_pod(node: NodeView, request: PodRequest, *, best_sets: BestSets | None = None) -> NodeFit:
    """Fit every container of ``request`` on ``node``; never mutates the view. ``best_sets`` caches the
    topology-aware choices (a private one per call without it)."""
    if not node.registered:
        return NodeFit(node=node.name, reasons={FailureReason.NODE_UNREGISTERED: 1}, detail=node.unregistered_detail)
    devices = node.devices
    # The node's usage plus the pod's containers that keep running (sidecars and app containers so far).
    used = [d.used for d in devices]
    used_mem = [d.used_mem for d in devices]
    used_cores = [d.used_cores for d in devices]
    mig_used = [list(d.mig_in_use) for d in devices]
    grants: list[ContainerGrants] = []
    topology_score: int | None = None
    for position, need in enumerate(request.needs):
        if need.count == 0:
            grants.append(())
            continue
        chosen, reasons, set_score = _fit_container(
            node, need, request.options, used, used_mem, used_cores, mig_used, best_sets
        )
        if chosen is None:
            return NodeFit(node=node.name, reasons=dict(reasons), cards=len(devices))
        if set_score is not None:
            topology_score = (topology_score or 0) + set_score
        index = {d.uuid: i for i, d in enumerate(devices)}
        for grant in chosen:
            if grant.mig is not None:
                # Instances are held for the pod's life (PodAllocation.mig_instances), init containers' too.
                mig_used[index[grant.uuid]].append(grant.mig)
        if not runs_alone(position, init_containers=request.init_containers, sidecars=request.sidecars):
            for grant in chosen:
                i = index[grant.uuid]
                used[i] += 1
                used_mem[i] += grant.usedmem
                used_cores[i] += grant.usedcores
        grants.append(chosen)
    return NodeFit(node=node.name, grants=tuple(grants), cards=len(devices), topology_score=topology_score)


def node_priority(node: NodeView, policy: Policy) -> int:
    """Prioritize score 0..10 from HAMi's node score: binpack prefers busy nodes, spread idle ones."""
    if not node.registered or not node.devices:
        return 0
    scaled = round(node.utilisation / 3 * MAX_PRIORITY)
    scaled = min(max(scaled, 0), MAX_PRIORITY)
    return scaled if policy is Policy.BINPACK else MAX_PRIORITY - scaled
