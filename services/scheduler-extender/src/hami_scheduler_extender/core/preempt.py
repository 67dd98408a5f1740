"""Which pods to preempt on a node so that a GPU pod fits: pure decisions for the ``preempt`` verb.

kube-scheduler's DefaultPreemption picks victims per node with its in-tree filters only (``SelectVictimsOnNode``);
our GPU resources are ``ignoredByScheduler``, so its list says nothing about card memory, cores or slots (empty
on kube-scheduler releases that pass candidates without victims, kubernetes#135486; otherwise the pods an in-tree
resource such as CPU needs). For each candidate node :func:`select_victims` answers with the GPU's view:

1. The preemptor already fits the node's GPUs: the GPUs need no victim, kube-scheduler's list (for its in-tree
   reasons) passes unchanged, less any pod we know to be of the preemptor's priority or higher.
2. Otherwise the *pool* is kube-scheduler's victims that we hold with a known priority lower than the
   preemptor's, if removing all of them frees a fit; else (its dry run cannot see GPU slices) every such pod we
   hold on the node. No fit even without the whole pool: the node is dropped.
3. From the pool, the minimal set whose removal fits the preemptor, by :func:`fit.fit_pod` itself on the node's
   usage minus the set: fewest victims, then the lowest highest victim priority, then the lowest sum of
   priorities, then the least GPU memory taken, then the UIDs (deterministic). The search tries sets by size,
   after leaving out the pods that cannot change any card's verdict (:func:`_relevant`); a pod asking for one
   card only needs victims on the card it will use, so it tries each card's pods apart.
   Past ``budget`` fit checks it falls back to a greedy set made irreducible (no victim can be spared), which
   is reported as such (``Outcome.GREEDY``). kube-scheduler's victims that hold no GPU here free nothing for the
   GPUs and are left out; should its in-tree filters still need one, its next preemption pass proposes it
   again and step 1 passes it through.

Victims are only ever pods we hold on that node (a UID kube-scheduler cannot find there fails its whole
preemption) with a priority lower than the preemptor's; the answer lists them by priority, highest first
(kube-scheduler's node choice reads the first as the highest).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence

from hami_scheduler_extender.core.fit import fit_pod
from hami_scheduler_extender.core.mig import MigInstance
from hami_scheduler_extender.core.model import DeviceUsage, DeviceView, NodeView
from hami_scheduler_extender.core.request import PodRequest

DEFAULT_BUDGET = 512
"""Fit checks one node's exact search may spend before the greedy fallback."""
SMALL_POOL = 3
"""Pools this small are searched as they are (:func:`_relevant` would cost more checks than it saves)."""


class Outcome(enum.StrEnum):
    """How a node's answer was reached (the ``result`` label of the decisions metric)."""

    PASSED_THROUGH = "passed-through"  # the GPUs fit already: kube-scheduler's own victims
    NARROWED = "narrowed"  # minimal set out of kube-scheduler's victims
    WIDENED = "widened"  # minimal set out of every lower-priority pod we hold on the node
    GREEDY = "greedy"  # search budget spent: an irreducible set, maybe not the smallest
    NO_FIT = "no-fit"  # even without every lower-priority pod the preemptor does not fit: dropped
    NO_VICTIM = "no-victim"  # nothing left to propose: dropped


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A pod that holds GPUs on the node: what it takes per GPU and its priority (``None``: unknown)."""

    uid: str
    priority: int | None
    usage: Mapping[str, DeviceUsage]
    mig: Mapping[str, tuple[MigInstance, ...]] = dataclasses.field(default_factory=dict)
    """The MIG instances it holds per card (a MIG card frees instances, not just memory)."""

    @property
    def memory(self) -> int:
        return sum(u.mem for u in self.usage.values())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeDecision:
    """The victims to propose on one node (highest priority first), or ``None``: drop the node."""

    node: str
    victims: tuple[str, ...] | None
    outcome: Outcome
    checks: int = 0


def fits_without(view: NodeView, request: PodRequest, victims: Iterable[Candidate]) -> bool:
    """Whether ``request`` fits ``view`` once the victims' holds are gone (the fit code's own answer)."""
    return fit_pod(without(view, victims), request).grants is not None


def without(view: NodeView, victims: Iterable[Candidate]) -> NodeView:
    """The node as it would be without the victims' holds."""
    freed: dict[str, list[int]] = {}
    replicas: dict[str, set[int]] = {}
    instances: dict[str, list[MigInstance]] = {}
    totals = {d.uuid: d.total_mem for d in view.devices}
    whole: set[str] = set()  # cards a victim holds whole: the hold that made them exclusive (state.py) goes
    for victim in victims:
        for uuid, usage in victim.usage.items():
            if 0 < totals.get(uuid, 0) <= usage.mem:
                whole.add(uuid)
            acc = freed.setdefault(uuid, [0, 0, 0])
            acc[0] += usage.slots
            acc[1] += usage.mem
            acc[2] += usage.cores
            replicas.setdefault(uuid, set()).update(usage.replicas)
        for uuid, held in victim.mig.items():
            instances.setdefault(uuid, []).extend(held)
    if not freed:
        return view
    devices = tuple(
        _freed(d, freed[d.uuid], replicas[d.uuid], instances.get(d.uuid, ()), d.uuid in whole) if d.uuid in freed else d
        for d in view.devices
    )
    return NodeView.build(
        name=view.name,
        registered=view.registered,
        unregistered_detail=view.unregistered_detail,
        devices=devices,
        topology=view.topology,
    )


