"""Dynamic MIG at run time (``operatingmode: mig``): the startup adoption, the instances created at Allocate, the
reconciler that destroys the instances of pods gone, the MIG register records and the per-instance metric (the
samples of ``hami_mig_device_info``, which app/metrics.py's monitor collector exposes).

The decisions are core/mig.py's; this unit carries them out through the :class:`MigDriver` port (NVML calls block:
they run in a worker thread) and keeps what the plugin manages: the instances it created or adopted, by
``(parent UUID, GPU instance ID)``. Nothing of that needs to survive a restart: the startup adoption rebuilds it from
the pods' reservations (``hami.io/vgpu-mig-allocations``) and reclaims every instance no live pod reserves, so a
restart neither loses an instance in use nor leaks one. Every NVML change (startup, Allocate, reconciler) holds one
lock: an instance being created is never seen half-made by the reconciler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import cast

from hami_shared import names
from hami_shared.hami_config import read_device_config
from hami_shared.logging import get_logger
from hami_shared.mig import MigAllocation, ModelGeometries, encode_mig_allocations
from hami_shared.node_register import MODE_MIG, DeviceInfo, model_type_name
from hami_shared.pod_devices import ContainerDevices
from prometheus_client import Counter

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.adapters.nvml_mig import MigDriver
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import MigDeviceSample, PluginMetrics
from hami_device_plugin.app.patches import PodPatches
from hami_device_plugin.core import mig as mig_core
from hami_device_plugin.core.claims import PodPatch
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.mig_device import GpuInstanceProfile, MigInstance
from hami_device_plugin.core.pods import PodRecord

log = get_logger(__name__)


class MigError(ValueError):
    """A MIG instance cannot be given to a container; the message says why and what to change."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Held:
    """A managed instance and who it is for (None: adopted at startup from no pod, kept for the reconciler)."""

    instance: MigInstance
    namespace: str
    pod: str
    container: str
    device_index: int


