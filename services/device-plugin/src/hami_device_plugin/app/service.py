"""Wiring: builds the plugin from its settings and declares its parts to the service kit.

Parts: the kubelet link (socket, registration, restarts), the pod watch, the inventory publisher, the GPU
topology publisher (app/topology.py), the per-node config watcher, GPU health (XID thread + probes), the
monitor and the metrics/health HTTP server. Any part failing for good ends the process (the DaemonSet restarts
it); transient API errors are retried inside the parts. On SIGTERM the kubelet link stops first and the pod
patches are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from hami_shared.config import ConfigError
from hami_shared.logging import get_logger
from hami_shared.names import NODE_REGISTER
from hami_shared.node_register import MODE_MIG, DeviceInfo, encode_node_devices
from hami_shared.service.kube import KubeError, api_client
from hami_shared.service.lifecycle import Lifecycle
from hami_shared.service.status import add_metrics, add_probes

from hami_device_plugin.adapters.kube import KubeClient, pod_reflector
from hami_device_plugin.adapters.nvml import GpuDriver, NvmlDriver, XidWatcher
from hami_device_plugin.adapters.nvml_topology import NvmlInterconnect
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.podresources import PodResourcesClient
from hami_device_plugin.adapters.procfs import ProcFs
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.app import topology
from hami_device_plugin.app.backstop import REASON, Backstop
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.kubelet_link import KubeletLink
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.mig import MigRuntime, load_geometries, mig_driver
from hami_device_plugin.app.mig_static import StaticMig, StaticServicer, static_options, static_socket_name
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.app.plugin import DevicePluginState
from hami_device_plugin.app.settings import Settings, device_config_for_node, node_config_warnings_of
from hami_device_plugin.core.config import MIG_STRATEGY_NONE, DeviceConfig, NodeConfigError, regions_mount_problem
from hami_device_plugin.core.inventory import Gpu, register_devices, usable_gpus

log = get_logger(__name__)

CONFIG_POLL_S = 2.0


def version() -> str:
    try:
        return importlib.metadata.version("hami-device-plugin")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class App:
    """One running plugin, declared to the service kit by :meth:`assemble`."""

    def __init__(self, settings: Settings, driver: GpuDriver) -> None:
        self.settings = settings
        self.driver = driver
        self.metrics = PluginMetrics.create(version(), node=settings.node_name, legacy=settings.legacy_metrics)
        self.pods = (
            PodCache(settings.resource_names, on_unreadable=self.metrics.pods_unreadable.inc)
            if settings.kubernetes
            else None
        )
        self.kube: KubeClient | None = None
        self.records = RecordStore(settings.regions_dir)
        gpus = driver.discover()
        self.static: StaticMig | None = None
        mig = mig_driver(driver)
        device_config = device_config_for_node(settings)
        if device_config.mig_strategy != MIG_STRATEGY_NONE:
            if mig is None:
                log.error(
                    "static_mig_unsupported", hint="the GPU driver offers no MIG calls; no instance is advertised"
                )
            else:
                self.static = StaticMig(
                    driver=mig,
                    gpus=self._static_mig_gpus(gpus, device_config),
                    strategy=device_config.mig_strategy,
                    count_resource=settings.resource_name,
                    device_list_strategies=settings.injection(device_config).device_list_strategies,
                )
                self.static.set_plan(self.static.scan())
        device_config = self._device_config()
        self.state = DevicePluginState(
            node=settings.node_name,
            gpus=gpus,
            device_config=device_config,
            injection=settings.injection(device_config),
            metrics=self.metrics,
            pods=self.pods,
            allocate_wait=settings.allocate_wait,
            ignored_xids=settings.ignored_xid_codes,
            scheduler_names=frozenset(settings.scheduler_names),
            record_store=self.records,
            pod_resources=(
                PodResourcesClient(
                    settings.pod_resources_socket, settings.resource_name, timeout=settings.pod_resources_timeout
                )
                if settings.kubernetes and settings.pod_resources
                else None
            ),
        )
        self.link = KubeletLink(
            state=self.state,
            metrics=self.metrics,
            directory=settings.device_plugin_dir,
            socket_name=settings.socket_name,
            kubelet_socket=settings.kubelet_socket,
            resource_name=settings.resource_name,
            stop_grace=settings.allocate_wait + 1.0,
            **self._static_main_service(),
        )
        self.monitor = Monitor(
            regions_dir=settings.regions_dir,
            driver=driver,
            gpus=self.state.health.current_gpus,
            pods=self.pods,
            metrics=self.metrics,
            cleanup_grace=settings.cleanup_grace,
            records=self.state.claims.record,
            forget_record=self.state.claims.forget,
            record_names=self.records.names,
            live_pod_uids=self._live_pod_uids,
            backstop=Backstop(
                procs=ProcFs(),
                metrics=self.metrics,
                policy=lambda: self.state.health.device_config.memory_policy,
                tolerance=settings.memory_tolerance(),
            ),
            pod_event=self._over_limit_event,
        )
        self.inventory_published = asyncio.Event()
        if mig is not None:
            self.state.mig = MigRuntime(
                node=settings.node_name,
                driver=mig,
                pods=self.pods,
                patches=self.state.patches,
                metrics=self.metrics,
                # Cards the operator's filterdevices exclude are never switched to MIG mode nor emptied.
                gpus=lambda: usable_gpus(self.state.health.current_gpus(), self.state.health.device_config),
                config=lambda: self.state.health.device_config,
                geometries=load_geometries(settings.mig_geometries or settings.hami_device_config),
                with_hamicore=settings.mig_with_hamicore,
                on_change=self.state.health.notify_change,
            )
            self.state.health.slot_counts = self.state.mig.slot_counts

    async def assemble(self, life: Lifecycle) -> None:
        s = self.settings
        log.info(
            "starting",
            node=s.node_name,
            gpus=[g.uuid for g in self.state.health.gpus],
            split_count=self.state.health.device_config.split_count,
            resource=s.resource_name,
            device_plugin_dir=str(s.device_plugin_dir),
            hook_path=str(s.hook_path),
            regions_path=str(s.regions_dir),
            pod_resources_socket=str(s.pod_resources_socket) if s.pod_resources else "",
            kubernetes=s.kubernetes,
        )
        # What earlier runs of the plugin decided for the containers still on the node (see core/records.py).
        self.state.claims.load(await asyncio.to_thread(self.records.load))
        api = None
        if s.kubernetes:
            api = await life.resources.enter_async_context(api_client(s.kubeconfig))
            self.kube = KubeClient(api)
            self.state.connect(self.kube)
        bound = await life.serve_http(self._http_app(), s.metrics_address)
        log.info("metrics_listening", addresses=bound)
        loop = asyncio.get_running_loop()
        watcher = XidWatcher(
            self.driver,
            on_xid=lambda uuid, code: _call_soon(loop, self.state.health.on_xid, uuid, code),
            on_error=lambda message: _call_soon(loop, self.state.health.set_all_unhealthy, message),
        )
        watcher.start()
        life.resources.callback(watcher.stop)
        if s.enable_topology_score:
            life.task(self._topology_publisher().run, name="gpu-topology")
        link = life.task(self.link.run, name="kubelet-link")
        life.task(self._probe_health, name="health-probes")
        life.task(lambda: self.monitor.run(s.monitor_interval), name="monitor")
        life.task(self._watch_node_config, name="node-config")
        life.task(self.state.claims.run_record_writer, name="container-records")
        if self.static is not None:
            life.task(self._run_static, name="static-mig")
        if self.state.mig is not None:
            life.task(lambda: self._run_mig(s.mig_reconcile_interval), name="mig")
        elif self.state.health.device_config.mode == MODE_MIG:
            log.error("mig_unsupported", hint="the GPU driver offers no MIG calls; every Allocate is refused")
        if self.kube is not None and self.pods is not None and api is not None:
            life.task(pod_reflector(api, s.node_name, self.pods).run, name="pod-watch")
            life.task(self._publish_inventory, name="inventory")
            life.task(self.state.patches.run, name="pod-patches")
            life.task(self.kube.events.run, name="pod-events")
            life.task(lambda: self.state.recovery.run(s.regions_dir), name="recover-claims")

        async def stop_link_first() -> None:
            # The GetPreferredAllocation and Allocate calls in flight are answered (up to --allocate-wait + 1 s)
            # while the pod watch and the patch writer still run; an Allocate cut off here would fail its pod's
            # admission (seen in tests/e2e/test_real_node_burst_restarts.py).
            log.info("stopping_kubelet_link", pending_pod_patches=self.state.patches.pending())
            await link.stop()
            await self.state.patches.flush(within=5.0)

        life.on_stop(stop_link_first)

    def _static_mig_gpus(self, initial: Sequence[Gpu], operator: DeviceConfig) -> Callable[[], Sequence[Gpu]]:
        """Static MIG's cards: only those the operator's filterdevices leave to the plugin (``operator``: the config
        before the partitioned cards are filtered from hamicore sharing, _device_config)."""

        def current() -> Sequence[Gpu]:
            return usable_gpus(self.state.health.current_gpus() if hasattr(self, "state") else initial, operator)

        return current

    def _device_config(self) -> DeviceConfig:
        """The node's device config; under static MIG, the partitioned cards filtered out (neither shared through
        hamicore nor registered: core/mig_static.py)."""
        config = device_config_for_node(self.settings)
        if self.static is None or not self.static.plan.partitioned:
            return config
        return dataclasses.replace(config, filter_uuids=config.filter_uuids | self.static.plan.partitioned)

    def _static_main_service(self) -> dict[str, Any]:
        """Under ``single`` with the node partitioned, the plugin's own resource serves the instances."""
        static, resource = self.static, self.settings.resource_name
        if static is None or resource not in static.plan.resources:
            return {}
        return {"servicer": lambda stopping: StaticServicer(static, resource, stopping), "options": static_options}

    async def _run_static(self) -> None:
        """Re-read the static plan; serve each ``nvidia.com/mig-<profile>`` resource on its own socket as it appears
        (one that disappears stays registered with no device: kubelet keeps its pods' accounting)."""
        static, s = self.static, self.settings
        assert static is not None

        def on_change(_: object) -> None:
            config = self._device_config()
            self.state.health.set_device_config(config, s.injection(config))

        links: set[str] = set()
        async with asyncio.TaskGroup() as group:
            group.create_task(static.run(s.mig_reconcile_interval, on_change))
            while True:
                version = static.version
                for resource in static.plan.resources:
                    if resource == s.resource_name or resource in links:
                        continue
                    links.add(resource)
                    link = KubeletLink(
                        state=self.state,
                        metrics=self.metrics,
                        directory=s.device_plugin_dir,
                        socket_name=static_socket_name(resource),
                        kubelet_socket=s.kubelet_socket,
                        resource_name=resource,
                        servicer=functools.partial(StaticServicer, static, resource),
                        options=static_options,
                    )
                    group.create_task(link.run())
                await static.wait_change(version)

    async def _run_mig(self, interval: float) -> None:
        assert self.state.mig is not None
        if self.pods is not None:
            # the startup adoption reads the pods: wait for the first list (it also retries on its own)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30.0):
                    await self.pods.synced.wait()
        await self.state.mig.run(interval)

    def _over_limit_event(self, pod: Mapping[str, str], message: str) -> None:
        if self.kube is not None and not self.kube.pod_event(
            pod, event_type="Warning", reason=REASON, message=message, node=self.settings.node_name
        ):
            log.warning("pod_event_dropped", pod=pod.get("name"), reason=REASON, hint="the Event queue is full")

    async def _live_pod_uids(self) -> frozenset[str] | None:
        """UIDs of the pods bound to this node from a fresh list (None without the API or when it fails)."""
        if self.kube is None:
            return None
        try:
            return await self.kube.list_pod_uids(self.settings.node_name)
        except KubeError as exc:
            log.warning("pod_list_for_cleanup_failed", error=str(exc))
            return None

    async def _probe_health(self) -> None:
        s = self.settings
        while True:
            for gpu in self.state.health.gpus:
                answered = await asyncio.to_thread(self.driver.probe, gpu.uuid)
                self.state.health.on_probe(gpu.uuid, answered, s.health_recovery)
            await asyncio.sleep(s.health_probe_interval)

    def _topology_publisher(self) -> topology.TopologyPublisher:
        def use(scores: Mapping[str, Mapping[str, int]]) -> None:
            self.state.topology_scores = scores

        return topology.TopologyPublisher(
            node=self.settings.node_name,
            reader=NvmlInterconnect(),
            health=self.state.health,
            on_scores=use,
            kube=self.kube,
            interval=self.settings.register_interval,
        )

    async def _publish_inventory(self) -> None:
        assert self.kube is not None
        s = self.settings
        published: str | None = None
        while True:
            health = self.state.health
            version = health.version
            value = encode_node_devices(self._register(health))
            try:
                if value != published:
                    current = await self.kube.node_annotation(s.node_name, NODE_REGISTER)
                    if current != value:
                        await self.kube.patch_node_annotations(s.node_name, {NODE_REGISTER: value})
                        self.metrics.inventory_patches.inc()
                        log.info("inventory_published", node=s.node_name, devices=value)
                    published = value
                    self.inventory_published.set()
            except KubeError as exc:
                log.warning("inventory_patch_failed", node=s.node_name, error=str(exc))
                await asyncio.sleep(min(5.0, s.register_interval))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.register_interval):
                    await health.wait_change(version)
            if health.version == version:
                published = None  # periodic re-check: someone may have edited the annotation

    def _register(self, health: DeviceHealth) -> tuple[DeviceInfo, ...]:
        if health.device_config.mode == MODE_MIG and self.state.mig is not None:
            return self.state.mig.register_devices(health.current_gpus(), health.device_config)
        return register_devices(health.current_gpus(), health.device_config)

    async def _watch_node_config(self) -> None:
        s = self.settings
        if s.node_config is None:
            return
        seen: tuple[float, int] | None = None
        while True:
            try:
                st = s.node_config.stat()
                identity = (st.st_mtime, st.st_size)
            except OSError:
                identity = None
            if identity != seen:
                seen = identity
                try:
                    config = self._device_config()
                    self.state.health.set_device_config(config, s.injection(config))
                    for warning in node_config_warnings_of(s):
                        log.warning("config_warning", detail=warning)
                except NodeConfigError as exc:
                    log.error("node_config_rejected", path=str(s.node_config), error=str(exc))
            await asyncio.sleep(CONFIG_POLL_S)

    def _not_ready(self) -> str | None:
        waiting = [] if self.link.registered.is_set() else ["registration with kubelet"]
        if self.pods is not None and not self.pods.synced.is_set():
            waiting.append("pod list")
        return "waiting for " + ", ".join(waiting) if waiting else None

    def _http_app(self) -> web.Application:
        app = web.Application()
        add_metrics(app, self.metrics.registry)
        add_probes(app, ready=self._not_ready)
        return app


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """Run ``callback`` on the event loop from another thread (the XID watcher's)."""
    with contextlib.suppress(RuntimeError):  # the loop closed while the thread was waiting
        loop.call_soon_threadsafe(callback, *args)


async def assemble(settings: Settings, life: Lifecycle) -> None:
    """The plugin's parts for the service kit (``cli.main``), after its directories are checked."""
    check_paths(settings)
    driver = NvmlDriver(settings.nvml_library).open()
    life.resources.callback(driver.close)
    await App(settings, driver).assemble(life)


def check_paths(settings: Settings) -> None:
    """Refuse settings whose directories cannot work, with what to change."""
    for directory, flag in (
        (settings.device_plugin_dir, "--device-plugin-dir"),
        (settings.hook_path, "--hook-path"),
        (settings.regions_dir, "--regions-path"),
    ):
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{flag} {directory} exists and is not a directory")
    if not settings.require_regions_tmpfs:
        return
    # --require-regions-tmpfs: a dedicated, size-limited tmpfs
    path = os.path.realpath(settings.regions_dir)
    try:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
        st = os.statvfs(path)
    except OSError as exc:
        raise ConfigError(f"--regions-path {path}: cannot check its mount: {exc}") from exc
    problem = regions_mount_problem(mountinfo, path, st.f_blocks * st.f_frsize, settings.regions_tmpfs_max_mib << 20)
    if problem is not None:
        raise ConfigError(f"--require-regions-tmpfs: {problem}")
