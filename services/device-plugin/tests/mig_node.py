"""The plugin of a node in MIG mode for tests: DevicePluginState with its MigRuntime over a given MIG driver (the
in-memory double, or the real NVML driver on hamicore's fake NVML), a pod cache and a pod API double that applies
the plugin's patches."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hami_device_plugin.adapters.nvml_mig import MigDriver
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.mig import MigRuntime
from hami_device_plugin.app.plugin import DevicePluginState
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu

NODE = "node-a"
MIG = DeviceConfig(mode="mig")


class Api:
    """Double of the pod API the plugin patches: keeps the pods, applies merge patches, answers the patched pod."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.patches: list[tuple[str, dict[str, str]]] = []

    async def patch_pod_metadata(
        self, namespace: str, name: str, *, annotations: dict[str, str], labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        await asyncio.sleep(0)
        pod = self.pods[name]
        pod["metadata"]["annotations"].update(annotations)
        pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
        self.patches.append((name, dict(annotations)))
        return json.loads(json.dumps(pod))


class MigNode:
    """The plugin of a MIG-mode node with its parts: pod cache, API double, MIG driver."""

    def __init__(
        self,
        tmp: Path,
        driver: MigDriver,
        pods: list[dict[str, Any]],
        *,
        gpus: Sequence[Gpu],
        hamicore: bool = False,
    ) -> None:
        gpus = tuple(gpus)
        self.driver, self.api, self.cache = driver, Api(pods), PodCache()
        self.metrics = PluginMetrics.create("test")
        self.state = DevicePluginState(
            node=NODE,
            gpus=gpus,
            device_config=MIG,
            injection=InjectionConfig(host_hook_dir=str(tmp / "hook")),
            metrics=self.metrics,
            pods=self.cache,
            allocate_wait=0.2,
        )
        self.state.recovery.nothing_to_recover()
        self.state.connect(self.api)  # type: ignore[arg-type]
        self.mig = self.state.mig = MigRuntime(
            node=NODE,
            driver=driver,
            pods=self.cache,
            patches=self.state.patches,
            metrics=self.metrics,
            gpus=lambda: gpus,
            config=lambda: MIG,
            with_hamicore=hamicore,
            on_change=self.state.health.notify_change,
        )
        self.state.health.slot_counts = self.mig.slot_counts

    def list_pods(self) -> None:
        self.cache.replace(json.loads(json.dumps(list(self.api.pods.values()))))

    async def flush(self) -> None:
        task = asyncio.create_task(self.state.patches.run())
        try:
            await self.state.patches.flush(within=5.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def info_samples(self) -> list[dict[str, str]]:
        return [
            s.labels
            for m in self.metrics.registry.collect()
            if m.name == "hami_mig_device_info"
            for s in m.samples
            if s.value == 1
        ]
