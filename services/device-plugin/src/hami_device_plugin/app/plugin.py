"""The device plugin's kubelet-facing answers, over its units, and the gRPC service that exposes them.

:class:`DevicePluginState` composes the plugin of one node by concern (health, claims, patches, recovery, pod
identification: app/<unit>.py) and answers GetPreferredAllocation and Allocate over them. :class:`Servicer`
exposes it as the v1beta1 ``DevicePlugin`` gRPC service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from hami_shared import names
from hami_shared.bind import BindPhase
from hami_shared.logging import get_logger
from hami_shared.node_register import MODE_MIG

from hami_device_plugin.adapters import files
from hami_device_plugin.adapters.kube import KubeClient
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.podresources import PodResourcesClient
from hami_device_plugin.adapters.protos import load as load_protos
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.identify import PodIdentifier
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.mig import MigRuntime
from hami_device_plugin.app.patches import PodPatches
from hami_device_plugin.app.recovery import Recovery
from hami_device_plugin.core import health as health_core
from hami_device_plugin.core import region
from hami_device_plugin.core.admission import MATCHED_SERVED_AGAIN
from hami_device_plugin.core.allocation import ContainerAllocation, InjectionConfig, container_allocation
from hami_device_plugin.core.claims import PodPatch, consumed_patch
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import HEALTHY, UNHEALTHY, Gpu, VirtualDevice
from hami_device_plugin.core.mig import mig_container_allocation
from hami_device_plugin.core.pods import DEFAULT_SCHEDULER_NAMES, Assignment, NoMatch, PodRecord
from hami_device_plugin.core.records import container_record
from hami_device_plugin.core.topology import topology_preferred

log = get_logger(__name__)
pb, pb_grpc = load_protos()


class AllocateError(Exception):
    """Allocate cannot be answered; the message goes to kubelet (and the pod's status)."""


class DevicePluginState:
    """The plugin of one node (module docstring). Lives on one event loop."""

    def __init__(
        self,
        *,
        node: str,
        gpus: tuple[Gpu, ...],
        device_config: DeviceConfig,
        injection: InjectionConfig,
        metrics: PluginMetrics,
        pods: PodCache | None,
        allocate_wait: float,
        ignored_xids: frozenset[int] = health_core.DEFAULT_IGNORED_XIDS,
        clock: Callable[[], float] = time.monotonic,
        scheduler_names: frozenset[str] = DEFAULT_SCHEDULER_NAMES,
        record_store: RecordStore | None = None,
        pod_resources: PodResourcesClient | None = None,
    ) -> None:
        """``pod_resources``: kubelet's pod-resources API (None: not asked; the inference decides). Allocate is
        answered once :meth:`connect` gave the API client (never with --no-kubernetes)."""
        self.health = DeviceHealth(
            gpus=gpus,
            device_config=device_config,
            injection=injection,
            metrics=metrics,
            ignored_xids=ignored_xids,
            clock=clock,
            scheduler_names=scheduler_names,
        )
        self.claims = Claims(node=node, pods=pods, record_store=record_store)
        self.patches = PodPatches(pods=pods, metrics=metrics)
        self.topology_scores: Mapping[str, Mapping[str, int]] = {}
        """HAMi's pair scores of the node's GPUs (set by the wiring once NVML was read): GetPreferredAllocation's
        choice for multi-GPU containers no scheduled placement names (core/topology.py)."""
        self.recovery = Recovery(
            node=node, pods=pods, claims=self.claims, policy=self.health.placement_policy, on_claimed=self._consumed
        )
        self._identifier = None
        if pods is not None:
            self._identifier = PodIdentifier(
                node=node,
                pods=pods,
                health=self.health,
                claims=self.claims,
                metrics=metrics,
                clock=clock,
                pod_resources=pod_resources,
            )
        self._node, self._metrics, self._allocate_wait, self._clock = node, metrics, allocate_wait, clock
        self._connected = False
        self.mig: MigRuntime | None = None
        """Dynamic MIG (app/mig.py), set by the wiring when the driver can do MIG; used in operating mode mig."""

    def connect(self, kube: KubeClient) -> None:
        """The API client: pods can be identified and patched from now on."""
        self._connected = True
        self.patches.connect(kube)

    async def preferred(self, available: list[str], must_include: list[str], size: int) -> tuple[str, ...]:
        self._metrics.preferred.inc()
        if self._identifier is None:
            chosen = self._topology_preferred(available, must_include, size)
            if chosen is not None:
                return chosen
            return tuple([*must_include, *[d for d in available if d not in must_include]][:size])
        return await self._identifier.preferred(available, must_include, size, self._topology_preferred)

    def _topology_preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> tuple[str, ...] | None:
        """The topology-aware set for a container of several GPUs (a single device keeps kubelet's order: the
        extender chose its card, or nothing did)."""
        if size < 2 or not self.topology_scores:
            return None
        chosen = topology_preferred(self.topology_scores, available, must_include, size)
        if chosen is not None:
            log.info("preferred_by_topology", devices=list(chosen))
        return chosen

    async def allocate(self, device_ids: list[str]) -> ContainerAllocation:
        started = time.perf_counter()
        matched_by = "none"
        try:
            assignment = await self._identify(device_ids)
            matched_by = assignment.matched_by
            allocation = await self._commit(assignment)
        except AllocateError:
            self._metrics.allocations.labels("error", matched_by).inc()
            raise
        finally:
            self._metrics.allocate_seconds.observe(time.perf_counter() - started)
        self._metrics.allocations.labels("success", matched_by).inc()
        return allocation

    async def _identify(self, device_ids: list[str]) -> Assignment:
        if self._identifier is None or not self._connected:
            raise AllocateError(
                "hami-device-plugin runs without the Kubernetes API (--no-kubernetes), so it cannot tell which pod "
                "these devices are for; run it with API access"
            )
        unhealthy = [d for d in device_ids if d in {v.id for v in self.health.devices() if not v.healthy}]
        if unhealthy:
            log.warning("allocate_unhealthy_devices", devices=unhealthy)
        deadline = self._clock() + self._allocate_wait
        await self.recovery.wait(self._allocate_wait)
        result = await self._identifier.identify(device_ids, deadline)
        if isinstance(result, NoMatch):
            raise AllocateError(result.reason)
        return result

    async def _commit(self, assignment: Assignment) -> ContainerAllocation:
        """Claim the container, prepare its directory, answer. The claim and the per-container directory (which
        survives a restart: app/recovery.py) record the allocation; the pod patch follows off the critical path."""
        pod = assignment.pod
        again = assignment.matched_by == MATCHED_SERVED_AGAIN
        self.claims.claim(pod.uid, assignment.position)
        container = assignment.container
        try:
            allocation = container_allocation(pod, container, assignment.devices, self.health.injection)
            if self.health.device_config.mode == MODE_MIG:
                allocation = await self._mig_allocation(assignment, allocation)
            files.prepare_container_dir(Path(allocation.cache_dir))
            if allocation.spec_file is not None and allocation.spec is not None:
                # mounted read-only: must exist. Served again: the one published stays (the container may run
                # with it); only a lost one is written again, from the same grant.
                files.publish_spec(Path(allocation.spec_file), allocation.spec, replace=not again)
        except (OSError, ValueError) as exc:
            if not again:  # a pod served before keeps its phase: its first answer stands
                self.patches.patch(pod, PodPatch.of(pod, {names.BIND_PHASE: BindPhase.FAILED.value}))
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
        self.claims.keep(container_record(pod, container, assignment.devices))
        done = self._consumed(pod)
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

    async def _mig_allocation(self, assignment: Assignment, base: ContainerAllocation) -> ContainerAllocation:
        """Operating mode mig: the container's reserved MIG instances (created now, or found) instead of shares."""
        if self.mig is None:
            raise ValueError(
                "this node is in operating mode mig but the GPU driver offers no MIG support; set operatingmode "
                "hami-core for this node"
            )
        instances = await self.mig.realize(assignment.pod, assignment.position, assignment.devices)
        return mig_container_allocation(
            base,
            instances,
            with_hamicore=self.mig.with_hamicore,
            strategies=self.health.injection.device_list_strategies,
        )

    def _consumed(self, pod: PodRecord) -> bool:
        """Queue the pod's to-allocate list with every claimed entry emptied; True when none is left."""
        patch, done = consumed_patch(pod, self.claims.held, self._node)
        self.patches.patch(pod, patch)
        return done


def allocation_response(allocation: ContainerAllocation) -> Any:
    return pb.ContainerAllocateResponse(
        envs=dict(allocation.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in allocation.mounts
        ],
    )


def plugin_options(state: DevicePluginState) -> Any:
    preferred = state.health.device_config.preferred_allocation
    return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=preferred)


async def change_or_stop(change: Coroutine[Any, Any, Any], stopping: asyncio.Event) -> None:
    """Until ``change`` completes or ``stopping`` is set (a ListAndWatch stream's wait for its next answer)."""
    changed = asyncio.ensure_future(change)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({changed, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()
        stop.cancel()


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
        return plugin_options(self._state)

    async def ListAndWatch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        state = self._state.health
        while not self._stopping.is_set():
            version = state.version
            devices = state.devices()
            log.info("list_and_watch_send", devices=len(devices), healthy=sum(1 for d in devices if d.healthy))
            yield pb.ListAndWatchResponse(devices=[device_message(d) for d in devices])
            await change_or_stop(state.wait_change(version), self._stopping)

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
