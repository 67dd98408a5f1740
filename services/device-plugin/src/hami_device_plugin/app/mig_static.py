"""Static MIG at run time (``migstrategy: single | mixed``): the instances an operator made, listed through NVML,
advertised per resource (core/mig_static.py decides which) and answered at Allocate with their MIG UUIDs.

:class:`StaticMig` re-lists the cards every interval and bumps its version when the plan changed (an operator
repartitioned a card, a GPU became unhealthy). :class:`StaticServicer` is the v1beta1 DevicePlugin service of one
static resource over it; the wiring (app/service.py) serves one per resource on its own socket through
:class:`~hami_device_plugin.app.kubelet_link.KubeletLink` (``nvidia.com/mig-<profile>`` under ``mixed``; under
``single`` the plugin's own ``nvidia.com/gpu`` endpoint serves the instances).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from hami_shared.logging import get_logger

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.adapters.nvml_mig import MigDriver
from hami_device_plugin.app.plugin import change_or_stop, pb, pb_grpc
from hami_device_plugin.core.inventory import HEALTHY, UNHEALTHY, Gpu
from hami_device_plugin.core.mig_static import StaticCard, StaticDevice, StaticPlan, static_allocation, static_plan

log = get_logger(__name__)


class StaticMig:
    """The node's static MIG plan, re-read every interval (module docstring). Lives on one event loop."""

    def __init__(
        self,
        *,
        driver: MigDriver,
        gpus: Callable[[], Sequence[Gpu]],
        strategy: str,
        count_resource: str,
        device_list_strategies: frozenset[str],
    ) -> None:
        self._driver, self._gpus, self._strategy, self._count = driver, gpus, strategy, count_resource
        self.device_list_strategies = device_list_strategies
        self.plan = StaticPlan()
        self.version = 0
        self._changed = asyncio.Event()

    def scan(self) -> StaticPlan:
        """The plan from NVML now (blocking)."""
        cards = []
        for gpu in self._gpus():
            try:
                if not self._driver.mig_capable(gpu.uuid):
                    cards.append(StaticCard(uuid=gpu.uuid, mig_enabled=False, healthy=gpu.healthy))
                    continue
                enabled = self._driver.mig_mode(gpu.uuid)[0]
                instances = self._driver.mig_instances(gpu.uuid) if enabled else ()
            except NvmlError as exc:
                log.warning("static_mig_card_unreadable", gpu=gpu.uuid, error=str(exc))
                continue
            cards.append(StaticCard(uuid=gpu.uuid, mig_enabled=enabled, instances=instances, healthy=gpu.healthy))
        return static_plan(cards, self._strategy, self._count)

    def set_plan(self, plan: StaticPlan) -> bool:
        if plan == self.plan:
            return False
        if plan.error is not None:
            log.error("static_mig_refused", error=plan.error)
        log.info(
            "static_mig_devices",
            strategy=self._strategy,
            resources={r: [d.id for d in devices] for r, devices in plan.resources.items()},
            partitioned=sorted(plan.partitioned),
        )
        self.plan = plan
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def run(self, interval: float, on_change: Callable[[StaticPlan], None]) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.set_plan(await asyncio.to_thread(self.scan)):
                on_change(self.plan)

    async def wait_change(self, version: int) -> None:
        if self.version == version:
            await self._changed.wait()

    def devices(self, resource: str) -> tuple[StaticDevice, ...]:
        return self.plan.resources.get(resource, ())


def static_socket_name(resource: str) -> str:
    """The socket of a static resource in kubelet's device-plugin directory: ``hami-nvidia-mig-1g.5gb.sock``."""
    return "hami-" + resource.replace("/", "-").replace(".com", "") + ".sock"


def static_options() -> Any:
    return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False)


_ServicerBase: Any = pb_grpc.DevicePluginServicer


class StaticServicer(_ServicerBase):  # type: ignore[misc]
    """The DevicePlugin service of one static MIG resource: its instances as devices, MIG UUIDs at Allocate."""

    def __init__(self, mig: StaticMig, resource: str, stopping: asyncio.Event) -> None:
        self._mig, self._resource, self._stopping = mig, resource, stopping

    async def GetDevicePluginOptions(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return static_options()

    async def ListAndWatch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        while not self._stopping.is_set():
            version = self._mig.version
            devices = self._mig.devices(self._resource)
            log.info("static_mig_list_and_watch_send", resource=self._resource, devices=len(devices))
            yield pb.ListAndWatchResponse(
                devices=[pb.Device(ID=d.id, health=HEALTHY if d.healthy else UNHEALTHY) for d in devices]
            )
            await change_or_stop(self._mig.wait_change(version), self._stopping)

    async def GetPreferredAllocation(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.PreferredAllocationResponse()

    async def Allocate(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        responses = []
        for container in request.container_requests:
            try:
                envs, mounts = static_allocation(
                    list(container.devices_ids), self._mig.devices(self._resource), self._mig.device_list_strategies
                )
            except ValueError as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            log.info("static_mig_allocated", resource=self._resource, devices=list(container.devices_ids))
            responses.append(
                pb.ContainerAllocateResponse(
                    envs=envs,
                    mounts=[
                        pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                        for m in mounts
                    ],
                )
            )
        return pb.AllocateResponse(container_responses=responses)

    async def PreStartContainer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.PreStartContainerResponse()