def _freed(
    device: DeviceView, amounts: list[int], replicas: set[int], instances: Sequence[MigInstance], whole_freed: bool
) -> DeviceView:
    # The constructor, not dataclasses.replace: this runs for every set the search tries.
    in_use, free_memory = device.mig_in_use, device.mig_free_memory
    if device.mig is not None and instances:
        # The victims' instances go: what is left decides the geometries the card can still take (core/mig.py).
        left = list(device.mig_in_use)
        for instance in instances:
            if instance in left:
                left.remove(instance)
        in_use = tuple(left)
        free_memory = 0 if device.mig_foreign else device.mig.max_free_memory(in_use)
    return DeviceView(
        uuid=device.uuid,
        index=device.index,
        type=device.type,
        mode=device.mode,
        numa=device.numa,
        healthy=device.healthy,
        cordoned=device.cordoned,
        count=device.count,
        total_mem=device.total_mem,
        total_cores=device.total_cores,
        used=max(device.used - amounts[0], 0),
        used_mem=max(device.used_mem - amounts[1], 0),
        used_cores=max(device.used_cores - amounts[2], 0),
        replicas_held=device.replicas_held - replicas,
        # A card is exclusive while a hold charges it whole (a mutex pod, state.py); that hold is one of the victims
        # or it stays.
        exclusive=device.exclusive and not whole_freed,
        mig=device.mig,
        mig_in_use=in_use,
        mig_free_memory=free_memory,
        mig_foreign=device.mig_foreign,
    )


def preference(victims: Sequence[Candidate]) -> tuple[int, int, int, int, tuple[str, ...]]:
    """Smaller is better: fewest victims, lowest highest priority, lowest priority sum, least memory, UIDs."""
    priorities = [v.priority or 0 for v in victims]
    return (
        len(victims),
        max(priorities, default=0),
        sum(priorities),
        sum(v.memory for v in victims),
        tuple(sorted(v.uid for v in victims)),
    )


def ordered(victims: Iterable[Candidate]) -> tuple[str, ...]:
    """UIDs by priority, highest first (kube-scheduler reads the first victim as the node's highest)."""
    return tuple(v.uid for v in sorted(victims, key=lambda v: (-(v.priority or 0), v.uid)))


def select_victims(
    *,
    view: NodeView,
    request: PodRequest,
    preemptor_priority: int,
    proposed: Sequence[str],
    held: Sequence[Candidate],
    budget: int = DEFAULT_BUDGET,
) -> NodeDecision:
    """The victims to propose on ``view``'s node (module docstring). ``proposed``: kube-scheduler's victim UIDs
    for the node (untrusted); ``held``: the holds we count on the node."""
    if fit_pod(view, request).grants is not None:
        # Not ours to narrow: kube-scheduler wants these for its in-tree filters. Never a pod we know outranks.
        outranking = {c.uid for c in held if c.priority is not None and c.priority >= preemptor_priority}
        kept = tuple(dict.fromkeys(uid for uid in proposed if uid not in outranking))
        return NodeDecision(
            node=view.name,
            victims=kept or None,
            outcome=Outcome.PASSED_THROUGH if kept else Outcome.NO_VICTIM,
        )
    eligible = [c for c in held if c.priority is not None and c.priority < preemptor_priority]
    proposed_set = set(proposed)
    narrow = [c for c in eligible if c.uid in proposed_set]
    checks = 1
    if narrow and fits_without(view, request, narrow):
        pool, outcome = narrow, Outcome.NARROWED
    else:
        checks += 1
        if not eligible or not fits_without(view, request, eligible):
            return NodeDecision(node=view.name, victims=None, outcome=Outcome.NO_FIT, checks=checks)
        pool, outcome = eligible, Outcome.WIDENED
    pool, spent = _relevant(view, request, pool)
    checks += spent
    found, spent = _minimal(view, request, pool, budget)
    checks += spent
    if found is None:
        found, spent = _greedy(view, request, pool)
        checks += spent
        outcome = Outcome.GREEDY
    return NodeDecision(node=view.name, victims=ordered(found), outcome=outcome, checks=checks)


