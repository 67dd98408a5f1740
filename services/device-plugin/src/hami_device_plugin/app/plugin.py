"""The device plugin's state and its kubelet-facing decisions, wired to the core and the adapters.

:class:`DevicePluginState` holds the discovered GPUs, their health, the device config and the claims of
Allocates in flight; it answers ListAndWatch, GetPreferredAllocation and Allocate. :class:`Servicer`
exposes it as the v1beta1 ``DevicePlugin`` gRPC service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.logging import get_logger
from hami_shared.pod_devices import consume_container, encode_pod_devices

from hami_device_plugin.adapters import files
from hami_device_plugin.adapters.kube import KubeClient, KubeError
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.podresources import PodResourcesClient, PodResourcesError
from hami_device_plugin.adapters.protos import load as load_protos
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core import health as health_core
from hami_device_plugin.core import region
from hami_device_plugin.core.admission import (
    MATCHED_SERVED_AGAIN,
    REASON_ADMITTING,
    REASON_SERVED_AGAIN,
    Admitting,
    container_under_admission,
    pod_under_admission,
    served_again,
    served_again_preferred,
)
from hami_device_plugin.core.allocation import (
    ContainerAllocation,
    InjectionConfig,
    container_allocation,
    container_dir_name,
)
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import HEALTHY, UNHEALTHY, Gpu, VirtualDevice, register_devices, virtual_devices
from hami_device_plugin.core.pods import (
    DEFAULT_SCHEDULER_NAMES,
    Assignment,
    NoMatch,
    PlacementPolicy,
    PodRecord,
    candidates,
    identify,
    preferred_devices,
)
from hami_device_plugin.core.records import ContainerRecord, container_record, record_from_pod

log = get_logger(__name__)
pb, pb_grpc = load_protos()

PREFERRED_WAIT_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class PodPatch:
    """Metadata to merge-patch onto one pod; later values of a key win."""

    namespace: str
    name: str
    annotations: Mapping[str, str]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def then(self, newer: PodPatch | None) -> PodPatch:
        if newer is None:
            return self
        return dataclasses.replace(
            self, annotations={**self.annotations, **newer.annotations}, labels={**self.labels, **newer.labels}
        )


class AllocateError(Exception):
    """Allocate cannot be answered; the message goes to kubelet (and the pod's status)."""


class DevicePluginState:
    """Devices, health and pod identification of one node. Lives on one event loop."""

    def __init__(
        self,
        *,
        node: str,
        gpus: tuple[Gpu, ...],
        device_config: DeviceConfig,
        injection: InjectionConfig,
        metrics: PluginMetrics,
        pods: PodCache | None,
        kube: KubeClient | None,
        allocate_wait: float,
        ignored_xids: frozenset[int] = health_core.DEFAULT_IGNORED_XIDS,
        clock: Callable[[], float] = time.monotonic,
        scheduler_names: frozenset[str] = DEFAULT_SCHEDULER_NAMES,
        record_store: RecordStore | None = None,
        pod_resources: PodResourcesClient | None = None,
    ) -> None:
        self.node = node
        self.gpus = gpus
        self.device_config = device_config
        self.injection = injection
        self.metrics = metrics
        self.pods = pods
        self.kube = kube
        self.allocate_wait = allocate_wait
        self.ignored_xids = ignored_xids
        self.clock = clock
        self.health: dict[str, health_core.GpuHealth] = {
            g.uuid: health_core.GpuHealth(healthy=g.healthy, reason="" if g.healthy else "unreadable at discovery")
            for g in gpus
        }
        self.claimed: set[tuple[str, int]] = set()
        self.scheduler_names = scheduler_names
        self.record_store = record_store
        self.pod_resources = pod_resources
        """kubelet's pod-resources API: which pod it is admitting (None: not asked; the inference decides)."""
        self.records: dict[str, ContainerRecord] = {}
        """The plugin's record of each container it allocated, by directory name (see core/records.py)."""
        self._policy: tuple[int, PlacementPolicy] | None = None
        self._record_writes: asyncio.Queue[ContainerRecord] = asyncio.Queue()
        self._patches: dict[str, PodPatch] = {}
        self._patch_wakeup = asyncio.Event()
        self._patching = 0
        self._drained = asyncio.Event()
        self.recovered = asyncio.Event()
        self.version = 0
        self._changed = asyncio.Event()
        self._update_device_metrics()

    # --- devices and health --------------------------------------------------------------------

    def current_gpus(self) -> tuple[Gpu, ...]:
        return tuple(
            Gpu(
                uuid=g.uuid,
                index=g.index,
                name=g.name,
                memory_mib=g.memory_mib,
                numa=g.numa,
                healthy=self.health[g.uuid].healthy,
            )
            for g in self.gpus
        )

    def devices(self) -> tuple[VirtualDevice, ...]:
        return virtual_devices(self.current_gpus(), self.device_config)

    def placement_policy(self) -> PlacementPolicy:
        """Which placements Allocate accepts: our schedulers' pods, on this node's GPUs within their memory."""
        if self._policy is None or self._policy[0] != self.version:
            memory = {d.id: d.devmem for d in register_devices(self.gpus, self.device_config)}
            self._policy = (self.version, PlacementPolicy(schedulers=self.scheduler_names, gpu_memory_mib=memory))
        return self._policy[1]

    def container_record(self, dir_name: str) -> ContainerRecord | None:
        """What the plugin decided for the container of ``dir_name`` (``<podUID>_<container>``); rebuilt from
        the pod's allocated devices when this run did not allocate it; None for a container it does not know."""
        record = self.records.get(dir_name)
        if record is None and self.pods is not None:
            uid, _, container = dir_name.partition("_")
            pod = self.pods.get(uid)
            if pod is not None and pod.node == self.node and pod.problem is None:
                record = record_from_pod(pod, container)
                if record is not None:
                    self.records[dir_name] = record  # kept: a later edit of the annotation changes nothing
        return record

    def forget_record(self, dir_name: str) -> None:
        self.records.pop(dir_name, None)
        if self.record_store is not None:
            self.record_store.remove(dir_name)

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._update_device_metrics()

    def _update_device_metrics(self) -> None:
        devices = self.devices()
        self.metrics.devices.set(len(devices))
        self.metrics.healthy_devices.set(sum(1 for d in devices if d.healthy))

    async def wait_change(self, version: int) -> None:
        while self.version == version:
            await self._changed.wait()

    def set_health(self, uuid: str, new: health_core.GpuHealth) -> None:
        old = self.health.get(uuid)
        if old is None:
            return
        self.health[uuid] = new
        if old.healthy != new.healthy:
            log.warning("gpu_health_changed", uuid=uuid, healthy=new.healthy, reason=new.reason or "recovered")
            self._bump()

    def on_xid(self, uuid: str, code: int) -> None:
        if uuid in self.health:
            log.info("nvml_xid", uuid=uuid, xid=code, ignored=code in self.ignored_xids)
            self.set_health(uuid, health_core.on_xid(self.health[uuid], code, self.clock(), ignored=self.ignored_xids))

    def on_probe(self, uuid: str, answered: bool, recovery_seconds: float) -> None:
        if uuid in self.health:
            self.set_health(
                uuid, health_core.on_probe(self.health[uuid], answered, self.clock(), recovery_seconds=recovery_seconds)
            )

    def set_all_unhealthy(self, reason: str) -> None:
        for uuid in self.health:
            self.set_health(uuid, health_core.GpuHealth(healthy=False, last_error=self.clock(), reason=reason))

    def set_device_config(self, config: DeviceConfig, injection: InjectionConfig) -> None:
        if config != self.device_config:
            log.info("device_config_changed", split_count=config.split_count, mode=config.mode)
            self.device_config = config
            self.injection = injection
            self._bump()

    # --- kubelet requests ------------------------------------------------------------------------

    async def preferred(self, available: list[str], must_include: list[str], size: int) -> tuple[str, ...]:
        self.metrics.preferred.inc()
        if self.pods is None:
            return tuple([*must_include, *[d for d in available if d not in must_include]][:size])
        # kubelet may ask before the pod's binding reaches our watch: wait for a candidate, briefly (the
        # answer is advisory; Allocate still matches whatever kubelet then picks).
        deadline = self.clock() + PREFERRED_WAIT_S
        decision = await self._pod_under_admission("preferred", deadline)
        if decision is not None:
            again = self._served_again(decision)
            if again is not None:
                chosen = served_again_preferred(decision.pod, again, available, must_include, size)
                if chosen is not None:
                    return chosen
            return preferred_devices(
                [decision.pod], self.node, available, must_include, size, self.claimed, self.placement_policy()
            )
        policy = self.placement_policy()
        while not candidates(self.pods.records(), self.node, self.claimed, policy):
            generation = self.pods.generation
            remaining = deadline - self.clock()
            if remaining <= 0 or not await self.pods.wait_for_change(generation, remaining):
                break
        return preferred_devices(
            self.pods.records(), self.node, available, must_include, size, self.claimed, self.placement_policy()
        )

    async def allocate(self, device_ids: list[str]) -> ContainerAllocation:
        started = time.perf_counter()
        matched_by = "none"
        try:
            assignment = await self._identify(device_ids)
            matched_by = assignment.matched_by
            allocation = await self._commit(assignment)
        except AllocateError:
            self.metrics.allocations.labels("error", matched_by).inc()
            raise
        finally:
            self.metrics.allocate_seconds.observe(time.perf_counter() - started)
        self.metrics.allocations.labels("success", matched_by).inc()
        return allocation

    async def _identify(self, device_ids: list[str]) -> Assignment:
        if self.pods is None or self.kube is None:
            raise AllocateError(
                "hami-device-plugin runs without the Kubernetes API (--no-kubernetes), so it cannot tell which pod "
                "these devices are for; run it with API access"
            )
        unhealthy = [d for d in device_ids if d in {v.id for v in self.devices() if not v.healthy}]
        if unhealthy:
            log.warning("allocate_unhealthy_devices", devices=unhealthy)
        deadline = self.clock() + self.allocate_wait
        if not self.recovered.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.allocate_wait):
                    await self.recovered.wait()
        decision = await self._pod_under_admission("allocate", deadline)
        admitting = None if decision is None else decision.pod
        again = None if decision is None else self._served_again(decision)
        if decision is not None and again is not None:
            # kubelet itself names the pod and the container it allocates, which we served already: the same grant
            # or nothing (never a pending container's grant, never a guess).
            pod = self.pods.get(decision.pod.uid) or decision.pod
            recorded = self.records.get(container_dir_name(pod.uid, pod.containers[again].name))
            result = served_again(pod, again, device_ids, recorded)
            if isinstance(result, NoMatch):
                log.warning("allocate_no_match", devices=device_ids, reason=result.reason)
                raise AllocateError(result.reason)
            return result
        while True:
            generation = self.pods.generation
            if admitting is not None:
                # kubelet named the pod: match its containers only, with its latest record (never another pod's).
                pods: Iterable[PodRecord] = [self.pods.get(admitting.uid) or admitting]
            else:
                pods = self.pods.records()
            result = identify(pods, self.node, device_ids, self.claimed, self.placement_policy())
            if isinstance(result, Assignment):
                return result
            remaining = deadline - self.clock()
            if remaining <= 0:
                assert isinstance(result, NoMatch)
                log.warning("allocate_no_match", devices=device_ids, reason=result.reason)
                raise AllocateError(result.reason)
            await self.pods.wait_for_change(generation, remaining)

    def _served_again(self, decision: Admitting) -> int | None:
        """The position of the container kubelet allocates in the pod it named, when the plugin served that
        container already (claimed by this run, or its directory on the host from an earlier one); else None."""
        position = container_under_admission(decision)
        if position is None:
            return None
        pod = decision.pod
        if (pod.uid, position) in self.claimed:
            return position
        directory = Path(self.injection.regions_dir, container_dir_name(pod.uid, pod.containers[position].name))
        return position if directory.is_dir() else None

    async def _pod_under_admission(self, rpc: str, deadline: float) -> Admitting | None:
        """The pod kubelet is admitting, from its pod-resources List (core/admission.py); None: undecided, the
        caller infers it from the pod cache alone. Every outcome is counted with its reason."""
        assert self.pods is not None
        if self.pod_resources is None:
            return None
        try:
            listed = await self.pod_resources.list()
        except PodResourcesError as exc:
            self.metrics.identifications.labels(rpc, "inference", exc.reason).inc()
            log.warning("pod_resources_unavailable", rpc=rpc, reason=exc.reason, error=str(exc))
            return None
        # kubelet waits for this answer: its pods and their devices stay as listed, only the cache may catch up.
        while True:
            generation = self.pods.generation
            decision = pod_under_admission(listed, self.pods.records(), self.claimed)
            if isinstance(decision, Admitting):
                again = self._served_again(decision)
                reason = REASON_ADMITTING if again is None else REASON_SERVED_AGAIN
                self.metrics.identifications.labels(rpc, "pod-resources", reason).inc()
                if again is not None:
                    log.info(
                        "pod_served_again",
                        rpc=rpc,
                        pod=decision.pod.key,
                        container=decision.pod.containers[again].name,
                    )
                return decision
            remaining = deadline - self.clock()
            if not decision.wait or remaining <= 0:
                self.metrics.identifications.labels(rpc, "inference", decision.reason).inc()
                log.warning("pod_under_admission_undecided", rpc=rpc, reason=decision.reason, detail=decision.detail)
                return None
            await self.pods.wait_for_change(generation, remaining)

    async def _commit(self, assignment: Assignment) -> ContainerAllocation:
        """Claim the container, prepare its directory, answer; the pod patch is written behind.

        The claim (in memory) and the per-container directory (on the host, so it survives a restart of
        the plugin: see :meth:`recover_claims`) are the record that this container is allocated; the pod's
        annotations follow through :meth:`run_writer`, off kubelet's critical path.
        """
        pod = assignment.pod
        again = assignment.matched_by == MATCHED_SERVED_AGAIN
        self.claimed.add((pod.uid, assignment.position))
        container = assignment.container
        try:
            allocation = container_allocation(pod, container, assignment.devices, self.injection)
            files.prepare_container_dir(Path(allocation.cache_dir))
            if allocation.spec_file is not None and allocation.spec is not None:
                # mounted read-only: must exist. Served again: the one published stays (the container may run
                # with it); only a lost one is written again, from the same grant.
                files.publish_spec(Path(allocation.spec_file), allocation.spec, replace=not again)
        except (OSError, ValueError) as exc:
            if not again:  # a pod served before keeps its phase: its first answer stands
                self._enqueue_patch(pod, {names.BIND_PHASE: BindPhase.FAILED.value})
            raise AllocateError(f"cannot prepare {pod.key} container {container.name}: {exc}") from exc
        # The region ready before the container starts: its first processes attach to it at once instead of
        # one creating it while the others wait. Without it hamicore creates the region itself, same limits.
        # An existing region is never replaced (publish_region): served again, its accounting goes on.
        if allocation.region is not None:
            try:
                image = region.build_region(allocation.region, time.time_ns())
                files.publish_region(Path(allocation.region_file), image)
            except OSError as exc:
                log.warning("region_not_prepared", pod=pod.key, container=container.name, error=str(exc))
        record = container_record(pod, container, assignment.devices)
        if self.records.get(record.dir_name) != record:
            self.records[record.dir_name] = record
            self._record_writes.put_nowait(record)  # its file is written behind the answer (run_record_writer)
        done = self._enqueue_consumed(pod)
        log.info(
            "allocated",
            pod=pod.key,
            container=container.name,
            matched_by=assignment.matched_by,
            gpus=[d.uuid for d in assignment.devices],
            memory_mib=[d.usedmem for d in assignment.devices],
            cores=[d.usedcores for d in assignment.devices],
            bind_phase="success" if done else "allocating",
        )
        return allocation

    def _enqueue_consumed(self, pod: PodRecord) -> bool:
        """Queue the pod's to-allocate list with every claimed entry emptied; True when none is left."""
        remaining = pod.to_allocate
        for position in range(len(remaining)):
            if (pod.uid, position) in self.claimed and remaining[position]:
                remaining = consume_container(remaining, position)
        annotations = {names.DEVICES_TO_ALLOCATE: encode_pod_devices(remaining)}
        labels: dict[str, str] = {}
        done = not any(remaining)
        if done:
            annotations[names.BIND_PHASE] = BindPhase.SUCCESS.value
            # HAMi's label, which its vGPU monitor selects a node's pods by; written with the success patch so
            # that the scheduler extender (which adds it where a device plugin does not) has nothing to write.
            if len(self.node) <= names.LABEL_VALUE_MAX:
                labels[names.VGPU_NODE] = self.node
        self._enqueue_patch(pod, annotations, labels)
        return done

    def _enqueue_patch(self, pod: PodRecord, annotations: dict[str, str], labels: dict[str, str] | None = None) -> None:
        queued = self._patches.get(pod.uid)
        patch = PodPatch(pod.namespace, pod.name, annotations, labels or {})
        self._patches[pod.uid] = queued.then(patch) if queued else patch
        self._patch_wakeup.set()

    def pending_patches(self) -> int:
        return len(self._patches) + self._patching

    async def flush(self, within: float) -> None:
        """Give queued pod patches up to ``within`` seconds to be written (at shutdown)."""
        if not self.pending_patches():
            return
        self._drained.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._drained.wait()

    async def run_record_writer(self) -> None:
        """Write the records of allocated containers to their files, behind the Allocate answers. A record lost
        to a crash before its file is written is rebuilt from the pod's annotations after the restart."""
        while True:
            record = await self._record_writes.get()
            if self.record_store is None:
                continue
            try:
                await asyncio.to_thread(self.record_store.write, record)
            except OSError as exc:  # kept in memory; after a restart rebuilt from the pod's annotations
                log.warning("container_record_not_written", container=record.dir_name, error=str(exc))

    async def run_writer(self) -> None:
        """Write queued pod metadata patches, oldest first, retrying API errors with backoff."""
        assert self.kube is not None
        assert self.pods is not None
        delay = 0.2
        while True:
            await self._patch_wakeup.wait()
            self._patch_wakeup.clear()
            while self._patches:
                uid = next(iter(self._patches))
                patch = self._patches.pop(uid)
                key = f"{patch.namespace}/{patch.name}"
                self._patching += 1
                try:
                    updated = await self.kube.patch_pod_metadata(
                        patch.namespace, patch.name, annotations=patch.annotations, labels=patch.labels
                    )
                except KubeError as exc:
                    if exc.status == 404:
                        log.info("pod_gone_before_patch", pod=key)
                        continue
                    log.warning("pod_patch_failed", pod=key, error=str(exc), retry_in=delay)
                    self._patches[uid] = patch.then(self._patches.pop(uid, None))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                finally:
                    self._patching -= 1
                delay = 0.2
                self.pods.apply_own_update(updated)
                self.metrics.pod_patches.inc()
            self._drained.set()

    async def recover_claims(self, regions_dir: Path) -> None:
        """After a restart: containers whose directory exists were allocated by an earlier run of the plugin
        (kubelet will not call Allocate for them again); claim them and finish their pod patches."""
        assert self.pods is not None
        await self.pods.synced.wait()
        existing = set(await asyncio.to_thread(files.container_dirs, regions_dir))
        recovered = 0
        for pod in list(self.pods.records()):
            if not pod.is_candidate(self.node, self.claimed, self.placement_policy()):
                continue
            positions = [
                p
                for p in pod.pending_positions(self.claimed)
                if container_dir_name(pod.uid, pod.containers[p].name) in existing
            ]
            for position in positions:
                self.claimed.add((pod.uid, position))
            if positions:
                recovered += len(positions)
                self._enqueue_consumed(pod)
        if recovered:
            log.info("claims_recovered", containers=recovered)
        self.recovered.set()


