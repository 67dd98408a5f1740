"""The usage cache: node inventories and pod holds, kept current by watch events and reservations.

The one place GPU capacity is taken. No method awaits, so each call is atomic in the event loop: a bind
fits and reserves in one call (:meth:`ClusterState.reserve_fit`), and two pods can never get more of a
card than it has, however many requests are in flight.

Holds are keyed by pod UID. A reservation is *assumed* until the pod watch shows the pod bound with its
allocation annotations; an event without them does not drop it (it may predate our Binding). The first
placement the watch confirms is pinned: a later change is tampering, reported through ``on_ignored``.
Holds end when the pod is deleted or terminates, on :meth:`unreserve`, or when an assumed hold is not
confirmed within the TTL. At most ``max_assumed`` holds await confirmation: when full, holds past the TTL
expire at once, else a reservation is refused (:class:`PendingHoldsFull`) rather than evicting a younger
hold whose Binding may have been written. Views are rebuilt lazily, per changed node, on the next read.

MIG cards: the geometries of each (model, migProfiles) pair are laid out once (``core.mig.MigCard``, cached
here per pair); a view carries the instances the holds name, rebuilt like all usage from the pods'
annotations after a restart, so the card's current geometry is always the one its instances imply.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from hami_shared.mig import DEFAULT_KNOWN_GEOMETRIES, ModelGeometries, geometries_for_type
from hami_shared.node_register import DeviceInfo, MigProfile
from hami_shared.pod_devices import slot_id

from hami_scheduler_extender.core.fit import NodeFit, fit_pod
from hami_scheduler_extender.core.mig import MigCard, MigInstance
from hami_scheduler_extender.core.model import (
    MODE_MIG,
    DeviceUsage,
    DeviceView,
    NodeView,
    PodAllocation,
    PodGrants,
    Policy,
    runs_alone,
)
from hami_scheduler_extender.core.objects import Ignored, NodeInventory
from hami_scheduler_extender.core.quota import Demand, QuotaLedger, grants_demand
from hami_scheduler_extender.core.request import PodRequest
from hami_scheduler_extender.core.table import DeviceTable
from hami_scheduler_extender.core.topology import BestSets, Matrix, NodeLinks, scaled_scores

MAX_INTERNED_LINKS = 4096
"""Distinct interconnect matrices kept for sharing (a real cluster has a few machine types)."""
MAX_SET_SCORES = 16384
"""Best-set scores kept by (machine, fitting cards, k) for the node score."""
MAX_MASK_CARDS = 62
"""Cards per node the table's fit masks (int64 bits) can describe; wider nodes take fit_pod per node."""

DEFAULT_MAX_ASSUMED = 10_000
DEFAULT_ASSUME_TTL = 300.0

IgnoredHook = Callable[[PodAllocation, Ignored, str], None]
"""Told when part of a hold counts for nothing: the allocation, why, and a detail for the log."""


