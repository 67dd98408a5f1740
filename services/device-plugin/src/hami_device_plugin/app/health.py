"""The node's GPUs as kubelet sees them: their health, the device config, and a version that changes with both.

NVML XIDs and probes (adapters/nvml.py, run by app/service.py) feed :class:`DeviceHealth`; the health decisions
are core/health.py's. ListAndWatch sends :meth:`DeviceHealth.devices` again whenever the version changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping

from hami_shared.logging import get_logger

from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core import health as health_core
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu, VirtualDevice, register_devices, virtual_devices
from hami_device_plugin.core.pods import DEFAULT_SCHEDULER_NAMES, PlacementPolicy

log = get_logger(__name__)


class DeviceHealth:
    """GPUs, health and device config of one node. Lives on one event loop."""

    def __init__(
        self,
        *,
        gpus: tuple[Gpu, ...],
        device_config: DeviceConfig,
        injection: InjectionConfig,
        metrics: PluginMetrics,
        ignored_xids: frozenset[int] = health_core.DEFAULT_IGNORED_XIDS,
        clock: Callable[[], float] = time.monotonic,
        scheduler_names: frozenset[str] = DEFAULT_SCHEDULER_NAMES,
    ) -> None:
        self.gpus, self.device_config, self.injection = gpus, device_config, injection
        self._metrics, self._ignored_xids, self._clock = metrics, ignored_xids, clock
        self._scheduler_names = scheduler_names
        self._health = {
            g.uuid: health_core.GpuHealth(healthy=g.healthy, reason="" if g.healthy else "unreadable at discovery")
            for g in gpus
        }
        self._policy: tuple[int, PlacementPolicy] | None = None
        self.slot_counts: Callable[[], Mapping[str, int] | None] = lambda: None
        """Per-GPU replica counts replacing the split count (MIG mode: the register's count, app/mig.py)."""
        self.version = 0  # changes whenever devices() may answer differently
        self._changed = asyncio.Event()
        self._update_metrics()

    def current_gpus(self) -> tuple[Gpu, ...]:
        return tuple(dataclasses.replace(g, healthy=self._health[g.uuid].healthy) for g in self.gpus)

    def devices(self) -> tuple[VirtualDevice, ...]:
        return virtual_devices(self.current_gpus(), self.device_config, self.slot_counts())

    def placement_policy(self) -> PlacementPolicy:
        """Which placements Allocate accepts: our schedulers' pods, on this node's GPUs within their memory."""
        if self._policy is None or self._policy[0] != self.version:
            memory = {d.id: d.devmem for d in register_devices(self.gpus, self.device_config)}
            self._policy = (self.version, PlacementPolicy(schedulers=self._scheduler_names, gpu_memory_mib=memory))
        return self._policy[1]

    async def wait_change(self, version: int) -> None:
        while self.version == version:
            await self._changed.wait()

    def on_xid(self, uuid: str, code: int) -> None:
        if uuid in self._health:
            log.info("nvml_xid", uuid=uuid, xid=code, ignored=code in self._ignored_xids)
            self._set(uuid, health_core.on_xid(self._health[uuid], code, self._clock(), ignored=self._ignored_xids))

    def on_probe(self, uuid: str, answered: bool, recovery_seconds: float) -> None:
        if uuid in self._health:
            now = self._clock()
            self._set(uuid, health_core.on_probe(self._health[uuid], answered, now, recovery_seconds=recovery_seconds))

    def set_all_unhealthy(self, reason: str) -> None:
        for uuid in self._health:
            self._set(uuid, health_core.GpuHealth(healthy=False, last_error=self._clock(), reason=reason))

    def set_device_config(self, config: DeviceConfig, injection: InjectionConfig) -> None:
        if config != self.device_config:
            log.info(
                "device_config_changed",
                split_count=config.split_count,
                mode=config.mode,
                gpu_memory_policy=config.memory_policy,
            )
            self.device_config, self.injection = config, injection
            self._bump()

    def _set(self, uuid: str, new: health_core.GpuHealth) -> None:
        old = self._health[uuid]
        self._health[uuid] = new
        if old.healthy != new.healthy:
            log.warning("gpu_health_changed", uuid=uuid, healthy=new.healthy, reason=new.reason or "recovered")
            self._bump()

    def notify_change(self) -> None:
        """Something the inventory shows changed outside health and config (MIG profiles): publish again."""
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._update_metrics()

    def _update_metrics(self) -> None:
        devices = self.devices()
        self._metrics.devices.set(len(devices))
        self._metrics.healthy_devices.set(sum(1 for d in devices if d.healthy))