def allocation_response(allocation: ContainerAllocation) -> Any:
    return pb.ContainerAllocateResponse(
        envs=dict(allocation.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in allocation.mounts
        ],
    )


def device_message(device: VirtualDevice) -> Any:
    message = pb.Device(ID=device.id, health=HEALTHY if device.healthy else UNHEALTHY)
    if device.numa is not None:
        message.topology.nodes.append(pb.NUMANode(ID=device.numa))
    return message


_ServicerBase: Any = pb_grpc.DevicePluginServicer


class Servicer(_ServicerBase):  # type: ignore[misc]
    """The v1beta1 DevicePlugin service over :class:`DevicePluginState`."""

    def __init__(self, state: DevicePluginState, stopping: asyncio.Event) -> None:
        self._state = state
        self._stopping = stopping

    async def GetDevicePluginOptions(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.DevicePluginOptions(
            pre_start_required=False,
            get_preferred_allocation_available=self._state.device_config.preferred_allocation,
        )

    async def ListAndWatch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        state = self._state
        while not self._stopping.is_set():
            version = state.version
            devices = state.devices()
            log.info("list_and_watch_send", devices=len(devices), healthy=sum(1 for d in devices if d.healthy))
            yield pb.ListAndWatchResponse(devices=[device_message(d) for d in devices])
            change = asyncio.ensure_future(state.wait_change(version))
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({change, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
                stop.cancel()

    async def GetPreferredAllocation(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        responses = []
        for container in request.container_requests:
            chosen = await self._state.preferred(
                list(container.available_deviceIDs), list(container.must_include_deviceIDs), container.allocation_size
            )
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=list(chosen)))
        return pb.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        responses = []
        for container in request.container_requests:
            try:
                allocation = await self._state.allocate(list(container.devices_ids))
            except AllocateError as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            responses.append(allocation_response(allocation))
        return pb.AllocateResponse(container_responses=responses)

    async def PreStartContainer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.PreStartContainerResponse()
