"""Dynamic MIG decisions (``operatingmode: mig``): which instances to adopt, create and destroy, and what to register.

Pure functions over values: the pods bound to this node (their ``hami.io/vgpu-mig-allocations`` reservations, written
by the scheduler extender), the instances NVML lists and the profiles each card offers. app/mig.py carries them out
through the :class:`~hami_device_plugin.adapters.nvml_mig.MigDriver` port.

Ownership. An instance belongs to the live pod whose reservation names its card, profile and placement (start and
size in memory slices): runtime IDs are not part of the match, so an instance survives a plugin restart and is still
recognised, and an instance created by an Allocate whose patch never landed is adopted by the retry. A pod is live
while it is bound to this node and not terminal (a pod being deleted still runs its containers). The rules:

* never destroy an instance a live pod's reservation matches;
* never change MIG mode on a busy card (one a live pod uses other than through MIG reservations: turning MIG mode
  on under a card's MIG reservations is what they need, and a card with instances cannot change mode anyway);
* a live pod whose annotations cannot be read (or that the cache could not read at all) protects every instance of
  the cards it may use (all cards when its devices are unknown): what it holds is unknown, so nothing that might be
  it is touched;
* when the pods cannot be read at all, nothing is touched (HAMi's startup rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from hami_shared import names
from hami_shared.mig import MigAllocation, ModelGeometries
from hami_shared.node_register import MODE_MIG, DeviceInfo, MigProfile, model_type_name
from hami_shared.pod_devices import ContainerDevice

from hami_device_plugin.core.allocation import (
    DEVICE_LIST_MOUNT_ROOT,
    DEVICE_LIST_VOLUME_MOUNTS,
    ContainerAllocation,
    device_list_mounts,
)
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu, usable_gpus
from hami_device_plugin.core.mig_device import GpuInstanceProfile, MigInstance
from hami_device_plugin.core.pods import PodRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """Who a reservation is for: a pod's container (index over init then regular containers) and device."""

    pod_uid: str
    pod: str  # namespace/name
    container_index: int
    device_index: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reserved:
    owner: Owner
    allocation: MigAllocation


@dataclasses.dataclass(frozen=True, slots=True)
class LivePods:
    """What the live pods of the node hold, as far as the MIG decisions need it."""

    reservations: tuple[Reserved, ...] = ()
    busy: frozenset[str] = frozenset()
    """Cards a live pod uses other than through MIG reservations (shared by hamicore, or unknown): their MIG mode
    is never changed."""
    protected: frozenset[str] = frozenset()
    """Cards a live pod with unreadable annotations may use: their instances are never destroyed."""
    protect_all: bool = False
    """A live pod with unreadable annotations and no readable device list: every card is protected and busy."""

    def is_busy(self, uuid: str) -> bool:
        return self.protect_all or uuid in self.busy

    def is_protected(self, uuid: str) -> bool:
        return self.protect_all or uuid in self.protected

    def owner_of(self, instance: MigInstance) -> Owner | None:
        for r in self.reservations:
            if matches(instance, r.allocation):
                return r.owner
        return None


def is_live(pod: PodRecord, node: str) -> bool:
    """Bound to ``node`` and not terminal; a pod the cache could not read at all (no node known) counts as live."""
    return (pod.node == node or (not pod.node and pod.problem is not None)) and not pod.terminal


def _unknown(pod: PodRecord) -> bool:
    """What the pod holds cannot be told: its reservations are unreadable, or the pod is and shows none."""
    return pod.mig_problem is not None or (pod.problem is not None and not pod.mig_allocations)


def live_pods(pods: Iterable[PodRecord], node: str) -> LivePods:
    reservations: list[Reserved] = []
    busy: set[str] = set()
    protected: set[str] = set()
    protect_all = False
    for pod in pods:
        if not is_live(pod, node):
            continue
        held = {d.uuid for entry in (*pod.allocated, *pod.to_allocate) for d in entry}
        if _unknown(pod):
            busy |= held
            if held:
                protected |= held
            else:
                protect_all = True
            continue
        # A card held through a MIG reservation only needs MIG mode: it is not busy for turning MIG mode on.
        busy |= held - {a.gpu_uuid for a in pod.mig_allocations}
        for a in pod.mig_allocations:
            reservations.append(Reserved(Owner(pod.uid, pod.key, a.container_index, a.device_index), a))
    return LivePods(tuple(reservations), frozenset(busy), frozenset(protected), protect_all)