def _relevant(view: NodeView, request: PodRequest, pool: Sequence[Candidate]) -> tuple[list[Candidate], int]:
    """The pool less the pods that cannot be in a minimal set, and the fit checks spent. When one container needs
    GPUs the fit is "enough usable cards" and each card is judged alone, monotonically in its usage: a pod whose
    cards are all usable already, or stay unusable even without the whole pool, changes no card's verdict."""
    needing = [n for n in request.needs if n.count > 0]
    if len(needing) != 1 or len(pool) <= SMALL_POOL:
        return list(pool), 0  # (a small pool is searched faster than pruned)
    one = PodRequest(needs=(dataclasses.replace(needing[0], count=1),), init_containers=0, options=request.options)

    def usable(device: DeviceView) -> bool:
        alone = NodeView.build(name=view.name, registered=view.registered, devices=(device,))
        return fit_pod(alone, one).grants is not None

    rescued = without(view, pool)
    helpful = {
        now.uuid for now, after in zip(view.devices, rescued.devices, strict=True) if not usable(now) and usable(after)
    }
    return [c for c in pool if not helpful.isdisjoint(c.usage)], 2 * len(view.devices)


def _single_card(request: PodRequest) -> bool:
    needing = [n for n in request.needs if n.count > 0]
    return len(needing) == 1 and needing[0].count == 1


def _minimal(
    view: NodeView, request: PodRequest, pool: Sequence[Candidate], budget: int
) -> tuple[tuple[Candidate, ...] | None, int]:
    """The best set by :func:`preference` among the smallest that fit (``pool`` fits as a whole), or ``None``
    once ``budget`` checks are spent."""
    pool = sorted(pool, key=lambda c: c.uid)
    if _single_card(request):
        # One card: a victim elsewhere frees nothing it can use, so each card's pods are tried apart.
        groups = [[c for c in pool if uuid in c.usage] for uuid in dict.fromkeys(d.uuid for d in view.devices)]
        groups = [g for g in groups if g]
    else:
        groups = [list(pool)]
    checks = 0
    for size in range(1, len(pool) + 1):
        best: tuple[Candidate, ...] | None = None
        seen: set[frozenset[str]] = set()
        for group in groups:
            for combo in itertools.combinations(group, size):
                key = frozenset(c.uid for c in combo)
                if key in seen:
                    continue  # a multi-card pod puts the same set in two groups
                seen.add(key)
                if best is not None and preference(combo) >= preference(best):
                    continue  # cannot win, no need to fit it
                checks += 1
                if checks > budget:
                    return None, checks
                if fits_without(view, request, combo):
                    best = combo
        if best is not None:
            return best, checks
    return None, checks  # unreachable while the whole pool fits


def _greedy(view: NodeView, request: PodRequest, pool: Sequence[Candidate]) -> tuple[tuple[Candidate, ...], int]:
    """Take pods, lowest priority and most memory first, until the preemptor fits; then give back every victim
    (highest priority first) it still fits without: an irreducible set."""
    taken: list[Candidate] = []
    checks = 0
    for candidate in sorted(pool, key=lambda c: (c.priority or 0, -c.memory, c.uid)):
        taken.append(candidate)
        checks += 1
        if fits_without(view, request, taken):
            break
    for candidate in sorted(taken, key=lambda c: (-(c.priority or 0), c.memory, c.uid)):
        rest = [c for c in taken if c is not candidate]
        checks += 1
        if rest and fits_without(view, request, rest):
            taken = rest
    return tuple(taken), checks