class PendingHoldsFull(Exception):
    """Too many reservations await confirmation by the pod watch; the message says what to check."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Hold:
    allocation: PodAllocation
    usage: Mapping[str, DeviceUsage]
    demand: Demand  # what it counts against its namespace's quota (quota.py)
    mig: Mapping[str, tuple[MigInstance, ...]]


class ClusterState:
    """Mutable cache of inventories and holds (one event loop only); hands out immutable :class:`NodeView`."""

    def __init__(
        self,
        *,
        max_assumed: int = DEFAULT_MAX_ASSUMED,
        assume_ttl: float = DEFAULT_ASSUME_TTL,
        on_ignored: IgnoredHook = lambda allocation, reason, detail: None,
        quotas: QuotaLedger | None = None,
        known_geometries: Sequence[ModelGeometries] = DEFAULT_KNOWN_GEOMETRIES,
    ) -> None:
        # Told of every hold that starts or ends, so quota usage is always the sum of the holds.
        self.quotas = quotas if quotas is not None else QuotaLedger()
        self._known_geometries = tuple(known_geometries)
        self._mig_cards: dict[tuple[str, tuple[MigProfile, ...]], MigCard] = {}
        self._max_assumed = max_assumed
        self._assume_ttl = assume_ttl
        self._on_ignored = on_ignored
        self._assumed: dict[str, None] = {}  # UIDs of assumed holds, oldest reservation first
        self._unknown_reported: set[str] = set()
        self._inventories: dict[str, NodeInventory] = {}
        self._holds: dict[str, _Hold] = {}
        self._by_node: dict[str, set[str]] = {}
        self._views: dict[str, NodeView] = {}
        self._dirty: set[str] = set()
        self._table = DeviceTable()
        self._topology_ignored: set[str] = set()  # nodes whose topology annotation is malformed
        self._links: dict[Matrix, NodeLinks] = {}
        self._set_scores: dict[tuple[int, int, int], tuple[NodeLinks, int | None]] = {}
        self.best_sets = BestSets()  # topology-aware choices, shared by bind and prioritize (core.topology)

    # --- nodes ------------------------------------------------------------------------------
    def upsert_node(self, inventory: NodeInventory) -> None:
        if self._inventories.get(inventory.name) == inventory:
            return
        if inventory.topology is not None:
            # Identical machines share one NodeLinks object: the node score's cache keys by it (identity).
            if len(self._links) >= MAX_INTERNED_LINKS:
                self._links.clear()
            links = self._links.setdefault(inventory.topology.matrix, inventory.topology)
            inventory = dataclasses.replace(inventory, topology=links)
        self._inventories[inventory.name] = inventory
        self._dirty.add(inventory.name)
        if inventory.topology_error:
            self._topology_ignored.add(inventory.name)
        else:
            self._topology_ignored.discard(inventory.name)

    def delete_node(self, name: str) -> None:
        self._inventories.pop(name, None)
        self._topology_ignored.discard(name)
        self._views.pop(name, None)
        self._dirty.discard(name)
        self._table.remove(name)

    def replace_nodes(self, inventories: Iterable[NodeInventory]) -> None:
        """After a (re-)list: the given nodes are all there is."""
        fresh = {inv.name: inv for inv in inventories}
        for name in list(self._inventories):
            if name not in fresh:
                self.delete_node(name)
        for inventory in fresh.values():
            self.upsert_node(inventory)

    def node_names(self) -> Iterator[str]:
        return iter(self._inventories)

    def view(self, name: str) -> NodeView | None:
        """The node as it is now, or ``None`` if unknown."""
        if name in self._dirty:
            self._dirty.discard(name)
            inventory = self._inventories.get(name)
            if inventory is None:
                self._views.pop(name, None)
                return None
            self._views[name] = self._build_view(inventory)
        view = self._views.get(name)
        if view is None and name in self._inventories:
            view = self._views[name] = self._build_view(self._inventories[name])
        return view

    def refresh(self) -> None:
        """Rebuild every node changed since the last read (views and table rows)."""
        for name in list(self._dirty):
            self.view(name)

    def screen(
        self, names: Sequence[str], request: PodRequest
    ) -> tuple[list[str], dict[str, str], Counter[str]] | None:
        """Vectorised filter over ``names`` (see ``table.py``), or ``None`` if the request needs fit_pod."""
        if not DeviceTable.supports(request):
            return None
        self.refresh()
        return self._table.screen(names, request, self._inventories)

    def priorities(self, names: Sequence[str], policy: Policy) -> list[int]:
        """node_priority for each name, from the table."""
        self.refresh()
        return self._table.priorities(names, policy)

    def topology_ignored(self) -> int:
        """Nodes whose topology annotation is malformed now (placed as if they published none)."""
        return len(self._topology_ignored)

    def topology_priorities(self, names: Sequence[str], request: PodRequest) -> list[int] | None:
        """For a ``topology-aware`` pod asking for several cards in one container: per name, the interconnect
        score of the set it would get there, scaled 0..10 (core.topology); None for any other pod (the usage
        score decides)."""
        if not request.options.topology_aware or not any(n.count > 1 for n in request.needs):
            return None
        self.refresh()
        set_scores: list[int | None] = []
        if DeviceTable.supports(request) and self._table.width <= MAX_MASK_CARDS:
            # One GPU container: the best set's score depends only on which cards fit, not on their order, so
            # the table's fit (vectorised, as filter's) and the cache answer without a fit per node.
            k = next(n.count for n in request.needs if n.count > 0)
            for name, mask in zip(names, self._table.fit_masks(names, request), strict=True):
                inventory = self._inventories.get(name)
                links = inventory.topology if inventory is not None else None
                if links is None or mask is None or mask.bit_count() < k:
                    set_scores.append(None)
                    continue
                key = (id(links), mask, k)
                known = self._set_scores.get(key)
                if known is None or known[0] is not links:  # the entry holds links, so its id is not reused
                    positions = [i for i in range(mask.bit_length()) if mask >> i & 1]
                    picked = self.best_sets.choose(links, positions, k)
                    if len(self._set_scores) >= MAX_SET_SCORES:
                        self._set_scores.clear()
                    known = self._set_scores[key] = (links, picked[1] if picked is not None else None)
                set_scores.append(known[1])
            return scaled_scores(set_scores)
        for name in names:
            view = self.view(name)
            fit = fit_pod(view, request, best_sets=self.best_sets) if view is not None and view.topology else None
            set_scores.append(fit.topology_score if fit is not None and fit.grants is not None else None)
        return scaled_scores(set_scores)

    def largest_card_mem(self) -> int:
        """An upper bound of the memory (MiB) of any card a pod could get (from the table, refreshed)."""
        self.refresh()
        return self._table.largest_card_mem()

    def card_mem_range(self, names: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
        """The known ``names`` with the memory of their smallest and largest card (from the table, refreshed)."""
        self.refresh()
        return self._table.card_mem_range(names)

    def mig_card(self, device: DeviceInfo) -> MigCard:
        """The geometries and layouts of a MIG-mode card (built once per model and profile list)."""
        key = (device.type, device.mig_profiles)
        card = self._mig_cards.get(key)
        if card is None:
            card = self._mig_cards[key] = MigCard.build(
                geometries_for_type(device.type, self._known_geometries), device.mig_profiles
            )
        return card

    def _mig_device(self, device: DeviceView, card: MigCard, in_use: list[MigInstance], foreign: bool) -> DeviceView:
        """The view of a MIG card: instances in use, what it can still give, usage counted in instances."""
        instances = tuple(sorted(in_use))
        slices = sum(m.size for m in instances)
        cores = device.total_cores * slices // card.total_slices if card.total_slices else 0
        return dataclasses.replace(
            device,
            mig=card,
            mig_in_use=instances,
            mig_foreign=foreign,
            mig_free_memory=0 if foreign else card.max_free_memory(instances),
            used_cores=min(cores, device.total_cores),
        )

    def _build_view(self, inventory: NodeInventory) -> NodeView:
        totals: dict[str, list[int]] = {d.id: [0, 0, 0] for d in inventory.devices}
        replicas: dict[str, set[int]] = {d.id: set() for d in inventory.devices}
        mig_in_use: dict[str, list[MigInstance]] = {d.id: [] for d in inventory.devices}
        foreign: set[str] = set()  # MIG cards a pod holds without an instance
        exclusive: set[str] = set()  # cards a mutex pod holds
        whole = {d.id: d.devmem for d in inventory.devices}
        for uid in self._by_node.get(inventory.name, ()):
            hold = self._holds[uid]
            if hold.allocation.exclusive:
                exclusive.update(hold.usage)
            # A mutex placement charges its cards whole (fit.py), and the charge is in the protected placement
            # annotation: a restarted extender reads the same exclusivity, whatever the pod's policy annotation
            # says now. Any placement holding a whole card leaves room for no one anyway.
            exclusive.update(u for u, usage in hold.usage.items() if 0 < whole.get(u, 0) <= usage.mem)
            for uuid, instances in hold.mig.items():
                if uuid in mig_in_use:
                    mig_in_use[uuid].extend(instances)
            for uuid in hold.usage.keys() - hold.mig.keys():
                foreign.add(uuid)
            for uuid, usage in hold.usage.items():
                acc = totals.get(uuid)
                if acc is None:
                    # A GPU the node does not register (gone, or never there): it counts nothing here;
                    # the pod's other GPUs still count, so a card leaving the inventory frees no one else's.
                    self._report_unknown(hold.allocation, uuid)
                    continue
                acc[0] += usage.slots
                acc[1] += usage.mem
                acc[2] += usage.cores
                replicas[uuid].update(usage.replicas)
        devices = tuple(
            DeviceView(
                uuid=d.id,
                index=d.index,
                type=d.type,
                mode=d.mode,
                numa=d.numa,
                healthy=d.health,
                cordoned=d.id in inventory.cordoned,
                count=d.count,
                total_mem=d.devmem,
                total_cores=d.devcore,
                used=totals[d.id][0],
                used_mem=totals[d.id][1],
                used_cores=totals[d.id][2],
                replicas_held=frozenset(replicas[d.id]),
                exclusive=d.id in exclusive,
            )
            for d in inventory.devices
        )
        devices = tuple(
            self._mig_device(v, self.mig_card(d), mig_in_use[d.id], d.id in foreign) if d.mode == MODE_MIG else v
            for v, d in zip(devices, inventory.devices, strict=True)
        )
        view = NodeView.build(
            name=inventory.name,
            registered=inventory.registered,
            unregistered_detail=inventory.detail,
            devices=devices,
            topology=inventory.topology,
        )
        self._table.put(view)
        return view

    # --- pods from the watch ------------------------------------------------------------------
    def apply_pod(self, uid: str, allocation: PodAllocation | None) -> None:
        """A pod event of a live pod: the hold its annotations show if they count. ``None`` changes nothing
        (an assumed hold waits for confirmation, a confirmed one stays pinned while the pod lives)."""
        if allocation is None:
            return
        current = self._holds.get(uid)
        if current is not None and current.allocation == allocation:
            if current.allocation.mig_realized != allocation.mig_realized:
                # The device plugin recorded the instances' runtime identity: same placement, same usage.
                kept = dataclasses.replace(current.allocation, mig_realized=allocation.mig_realized)
                self._holds[uid] = _Hold(kept, current.usage, current.demand, current.mig)
            return
        if current is not None and not current.allocation.assumed:
            self._on_ignored(
                current.allocation,
                Ignored.CHANGED_AFTER_BIND,
                f"the pod's placement annotations changed after binding; the first placement stays counted "
                f"(node {current.allocation.node})",
            )
            return
        if current is not None and dataclasses.replace(current.allocation, assumed=False, assumed_at=0.0) == allocation:
            # The watch confirms our reservation as it was: same usage, so the node's view stays valid.
            self._holds[uid] = _Hold(allocation, current.usage, current.demand, current.mig)
            self._assumed.pop(uid, None)
            return
        self._put(allocation)

    def delete_pod(self, uid: str) -> None:
        """The pod is gone or terminated: its hold ends, assumed or not."""
        self._drop(uid)

    def replace_pods(self, allocations: Mapping[str, PodAllocation], live: Iterable[str] | None = None) -> None:
        """After a (re-)list: ``allocations`` are the holds the listed pods show, ``live`` the UIDs of
        every listed pod that has not terminated (default: the keys of ``allocations``). Confirmed
        holds of pods no longer live end; a live pod keeps its pinned hold; assumed holds not in the
        list are kept (their Binding may be newer than the list) until confirmed, released or expired."""
        alive = set(allocations) if live is None else set(live) | set(allocations)
        for uid in list(self._holds):
            if uid not in alive and not self._holds[uid].allocation.assumed:
                self._drop(uid)
        for uid, allocation in allocations.items():
            self.apply_pod(uid, allocation)

    @contextlib.contextmanager
    def without_hold(self, uid: str) -> Iterator[None]:
        """Within the block, the pod's assumed hold does not count (a pod filtered again must not count
        against itself); it is restored afterwards, unchanged. Confirmed holds are left alone. Do not
        await inside the block."""
        hold = self._holds.get(uid)
        if hold is None or not hold.allocation.assumed:
            yield
            return
        self._drop(uid)
        try:
            yield
        finally:
            if uid not in self._holds:
                self._restore(hold)

    def allocation(self, uid: str) -> PodAllocation | None:
        hold = self._holds.get(uid)
        return hold.allocation if hold else None

    def allocations(self) -> Iterator[PodAllocation]:
        return (h.allocation for h in self._holds.values())

    def holds_on(self, node: str) -> list[tuple[PodAllocation, Mapping[str, DeviceUsage]]]:
        """The holds counted on ``node`` now, each with what it takes per GPU (preemption reads them)."""
        return [(self._holds[uid].allocation, self._holds[uid].usage) for uid in self._by_node.get(node, ())]

    def assumed_count(self) -> int:
        """How many holds await confirmation by the pod watch."""
        return len(self._assumed)

    def _put(self, allocation: PodAllocation) -> None:
        self._drop(allocation.uid)
        demand = grants_demand(
            allocation.grants, init_containers=allocation.init_containers, sidecars=allocation.sidecars
        )
        self._restore(_Hold(allocation, allocation.usage(), demand, allocation.mig_instances()))

    def _restore(self, hold: _Hold) -> None:
        uid = hold.allocation.uid
        self._holds[uid] = hold
        self.quotas.add(hold.allocation.namespace, hold.demand)
        if hold.allocation.assumed:
            self._assumed[uid] = None
        self._by_node.setdefault(hold.allocation.node, set()).add(uid)
        self._dirty.add(hold.allocation.node)

    def _report_unknown(self, allocation: PodAllocation, uuid: str) -> None:
        if allocation.uid in self._unknown_reported:
            return
        self._unknown_reported.add(allocation.uid)
        self._on_ignored(
            allocation,
            Ignored.UNKNOWN_DEVICE,
            f"GPU {uuid[:80]!r} is not registered by node {allocation.node[:253]!r}; it counts nothing there",
        )

    def _drop(self, uid: str) -> bool:
        hold = self._holds.pop(uid, None)
        self._assumed.pop(uid, None)
        self._unknown_reported.discard(uid)
        if hold is None:
            return False
        self.quotas.remove(hold.allocation.namespace, hold.demand)
        node = hold.allocation.node
        members = self._by_node.get(node)
        if members is not None:
            members.discard(uid)
            if not members:
                del self._by_node[node]
        self._dirty.add(node)
        return True

    # --- reservations (the one place capacity is taken) ------------------------------------------
    def reserve_fit(
        self, *, uid: str, namespace: str, name: str, node: str, request: PodRequest, now: float
    ) -> tuple[PodAllocation | None, NodeFit | None]:
        """Fit the pod on ``node`` as it is now and, if it fits, hold the GPUs and slots (replacing any earlier
        hold of the pod). Returns the assumed allocation, or ``None`` and the fit that says why not (``None``:
        unknown node). Raises :class:`PendingHoldsFull` (module docstring)."""
        if uid not in self._assumed and len(self._assumed) >= self._max_assumed:
            self.expire_assumed(now=now, ttl=self._assume_ttl)
            if len(self._assumed) >= self._max_assumed:
                raise PendingHoldsFull(
                    f"{len(self._assumed)} reservations await confirmation by the pod watch (the limit, "
                    f"max-pending-holds); none is older than {self._assume_ttl:g} s: is the pod watch behind or "
                    "are Bindings failing? retry later"
                )
        self._drop(uid)
        view = self.view(node)
        if view is None:
            return None, None
        fit = fit_pod(view, request, best_sets=self.best_sets)
        if fit.grants is None:
            return None, fit
        slots = choose_slots(view, fit.grants, init_containers=request.init_containers, sidecars=request.sidecars)
        allocation = PodAllocation(
            uid=uid,
            namespace=namespace,
            name=name,
            node=node,
            grants=fit.grants,
            slots=slots,
            init_containers=request.init_containers,
            sidecars=request.sidecars,
            assumed=True,
            assumed_at=now,
            exclusive=request.options.mutex,
        )
        self._put(allocation)
        return allocation, fit

    def unreserve(self, uid: str) -> bool:
        """Release the pod's hold; idempotent (False when there was none)."""
        return self._drop(uid)

    def expire_assumed(self, *, now: float, ttl: float) -> list[str]:
        """Drop assumed holds older than ``ttl`` seconds (the watch never confirmed them)."""
        stale = [uid for uid in self._assumed if now - self._holds[uid].allocation.assumed_at > ttl]
        for uid in stale:
            self._drop(uid)
        return stale


