"""The node monitor: every interval, read each container's accounting region, publish the metrics,
write the limiter's contention and priority signals and the heartbeat, and remove directories of pods
that are gone.

The heartbeat (region header: ``monitor_generation`` + 1 and ``monitor_interval_ms`` every scan) tells
hamicore that the signals are alive: with the ``default`` core policy it limits only while ``contended``,
and it honours ``priority_hold`` only while the generation keeps moving (stale after three intervals).

Container identity comes from the directory name ``<podUID>_<container>`` and the pod cache (namespace,
name). Utilisation per container is NVML's per-process SM samples of the container's processes
(``host_pid`` from the region when hamicore filled it, else ``pid``: the same in a pod sharing the host
PID namespace, as HAMi's monitor assumes too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from hami_shared.logging import get_logger
from hami_shared.node_register import model_type_name

from hami_device_plugin.adapters import files
from hami_device_plugin.adapters.nvml import GpuDriver
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import ContainerDeviceSample, HostDeviceSample, PluginMetrics
from hami_device_plugin.core import monitor as monitor_core
from hami_device_plugin.core import region as region_core
from hami_device_plugin.core.inventory import Gpu

log = get_logger(__name__)


class Monitor:
    def __init__(
        self,
        *,
        hook_dir: Path,
        driver: GpuDriver | None,
        gpus: Callable[[], tuple[Gpu, ...]],
        pods: PodCache | None,
        metrics: PluginMetrics,
        cleanup_grace: float,
    ) -> None:
        self._hook_dir = hook_dir
        self._driver = driver
        self._gpus = gpus
        self._pods = pods
        self._metrics = metrics
        self._cleanup_grace = cleanup_grace
        self.scans = 0
        self._unreadable: set[Path] = set()
        self._interval_ms = 0

    async def run(self, interval: float) -> None:
        self._interval_ms = max(1, round(interval * 1000))
        while True:
            try:
                await self.scan_once()
            except Exception:  # one bad scan must not stop monitoring; logged with the trace
                log.exception("monitor_scan_failed")
            await asyncio.sleep(interval)

    async def scan_once(self) -> None:
        gpus = self._gpus()
        utilization, hosts = await asyncio.to_thread(self._sample_driver, gpus)
        region_files = await asyncio.to_thread(files.region_files, self._hook_dir)
        snapshots: list[tuple[files.RegionFile, region_core.RegionSnapshot]] = []
        for rf in region_files:
            try:
                snapshots.append((rf, await asyncio.to_thread(files.read_region, rf.path)))
                self._unreadable.discard(rf.path)
            except (OSError, region_core.RegionFormatError) as exc:
                if rf.path not in self._unreadable:
                    log.warning("region_unreadable", path=str(rf.path), error=str(exc))
                    self._unreadable.add(rf.path)
        now_ns = time.monotonic_ns()
        activities = []
        measured: dict[tuple[str, int], int] = {}
        for rf, snap in snapshots:
            pids = [p.host_pid or p.pid for p in snap.processes]
            for device in snap.devices:
                if device.uuid is None:
                    continue
                util = monitor_core.container_utilization(pids, utilization.get(device.uuid, {}))
                measured[(rf.container_dir, device.index)] = util
                activities.append(
                    monitor_core.DeviceActivity(
                        container=rf.container_dir,
                        uuid=device.uuid,
                        priority=snap.task_priority,
                        active=monitor_core.is_active(util, device.last_kernel_ns, now_ns),
                    )
                )
        signals = monitor_core.limiter_signals(activities)
        samples = []
        for rf, snap in snapshots:
            parts = monitor_core.split_container_dir(rf.container_dir)
            uid, container = parts if parts else ("", rf.container_dir)
            pod = self._pods.get(uid) if self._pods is not None else None
            for device in snap.devices:
                util = measured.get((rf.container_dir, device.index), 0)
                signal = signals.get((rf.container_dir, device.uuid or ""))
                if device.uuid is not None and signal is not None:
                    await asyncio.to_thread(self._write_signals, rf.path, snap, device, util, signal)
                age = (
                    (now_ns - device.last_kernel_ns) / 1e9
                    if device.last_kernel_ns and now_ns > device.last_kernel_ns
                    else None
                )
                samples.append(
                    ContainerDeviceSample(
                        namespace=pod.namespace if pod else "",
                        pod=pod.name if pod else "",
                        container=container,
                        vdevice_index=device.index,
                        device_uuid=device.uuid or "",
                        used_bytes=device.used_bytes,
                        limit_bytes=device.limit_bytes,
                        peak_bytes=device.peak_bytes,
                        oom_count=device.oom_count,
                        utilization_pct=util,
                        last_kernel_age_s=age,
                        contended=signal.contended if signal else False,
                        priority_hold=signal.priority_hold if signal else False,
                    )
                )
        for rf, snap in snapshots:
            await asyncio.to_thread(self._write_heartbeat, rf.path, snap, self._interval_ms)
        self._metrics.monitor.containers = tuple(samples)
        self._metrics.monitor.hosts = hosts
        await self._cleanup()
        self.scans += 1

    def _sample_driver(self, gpus: tuple[Gpu, ...]) -> tuple[dict[str, dict[int, int]], tuple[HostDeviceSample, ...]]:
        if self._driver is None:
            return {}, ()
        utilization = {}
        hosts = []
        for gpu in gpus:
            utilization[gpu.uuid] = self._driver.process_utilization(gpu.uuid)
            memory = self._driver.memory(gpu.uuid)
            util_fn = getattr(self._driver, "utilization", None)
            hosts.append(
                HostDeviceSample(
                    device_uuid=gpu.uuid,
                    device_index=gpu.index,
                    device_type=model_type_name(gpu.name),
                    memory_used_bytes=memory[0] if memory else None,
                    memory_total_bytes=memory[1] if memory else None,
                    utilization_pct=util_fn(gpu.uuid) if util_fn else None,
                )
            )
        return utilization, tuple(hosts)

    @staticmethod
    def _write_signals(
        path: Path,
        snap: region_core.RegionSnapshot,
        device: region_core.DeviceUsage,
        utilization: int,
        signal: monitor_core.LimiterSignal,
    ) -> None:
        try:
            if device.utilization_pct != utilization:
                files.write_u32(
                    path, snap.device_field_offset(device.index, region_core.UTILIZATION_FIELD), utilization
                )
            if device.contended != signal.contended:
                files.write_u32(
                    path, snap.device_field_offset(device.index, region_core.CONTENDED_FIELD), int(signal.contended)
                )
            if device.priority_hold != signal.priority_hold:
                files.write_u32(
                    path,
                    snap.device_field_offset(device.index, region_core.PRIORITY_HOLD_FIELD),
                    int(signal.priority_hold),
                )
        except OSError as exc:
            log.warning("region_signal_write_failed", path=str(path), error=str(exc))

    @staticmethod
    def _write_heartbeat(path: Path, snap: region_core.RegionSnapshot, interval_ms: int) -> None:
        """After this scan's signals: the generation moves on, so hamicore knows they are current."""
        try:
            files.write_u32(path, region_core.MONITOR_INTERVAL_OFFSET, interval_ms)
            files.write_u32(
                path, region_core.MONITOR_GENERATION_OFFSET, region_core.next_generation(snap.monitor_generation)
            )
        except OSError as exc:
            log.warning("region_heartbeat_write_failed", path=str(path), error=str(exc))

    async def _cleanup(self) -> None:
        if self._pods is None or not self._pods.synced.is_set():
            return  # without a synced pod list every directory would look orphaned
        dirs = await asyncio.to_thread(files.container_dirs, self._hook_dir)
        stale = monitor_core.stale_container_dirs(
            dirs, self._pods.uids(), time.time(), grace_seconds=self._cleanup_grace
        )
        for name in stale:
            log.info("container_dir_removed", dir=name)
            await asyncio.to_thread(files.remove_container_dir, self._hook_dir, name)
            self._metrics.removed_dirs.inc()