class MigRuntime:
    """The MIG instances of this node (module docstring). Lives on one event loop."""

    def __init__(
        self,
        *,
        node: str,
        driver: MigDriver,
        pods: PodCache | None,
        patches: PodPatches,
        metrics: PluginMetrics,
        gpus: Callable[[], Sequence[Gpu]],
        config: Callable[[], DeviceConfig],
        geometries: Sequence[ModelGeometries] | None = None,
        with_hamicore: bool = False,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._node, self._driver, self._pods, self._patches = node, driver, pods, patches
        self._gpus, self._config, self._geometries = gpus, config, geometries
        self.with_hamicore = with_hamicore
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._profiles: dict[str, tuple[GpuInstanceProfile, ...]] = {}
        self._held: dict[tuple[str, int], _Held] = {}
        self._identities: dict[tuple[str, int, int], MigInstance] = {}
        """(pod UID, container index, device index) -> the instance given, until the pod's patch shows it."""
        self.adopted = False
        """The startup adoption ran with the pods readable."""
        self.operations = Counter(
            "hami_device_plugin_mig_operations",
            "NVML MIG changes of the plugin by operation (create, adopt, destroy, enable_mig) and outcome",
            ["operation", "outcome"],
            registry=metrics.registry,
        )
        self._metrics = metrics

    # --- what others read -----------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._config().mode == MODE_MIG

    def register_devices(self, gpus: Sequence[Gpu], config: DeviceConfig) -> tuple[DeviceInfo, ...]:
        return mig_core.mig_register_devices(gpus, config, self._profiles)

    def slot_counts(self) -> dict[str, int] | None:
        """kubelet's slots per card in MIG mode: the register's count (the extender picks slots below it)."""
        if not self.active:
            return None
        return {uuid: max((p.instance_count for p in profiles), default=0) for uuid, profiles in self._profiles.items()}

    def managed(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._held)

    def _sync_metrics(self) -> None:
        """``hami_mig_device_info`` (app/metrics.py's monitor collector): one sample per instance a container holds."""
        self._metrics.monitor.migs = tuple(
            MigDeviceSample(
                namespace=h.namespace,
                pod=h.pod,
                container=h.container,
                vdevice_index=h.device_index,
                device_uuid=h.instance.parent_uuid,
                mig_uuid=h.instance.mig_uuid,
                profile=h.instance.profile,
                gpu_instance_id=h.instance.gpu_instance_id,
                compute_instance_id=h.instance.compute_instance_id,
            )
            for h in self._held.values()
            if h.pod
        )

    # --- startup and reconciliation ----------------------------------------------------------------------------

    def _live_records(self) -> list[PodRecord] | None:
        """The pods of the node, or None while they cannot be read (no API, never listed, or the watch stale)."""
        if self._pods is None or not self._pods.synced.is_set() or self._pods.stale:
            return None
        return list(self._pods.records())

    async def run(self, interval: float) -> None:
        """Adopt once the pods can be read, then reconcile every ``interval`` seconds (off the Allocate path)."""
        while True:
            if self.active:
                try:
                    if not self.adopted:
                        await self.adopt()
                    else:
                        await self.reconcile()
                except NvmlError as exc:
                    log.warning("mig_reconcile_failed", error=str(exc))
            await asyncio.sleep(interval)

    async def adopt(self) -> None:
        """The startup rule (core/mig.py ``startup_plan``); without readable pods nothing is touched and it runs
        again at the next tick."""
        async with self._lock:
            pods = self._live_records()  # under the lock: an Allocate in between is seen with its pod
            cards = await asyncio.to_thread(self._cards)
            plan = mig_core.startup_plan(cards, pods, self._node)
            if pods is None:
                log.info("mig_startup_waits_for_pods", cards=[c.uuid for c in cards])
                if await asyncio.to_thread(self._refresh_profiles):
                    self._on_change()
                return
            by_uid = {p.uid: p for p in pods}
            for uuid in plan.enable_mig:
                await self._enable(uuid)
            for instance in plan.destroy:
                await self._destroy(instance, reason="no live pod reserves it")
            for instance, owner in plan.adopt:
                self._hold(instance, by_uid.get(owner.pod_uid), owner.container_index, owner.device_index)
                self.operations.labels("adopt", "success").inc()
            # Kept because a pod that cannot be read may hold them: managed too, so the reconciler destroys them
            # once that pod is gone or readable and no reservation holds them.
            decided = {(i.parent_uuid, i.gpu_instance_id) for i in plan.destroy} | set(self._held)
            for card in cards:
                for instance in card.instances:
                    if (instance.parent_uuid, instance.gpu_instance_id) not in decided:
                        self._hold(instance, None, 0, 0)
            await asyncio.to_thread(self._refresh_profiles)
            self.adopted = True
            self._sync_metrics()
        log.info(
            "mig_startup_done",
            enabled=list(plan.enable_mig),
            destroyed=[(i.parent_uuid, i.profile, i.start) for i in plan.destroy],
            adopted=[(i.parent_uuid, i.profile, i.start, o.pod) for i, o in plan.adopt],
        )
        self._on_change()

    async def reconcile(self) -> None:
        """Destroy the managed instances no live pod reserves; enable MIG mode on idle cards that lost it."""
        async with self._lock:
            # Read under the lock: an instance an Allocate created meanwhile belongs to a pod this list holds.
            pods = self._live_records()
            if pods is None:
                return
            cards = await asyncio.to_thread(self._cards)
            present = {(i.parent_uuid, i.gpu_instance_id) for c in cards for i in c.instances}
            read = {c.uuid for c in cards}
            for key in set(self._held) - present:
                if key[0] in read:  # gone under us (a GPU reset): nothing to destroy; an unreadable card keeps its
                    del self._held[key]
            instances = [i for c in cards for i in c.instances]
            for instance in mig_core.reconcile_plan(instances, pods, self._node, self.managed()):
                await self._destroy(instance, reason="its pod is gone")
            live = mig_core.live_pods(pods, self._node)
            changed = False
            for card in cards:
                if not card.mig_enabled and not card.mig_pending and not live.is_busy(card.uuid):
                    changed |= await self._enable(card.uuid)
            changed |= await asyncio.to_thread(self._refresh_profiles)
            self._forget_patched(pods)
            self._sync_metrics()
        if changed:
            self._on_change()

    def _cards(self) -> list[mig_core.Card]:
        cards = []
        for gpu in self._gpus():
            try:
                if not self._driver.mig_capable(gpu.uuid):
                    continue
                enabled, pending = self._driver.mig_mode(gpu.uuid)
                instances = self._driver.mig_instances(gpu.uuid) if enabled else ()
            except NvmlError as exc:
                log.warning("mig_card_unreadable", gpu=gpu.uuid, error=str(exc))
                continue
            cards.append(
                mig_core.Card(
                    uuid=gpu.uuid, mig_enabled=enabled, instances=instances, mig_pending=pending and not enabled
                )
            )
        return cards

    def _refresh_profiles(self) -> bool:
        """The allowed profiles of every card in MIG mode; True when they changed."""
        profiles: dict[str, tuple[GpuInstanceProfile, ...]] = {}
        for gpu in self._gpus():
            try:
                if not self._driver.mig_capable(gpu.uuid) or not self._driver.mig_mode(gpu.uuid)[0]:
                    continue
                offered = self._driver.gpu_instance_profiles(gpu.uuid)
            except NvmlError as exc:
                log.warning("mig_profiles_unreadable", gpu=gpu.uuid, error=str(exc))
                continue
            # matched against the register's type, as the extender matches knownMigGeometries (HAMi's rule)
            profiles[gpu.uuid] = mig_core.allowed_profiles(model_type_name(gpu.name), offered, self._geometries)
        changed = profiles != self._profiles
        self._profiles = profiles
        return changed

    async def _enable(self, uuid: str) -> bool:
        try:
            now = await asyncio.to_thread(self._driver.set_mig_mode, uuid, True)
        except NvmlError as exc:
            self.operations.labels("enable_mig", "error").inc()
            log.warning("mig_mode_not_enabled", gpu=uuid, error=str(exc))
            return False
        self.operations.labels("enable_mig", "success" if now else "pending_reset").inc()
        log.info("mig_mode_enabled" if now else "mig_mode_pending_reset", gpu=uuid)
        return now

    async def _destroy(self, instance: MigInstance, *, reason: str) -> bool:
        try:
            await asyncio.to_thread(self._driver.destroy_mig_instance, instance.parent_uuid, instance.gpu_instance_id)
        except NvmlError as exc:
            # In use (a process still runs in it): tried again at the next reconciliation.
            self.operations.labels("destroy", "error").inc()
            log.warning("mig_instance_not_destroyed", gpu=instance.parent_uuid, mig=instance.mig_uuid, error=str(exc))
            return False
        self._held.pop((instance.parent_uuid, instance.gpu_instance_id), None)
        self._sync_metrics()
        self.operations.labels("destroy", "success").inc()
        log.info(
            "mig_instance_destroyed",
            gpu=instance.parent_uuid,
            mig=instance.mig_uuid,
            profile=instance.profile,
            start=instance.start,
            reason=reason,
        )
        return True

    def _hold(self, instance: MigInstance, pod: PodRecord | None, container_index: int, device_index: int) -> None:
        container = ""
        if pod is not None and container_index < len(pod.containers):
            container = pod.containers[container_index].name
        self._held[(instance.parent_uuid, instance.gpu_instance_id)] = _Held(
            instance,
            namespace=pod.namespace if pod is not None else "",
            pod=pod.name if pod is not None else "",
            container=container,
            device_index=device_index,
        )

    def _forget_patched(self, pods: Sequence[PodRecord]) -> None:
        """Drop the identities the pods' own annotations now carry (or whose pods are gone)."""
        by_uid = {p.uid: p for p in pods}
        for key in list(self._identities):
            pod = by_uid.get(key[0])
            if pod is None or any(
                (a.container_index, a.device_index) == key[1:] and a.realized for a in pod.mig_allocations
            ):
                del self._identities[key]

    # --- Allocate --------------------------------------------------------------------------------------------

    async def realize(self, pod: PodRecord, position: int, devices: ContainerDevices) -> tuple[MigInstance, ...]:
        """The instances of ``pod``'s container ``position``, created (or found) at the reserved placements, in
        device order; the reservation is patched with their identities. Raises :class:`MigError`; instances it
        created before a failure are destroyed again."""
        if pod.mig_problem is not None:
            raise MigError(f"{names.MIG_ALLOCATIONS} of pod {pod.key} cannot be read: {pod.mig_problem}")
        mine = sorted((a for a in pod.mig_allocations if a.container_index == position), key=lambda a: a.device_index)
        if not mine:
            raise MigError(
                f"this node is in MIG mode but pod {pod.key} has no MIG reservation ({names.MIG_ALLOCATIONS}) for "
                f"container {position}: it was scheduled for sharing; schedule it with the HAMi scheduler, which "
                "reserves MIG instances on this node, or set the node's operatingmode to hami-core"
            )
        if sorted(a.gpu_uuid for a in mine) != sorted(d.uuid for d in devices):
            raise MigError(
                f"pod {pod.key} container {position}: the MIG reservations name GPUs "
                f"{sorted(a.gpu_uuid for a in mine)} but the allocation names {sorted(d.uuid for d in devices)}"
            )
        # Every live pod's reservations, this pod's other containers included: an instance one of them holds is
        # never taken for a leftover.
        records = self._live_records()
        others = mig_core.live_pods([pod, *(p for p in records or () if p.uid != pod.uid)], self._node)
        if records is None:
            # The pod list is not current (the watch failed): any instance may be a live pod's, none is cleared.
            others = dataclasses.replace(others, protect_all=True)
        done: list[MigInstance] = []
        created: list[MigInstance] = []
        async with self._lock:
            try:
                for allocation in mine:
                    instance, new = await self._realize_one(allocation, others)
                    done.append(instance)
                    if new:
                        created.append(instance)
            except (MigError, NvmlError) as exc:
                for instance in created:
                    await self._destroy(instance, reason="rollback of a partial Allocate")
                if isinstance(exc, MigError):
                    raise
                raise MigError(f"NVML refused a MIG change for pod {pod.key}: {exc}") from exc
            for allocation, instance in zip(mine, done, strict=True):
                self._hold(instance, pod, allocation.container_index, allocation.device_index)
                self._identities[(pod.uid, allocation.container_index, allocation.device_index)] = instance
            self._sync_metrics()
        self._patch_identities(pod)
        return tuple(done)

    async def _realize_one(self, allocation: MigAllocation, others: mig_core.LivePods) -> tuple[MigInstance, bool]:
        gpu = allocation.gpu_uuid
        enabled, _ = await asyncio.to_thread(self._driver.mig_mode, gpu)
        if not enabled:
            if others.is_busy(gpu):
                raise MigError(f"GPU {gpu} is not in MIG mode and other pods use it: its mode is not changed")
            if not await self._enable(gpu):
                raise MigError(f"GPU {gpu}: MIG mode waits for a GPU reset (nvidia-smi -r) before instances can exist")
        profiles = await asyncio.to_thread(self._driver.gpu_instance_profiles, gpu)
        instances = await asyncio.to_thread(self._driver.mig_instances, gpu)
        decision = mig_core.realize(allocation, profiles, instances, others)
        if isinstance(decision, mig_core.Refuse):
            raise MigError(decision.reason)
        if isinstance(decision, mig_core.Adopt):
            self.operations.labels("adopt", "success").inc()
            return decision.instance, False
        for leftover in decision.clear:
            if not await self._destroy(leftover, reason="overlaps a reserved placement"):
                raise MigError(
                    f"GPU {gpu}: the leftover instance {leftover.profile} at {leftover.start}+{leftover.size} "
                    "overlapping the reserved placement cannot be destroyed (is a process still using it?)"
                )
        try:
            instance = await asyncio.to_thread(
                self._driver.create_mig_instance, gpu, decision.profile.profile_id, decision.start
            )
        except NvmlError:
            self.operations.labels("create", "error").inc()
            raise
        self.operations.labels("create", "success").inc()
        log.info(
            "mig_instance_created",
            gpu=gpu,
            mig=instance.mig_uuid,
            profile=instance.profile,
            start=instance.start,
            gpu_instance_id=instance.gpu_instance_id,
        )
        return instance, True

    def _patch_identities(self, pod: PodRecord) -> None:
        """Queue the pod's reservations with every identity known so far (the pod's own and those given since)."""
        completed = []
        for a in pod.mig_allocations:
            given = self._identities.get((pod.uid, a.container_index, a.device_index))
            if given is not None:
                a = a.with_identity(given.mig_uuid, given.gpu_instance_id, given.compute_instance_id)
            completed.append(a)
        self._patches.patch(pod, PodPatch.of(pod, {names.MIG_ALLOCATIONS: encode_mig_allocations(completed)}))


def mig_driver(driver: object) -> MigDriver | None:
    """``driver`` as the MIG port when it implements it (the NVML driver does once it has MIG calls)."""
    needed = (
        "mig_capable",
        "mig_mode",
        "set_mig_mode",
        "gpu_instance_profiles",
        "mig_instances",
        "create_mig_instance",
        "destroy_mig_instance",
    )
    if all(callable(getattr(driver, name, None)) for name in needed):
        return cast(MigDriver, driver)
    return None


def load_geometries(path: pathlib.Path | None) -> tuple[ModelGeometries, ...] | None:
    """``nvidia.knownMigGeometries`` of HAMi's device-config.yaml at ``path`` (hami_shared.hami_config checks it);
    None without a file or without the key (every profile NVML offers is then registered). Raises
    :class:`~hami_shared.config.ConfigError` naming the file and the key path."""
    if path is None:
        return None
    return read_device_config(path).known_mig_geometries or None