def choose_slots(
    view: NodeView, grants: PodGrants, *, init_containers: int = 0, sidecars: frozenset[int] = frozenset()
) -> tuple[tuple[str, ...], ...]:
    """Per container and granted GPU, a replica index no other live pod names (lowest first); when none is
    free, one the pod took on that card, a plain init container's first (it has ended when later containers
    start, and kubelet hands its device IDs on; ``model.runs_alone``)."""
    devices = {d.uuid: d for d in view.devices}
    taken: dict[str, set[int]] = {}
    reusable: dict[str, set[int]] = {}  # replicas of the pod's plain init containers
    out: list[tuple[str, ...]] = []
    for position, container in enumerate(grants):
        alone = runs_alone(position, init_containers=init_containers, sidecars=sidecars)
        picked: list[str] = []
        for grant in container:
            uuid = grant.uuid
            device = devices[uuid]
            mine = taken.setdefault(uuid, set())
            busy = device.replicas_held | mine
            replica = next((n for n in range(device.count) if n not in busy), None)
            if replica is None:
                handed_on = reusable.get(uuid, set())
                replica = min(handed_on) if handed_on else min(mine) if mine else 0
            mine.add(replica)
            if alone:
                reusable.setdefault(uuid, set()).add(replica)
            picked.append(slot_id(uuid, replica))
        out.append(tuple(picked))
    return tuple(out)
