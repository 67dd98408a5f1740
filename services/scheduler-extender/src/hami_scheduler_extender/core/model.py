"""Values the decision logic works on: GPUs with their usage, nodes with precomputed aggregates.

A :class:`NodeView` is immutable: the usage cache builds a new one when a pod on that node changes, so a
filter reading many views in one synchronous pass sees a consistent picture without copying anything.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Final

from hami_shared import node_register
from hami_shared.mig import MigAllocation
from hami_shared.pod_devices import split_slot_id

from hami_scheduler_extender.core.mig import MigCard, MigInstance
from hami_scheduler_extender.core.topology import NodeLinks


class FailureReason(enum.StrEnum):
    """HAMi's vocabulary for why a card or a node cannot take a container."""

    CARD_TYPE_MISMATCH = "CardTypeMismatch"
    CARD_UUID_MISMATCH = "CardUuidMismatch"
    CARD_TIME_SLICING_EXHAUSTED = "CardTimeSlicingExhausted"
    CARD_COMPUTE_UNITS_EXHAUSTED = "CardComputeUnitsExhausted"
    CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
    CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
    CARD_NOT_HEALTH = "CardNotHealth"
    CARD_CORDONED = "CardCordoned"
    NUMA_NOT_FIT = "NumaNotFit"
    EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT = "ExclusiveDeviceAllocateConflict"
    CARD_MIG_TOPOLOGY_INFEASIBLE = "CardMigTopologyInfeasible"
    """A MIG card offers no free instance of the requested memory in any geometry compatible with its
    instances in use (HAMi HEAD's code; ``core.mig``)."""
    NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
    ALLOCATED_CARDS_INSUFFICIENT_REQUEST = "AllocatedCardsInsufficientRequest"
    NODE_UNREGISTERED = "node unregistered"


class Policy(enum.StrEnum):
    """Node and GPU placement policies: pack onto busy ones, or spread onto idle ones."""

    BINPACK = "binpack"
    SPREAD = "spread"