def matches(instance: MigInstance, allocation: MigAllocation) -> bool:
    """The instance is the one the reservation asks for: same card, profile and placement."""
    return (
        instance.parent_uuid == allocation.gpu_uuid
        and instance.profile == allocation.profile
        and instance.start == allocation.start
        and instance.size == allocation.size
    )


def overlaps(start_a: int, size_a: int, start_b: int, size_b: int) -> bool:
    return start_a < start_b + size_b and start_b < start_a + size_a


# --- startup ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Card:
    """A MIG-capable card as NVML shows it now."""

    uuid: str
    mig_enabled: bool
    instances: tuple[MigInstance, ...] = ()
    mig_pending: bool = False
    """MIG mode was asked for and waits for a GPU reset: not asked again."""


@dataclasses.dataclass(frozen=True, slots=True)
class StartupPlan:
    enable_mig: tuple[str, ...] = ()
    """Idle cards whose MIG mode is off."""
    destroy: tuple[MigInstance, ...] = ()
    """Instances no live reservation matches, on cards not protected."""
    adopt: tuple[tuple[MigInstance, Owner], ...] = ()
    """Instances of live pods: managed from now on."""


def startup_plan(cards: Sequence[Card], pods: Iterable[PodRecord] | None, node: str) -> StartupPlan:
    """What the plugin does at start on a node in MIG mode; ``pods`` None: they cannot be read, touch nothing."""
    if pods is None:
        return StartupPlan()
    live = live_pods(pods, node)
    enable: list[str] = []
    destroy: list[MigInstance] = []
    adopt: list[tuple[MigInstance, Owner]] = []
    for card in cards:
        if not card.mig_enabled and not card.mig_pending and not live.is_busy(card.uuid):
            enable.append(card.uuid)
        for instance in card.instances:
            owner = live.owner_of(instance)
            if owner is not None:
                adopt.append((instance, owner))
            elif not live.is_protected(card.uuid):
                destroy.append(instance)
    return StartupPlan(tuple(enable), tuple(destroy), tuple(adopt))


# --- reconciliation ----------------------------------------------------------------------------------------------


def reconcile_plan(
    instances: Iterable[MigInstance], pods: Iterable[PodRecord], node: str, managed: frozenset[tuple[str, int]]
) -> tuple[MigInstance, ...]:
    """Managed instances (``(parent UUID, GPU instance ID)`` the plugin created or adopted) that no live pod
    reserves any more: to destroy. Instances the plugin does not manage (made by hand since it started) are left."""
    live = live_pods(pods, node)
    return tuple(
        i
        for i in instances
        if (i.parent_uuid, i.gpu_instance_id) in managed
        and live.owner_of(i) is None
        and not live.is_protected(i.parent_uuid)
    )


# --- Allocate ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Adopt:
    """The instance exists already at the reserved placement (a retried Allocate, a restart): use it."""

    instance: MigInstance


@dataclasses.dataclass(frozen=True, slots=True)
class Create:
    """Create ``profile`` at ``start``, after destroying ``clear`` (leftovers overlapping the placement that no live
    reservation holds)."""

    profile: GpuInstanceProfile
    start: int
    clear: tuple[MigInstance, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


def realize(
    allocation: MigAllocation,
    profiles: Sequence[GpuInstanceProfile],
    instances: Sequence[MigInstance],
    others: LivePods,
) -> Adopt | Create | Refuse:
    """How to give a container the instance ``allocation`` reserves; ``others`` are the live pods' holdings."""
    gpu = allocation.gpu_uuid
    profile = next((p for p in profiles if p.name == allocation.profile), None)
    if profile is None:
        offered = ", ".join(sorted(p.name for p in profiles)) or "none (is MIG mode on?)"
        return Refuse(f"GPU {gpu} offers no MIG profile {allocation.profile!r} (it offers: {offered})")
    if not any(p.start == allocation.start and p.size == allocation.size for p in profile.placements):
        legal = ", ".join(f"{p.start}+{p.size}" for p in profile.placements)
        return Refuse(
            f"placement {allocation.start}+{allocation.size} is not a legal placement of {profile.name} on GPU "
            f"{gpu} (legal: {legal})"
        )
    clear: list[MigInstance] = []
    for instance in instances:
        if instance.parent_uuid != gpu:
            continue
        if matches(instance, allocation):
            return Adopt(instance)
        if not overlaps(instance.start, instance.size, allocation.start, allocation.size):
            continue
        owner = others.owner_of(instance)
        if owner is not None:
            return Refuse(
                f"the reserved placement {allocation.start}+{allocation.size} of GPU {gpu} overlaps instance "
                f"{instance.profile} at {instance.start}+{instance.size} of pod {owner.pod}"
            )
        if others.is_protected(gpu):
            return Refuse(
                f"the reserved placement {allocation.start}+{allocation.size} of GPU {gpu} overlaps instance "
                f"{instance.profile} at {instance.start}+{instance.size}, which a pod with unreadable annotations "
                "may hold"
            )
        clear.append(instance)
    return Create(profile, allocation.start, tuple(clear))


# --- inventory ---------------------------------------------------------------------------------------------------


def allowed_profiles(
    gpu_name: str, profiles: Sequence[GpuInstanceProfile], geometries: Sequence[ModelGeometries] | None
) -> tuple[GpuInstanceProfile, ...]:
    """The profiles the register offers: those the card's ``knownMigGeometries`` entry names (its first entry whose
    model name is part of the card's name), or all of them without geometries or without an entry for the model."""
    if geometries:
        for entry in geometries:
            if any(model in gpu_name for model in entry.models):
                names = {e.name for geometry in entry.geometries for e in geometry}
                return tuple(p for p in profiles if p.name in names)
    return tuple(profiles)


def mig_register_record(gpu: Gpu, profiles: Sequence[GpuInstanceProfile]) -> DeviceInfo:
    """The card in HAMi's MIG register terms: count = most instances any allowed profile fits, devmem = the card's
    memory (no scaling), devcore = 100, ``migProfiles`` with their legal placements."""
    most_slices = max((p.slice_count for p in profiles), default=0)
    return DeviceInfo(
        id=gpu.uuid,
        index=gpu.index,
        count=max((p.instance_count for p in profiles), default=0),
        devmem=gpu.memory_mib or 0,
        devcore=100,
        type=model_type_name(gpu.name),
        numa=max(gpu.numa, 0),
        mode=MODE_MIG,
        mig_profiles=tuple(
            MigProfile(
                name=p.name,
                memory_mb=p.memory_mib,
                core=(100 * p.slice_count) // most_slices if most_slices else 0,
                slice_count=p.slice_count,
                placements=p.placements,
            )
            for p in profiles
        ),
        health=gpu.healthy,
    )


def mig_register_devices(
    gpus: Iterable[Gpu], config: DeviceConfig, mig: Mapping[str, Sequence[GpuInstanceProfile]]
) -> tuple[DeviceInfo, ...]:
    """The register of a node in MIG mode (``mig``: UUID -> allowed profiles). A card whose profiles are not known
    (not MIG-capable, or MIG mode waiting for a GPU reset) is registered with count 0, so nothing is placed on it."""
    out = []
    for gpu in usable_gpus(gpus, config):
        record = mig_register_record(gpu, mig.get(gpu.uuid, ()))
        out.append(record if gpu.uuid in mig else dataclasses.replace(record, count=0))
    return tuple(out)


# --- the answer to kubelet ---------------------------------------------------------------------------------------


def mig_container_allocation(
    base: ContainerAllocation,
    instances: Sequence[MigInstance],
    *,
    with_hamicore: bool,
    strategies: frozenset[str],
) -> ContainerAllocation:
    """The container's answer in MIG mode from the hami-core one (``base``): the MIG devices' UUIDs instead of the
    parent GPUs'. The instance is isolated by the hardware, so by default nothing of hamicore (no libvgpu preload, no
    limits, no region or spec); ``with_hamicore`` (the operator's ``--mig-with-hamicore``) keeps it all."""
    uuids = [i.mig_uuid for i in instances]
    devices = tuple(
        ContainerDevice(uuid=u, usedmem=i.memory_mib, usedcores=100) for u, i in zip(uuids, instances, strict=True)
    )
    volume = DEVICE_LIST_VOLUME_MOUNTS in strategies
    visible = DEVICE_LIST_MOUNT_ROOT if volume else ",".join(uuids)
    listed = tuple(device_list_mounts(devices)) if volume else ()
    if with_hamicore:
        others = tuple(m for m in base.mounts if not m.container_path.startswith(DEVICE_LIST_MOUNT_ROOT + "/"))
        return dataclasses.replace(base, envs={**base.envs, names.ENV_VISIBLE_DEVICES: visible}, mounts=listed + others)
    return ContainerAllocation(
        envs={names.ENV_VISIBLE_DEVICES: visible},
        mounts=listed,
        cache_dir=base.cache_dir,
        region_file=base.region_file,
        region=None,
    )