MODE_HAMI_CORE: Final = node_register.MODE_HAMI_CORE
MODE_MIG: Final = node_register.MODE_MIG


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceView:
    """One physical GPU of a node and what live pods hold of it: ``count`` slots, ``total_mem`` MiB,
    ``total_cores`` percent (100 = a card; more when scaled), ``replicas_held`` slot indices pods name."""

    uuid: str
    index: int
    type: str
    mode: str
    numa: int
    healthy: bool
    cordoned: bool
    count: int
    total_mem: int
    total_cores: int
    used: int = 0
    used_mem: int = 0
    used_cores: int = 0
    replicas_held: frozenset[int] = frozenset()
    mig: MigCard | None = dataclasses.field(default=None, compare=False)
    mig_in_use: tuple[MigInstance, ...] = ()
    mig_free_memory: int = 0
    mig_foreign: bool = False
    exclusive: bool = False
    """A ``mutex`` pod holds this card: no other pod may be placed on it while that pod runs."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """A node as the filter sees it: ``registered`` is the liveness rule (``objects.node_inventory``; when
    false, ``unregistered_detail`` says why); the sums over all devices feed the node score (HAMi's)."""

    name: str
    registered: bool
    unregistered_detail: str = ""
    devices: tuple[DeviceView, ...] = ()
    sum_count: int = 0
    sum_used: int = 0
    sum_mem: int = 0
    sum_used_mem: int = 0
    sum_cores: int = 0
    sum_used_cores: int = 0
    # The cards' pair scores by position (core.topology), None when the node publishes none. Shared with the
    # inventory, never copied.
    topology: NodeLinks | None = None

    @staticmethod
    def build(
        *,
        name: str,
        registered: bool,
        unregistered_detail: str = "",
        devices: tuple[DeviceView, ...] = (),
        topology: NodeLinks | None = None,
    ) -> NodeView:
        """A view with its aggregates computed from ``devices``."""
        return NodeView(
            name=name,
            topology=topology,
            registered=registered,
            unregistered_detail=unregistered_detail,
            devices=devices,
            sum_count=sum(d.count for d in devices),
            sum_used=sum(d.used for d in devices),
            sum_mem=sum(d.total_mem for d in devices),
            sum_used_mem=sum(d.used_mem for d in devices),
            sum_cores=sum(d.total_cores for d in devices),
            sum_used_cores=sum(d.used_cores for d in devices),
        )

    @property
    def utilisation(self) -> float:
        """HAMi's node score before placing a pod: slot, core and memory ratios summed (0..3)."""
        total = 0.0
        if self.sum_count:
            total += self.sum_used / self.sum_count
        if self.sum_cores:
            total += self.sum_used_cores / self.sum_cores
        if self.sum_mem:
            total += self.sum_used_mem / self.sum_mem
        return total


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceGrant:
    """One GPU slice given to one container (what goes into the HAMi device list); on a MIG card ``mig`` is the
    instance reserved for it (``hami.io/vgpu-mig-allocations``), ``usedmem`` its profile memory."""

    uuid: str
    usedmem: int
    usedcores: int
    mig: MigInstance | None = None


ContainerGrants = tuple[DeviceGrant, ...]
PodGrants = tuple[ContainerGrants, ...]
"""Per container, init containers first, the GPUs it gets (empty for containers without GPUs)."""


def runs_alone(position: int, *, init_containers: int, sidecars: frozenset[int]) -> bool:
    """Whether the container at ``position`` (init containers first) is a plain init container, which (KEP-753,
    kubelet device manager) runs to completion beside only the sidecars before it, its devices free again
    after it; a sidecar (``restartPolicy: Always``) or app container keeps running, so what it holds adds up."""
    return position < init_containers and position not in sidecars


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceUsage:
    """What one pod holds of one GPU: slots, MiB, cores, and the replica indices it names."""

    slots: int
    mem: int
    cores: int
    replicas: frozenset[int] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PodAllocation:
    """A pod's hold on a node's GPUs, from its annotations or our own reservation: ``grants`` one entry per
    container (init first; ``init_containers``, ``sidecars`` from the pod spec); ``assumed``: our reservation,
    not yet confirmed by the pod watch; ``priority``: the pod's, when known."""

    uid: str
    namespace: str
    name: str
    node: str
    grants: PodGrants
    slots: tuple[tuple[str, ...], ...] = ()
    init_containers: int = 0
    sidecars: frozenset[int] = frozenset()
    assumed: bool = False
    assumed_at: float = 0.0
    # The device plugin adds each instance's runtime identity (MIG UUID, GI and CI IDs) after binding: it does not
    # change the placement, so it takes no part in comparing placements (a confirmed one stays pinned).
    mig_realized: tuple[MigAllocation, ...] = dataclasses.field(default=(), compare=False)

    def mig_instances(self) -> Mapping[str, tuple[MigInstance, ...]]:
        """Per GPU, the MIG instances the pod holds: every container's, init containers included (an instance
        lives until the device plugin sees the pod gone, so they all count for the pod's whole life)."""
        out: dict[str, list[MigInstance]] = {}
        for container in self.grants:
            for grant in container:
                if grant.mig is not None:
                    out.setdefault(grant.uuid, []).append(grant.mig)
        return {uuid: tuple(instances) for uuid, instances in out.items()}

    # The pod's spec.priority as the pod watch shows it (None: not known, e.g. our own reservation before the
    # watch confirms it). Immutable on a pod, so it takes no part in comparing holds. Read by preemption only.
    priority: int | None = dataclasses.field(default=None, compare=False)
    # Our own reservation of a ``mutex`` pod (its cards take no other pod while it holds them). Not compared: a
    # bound pod's exclusivity comes from what its placement charges (a whole card, state.py), which the watch reads
    # from the protected placement annotation; the pod's hami.io/gpu-scheduler-policy is tenant-writable after
    # creation and the operator's default chain is not on the pod, so neither may decide it.
    exclusive: bool = dataclasses.field(default=False, compare=False)

    def usage(self) -> Mapping[str, DeviceUsage]:
        """Per GPU, what the pod holds at its peak: the larger of each plain init container with the sidecars
        before it, and all sidecars and app containers (:func:`runs_alone`). Replica indices are the union."""
        running: dict[str, list[int]] = {}  # sidecars and app containers started so far
        peak: dict[str, list[int]] = {}  # the largest plain init container with the sidecars beside it
        for position, container in enumerate(self.grants):
            per_container: dict[str, list[int]] = {}
            for grant in container:
                acc = per_container.setdefault(grant.uuid, [0, 0, 0])
                acc[0] += 1
                acc[1] += grant.usedmem
                acc[2] += grant.usedcores
            alone = runs_alone(position, init_containers=self.init_containers, sidecars=self.sidecars)
            for uuid, amounts in per_container.items():
                beside = running.setdefault(uuid, [0, 0, 0])
                if alone:
                    top = peak.setdefault(uuid, [0, 0, 0])
                    for k in range(3):
                        top[k] = max(top[k], beside[k] + amounts[k])
                else:
                    for k in range(3):
                        beside[k] += amounts[k]
        replicas: dict[str, set[int]] = {}
        for container_slots in self.slots:
            for slot in container_slots:
                try:
                    uuid, replica = split_slot_id(slot)
                except ValueError:
                    continue
                replicas.setdefault(uuid, set()).add(replica)
        out: dict[str, DeviceUsage] = {}
        for uuid, steady in running.items():
            top = peak.get(uuid, [0, 0, 0])
            out[uuid] = DeviceUsage(
                slots=max(top[0], steady[0]),
                mem=max(top[1], steady[1]),
                cores=max(top[2], steady[2]),
                replicas=frozenset(replicas.get(uuid, ())),
            )
        return out
