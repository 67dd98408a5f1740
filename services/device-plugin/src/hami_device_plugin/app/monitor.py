"""The node monitor: every interval, read each container's accounting region, publish the metrics,
write the limiter's contention and priority signals, the host pids of the container's processes and the
heartbeat, and remove directories of pods that are gone.

The heartbeat (region header: ``monitor_generation`` + 1 and ``monitor_interval_ms`` every scan) tells
hamicore that the signals are alive: with the ``default`` core policy it limits only while ``contended``,
and it honours ``priority_hold`` only while the generation keeps moving (stale after three intervals, at
least 2 s). The default interval (250 ms) keeps a priority hand-over under 1 s (about two intervals, plus
hamicore's 50 ms watch tick and the held launch's 10 ms re-read).

Nothing a container writes into its region decides anything beyond that container: node-wide decisions take the
plugin's own record of the container (core/records.py: its GPUs, limits and task priority as decided at Allocate),
and activity is NVML's per-process samples of the container's processes, by the host pids the monitor maps
through ``/proc`` (core/hostpid.py; the DaemonSet runs it with ``hostPID: true``). A region of a container the
plugin has no record of gets host pids but no signals and no heartbeat: without a live monitor hamicore's
``default`` policy enforces the share like ``force``.

With a backstop (app/backstop.py), each scan also hands NVML's per-process used memory and every allocated
container's slots, accounting and recorded limits to it, and posts the Events it asks for on the pods.

One scan is two worker-thread calls: NVML for every GPU, then every region file (opened once, read with one
``pread``, fields written with ``pwrite``, closed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

from hami_shared.logging import get_logger
from hami_shared.node_register import model_type_name

from hami_device_plugin.adapters import files
from hami_device_plugin.adapters.nvml import DeviceTelemetry, GpuDriver
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.procfs import ProcFs
from hami_device_plugin.app.backstop import Backstop
from hami_device_plugin.app.metrics import ContainerDeviceSample, HostDeviceSample, PluginMetrics
from hami_device_plugin.core import backstop as backstop_core
from hami_device_plugin.core import hostpid
from hami_device_plugin.core import monitor as monitor_core
from hami_device_plugin.core import region as region_core
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.records import ContainerRecord

log = get_logger(__name__)

CLEANUP_EVERY_S: Final = 10.0  # directories of deleted pods: no need to look at every scan
# Temperature, power, ECC and memory-controller utilisation are for the metrics only (HAMi reads them per scrape,
# every 5 s or more): not worth four more NVML calls per GPU on every 250 ms scan.
TELEMETRY_EVERY_S: Final = 5.0


@dataclasses.dataclass(slots=True)
class _OpenRegion:
    """One region during a scan: its file, open handle, what was read, and the utilisation decided."""

    rf: files.RegionFile
    handle: files.RegionHandle
    snap: region_core.RegionSnapshot
    record: ContainerRecord | None
    uid: str = ""
    container: str = ""
    utilization: dict[int, int] = dataclasses.field(default_factory=dict)  # device index -> percent

    def __post_init__(self) -> None:
        dir_name = self.rf.container_dir
        self.uid, self.container = monitor_core.split_container_dir(dir_name) or ("", dir_name)


class Monitor:
    def __init__(
        self,
        *,
        regions_dir: Path,
        driver: GpuDriver | None,
        gpus: Callable[[], tuple[Gpu, ...]],
        pods: PodCache | None,
        metrics: PluginMetrics,
        cleanup_grace: float,
        procs: hostpid.ProcSource | None = None,
        records: Callable[[str], ContainerRecord | None] = lambda name: None,
        forget_record: Callable[[str], None] = lambda name: None,
        record_names: Callable[[], set[str]] = set,
        live_pod_uids: Callable[[], Awaitable[frozenset[str] | None]] | None = None,
        verify_pod_cgroup: bool = True,
        backstop: Backstop | None = None,
        pod_event: Callable[[Mapping[str, str], str], None] | None = None,
    ) -> None:
        """``verify_pod_cgroup=False`` only for hamicore's tests (hamicore/tests/monitor_runner.py), whose client
        processes are in no pod's cgroup."""
        self._regions_dir = regions_dir
        self._driver = driver
        self._gpus = gpus
        self._pods = pods
        self._metrics = metrics
        self._cleanup_grace = cleanup_grace
        self._procs = procs if procs is not None else ProcFs()
        self._records = records
        self._forget_record = forget_record
        self._record_names = record_names
        self._live_pod_uids = live_pod_uids
        self._verify_pod_cgroup = verify_pod_cgroup
        self.host_pids = hostpid.HostPidMap()
        self._utilization = monitor_core.UtilizationTracker()
        self.scans = 0
        self._unreadable: set[str] = set()
        self._interval_ms = 0
        self._buffer = bytearray()
        self._last_cleanup = float("-inf")
        self._warned_unresolved = False
        self._backstop = backstop
        self._pod_event = pod_event  # (pod namespace/name/uid, message): the backstop's Event, queued
        self._process_memory: dict[str, Mapping[int, int]] = {}
        self._telemetry: dict[str, tuple[float, DeviceTelemetry]] = {}  # uuid -> (monotonic time, last read)
        self._backstop_gpus: list[backstop_core.ContainerGpu] = []
        self._backstop_labels: dict[tuple[str, str], list[str]] = {}
        self._backstop_unresolved: dict[str, frozenset[tuple[int, int]]] = {}

    async def run(self, interval: float) -> None:
        """Scans at a fixed rate (a slow scan delays the next one, it does not shift the schedule for good)."""
        self._interval_ms = max(1, round(interval * 1000))
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                await self.scan_once()
            except Exception:  # one bad scan must not stop monitoring; logged with the trace
                log.exception("monitor_scan_failed")
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def scan_once(self) -> None:
        started = time.perf_counter()
        views, hosts = await asyncio.to_thread(self._sample_driver, self._gpus())
        self._metrics.monitor.containers = await asyncio.to_thread(self._scan_regions, views)
        self._metrics.monitor.hosts = hosts
        if self._backstop is not None:
            await self._check_backstop(self._backstop)
        self._metrics.monitor_scan_seconds.observe(time.perf_counter() - started)
        if time.monotonic() - self._last_cleanup >= CLEANUP_EVERY_S:
            self._last_cleanup = time.monotonic()
            await self._cleanup()
        self.scans += 1

    def _sample_driver(
        self, gpus: tuple[Gpu, ...]
    ) -> tuple[dict[str, Mapping[int, int]], tuple[HostDeviceSample, ...]]:
        """Per GPU the per-process utilisation view (host pid -> %) and the host metrics."""
        if self._driver is None:
            return {}, ()
        views: dict[str, Mapping[int, int]] = {}
        hosts = []
        self._process_memory = {}
        for gpu in gpus:
            if self._backstop is not None:
                self._process_memory[gpu.uuid] = self._driver.process_memory(gpu.uuid) or {}
            per_pid, newest = self._driver.process_utilization(gpu.uuid, self._utilization.since(gpu.uuid))
            device_pct = self._driver.utilization(gpu.uuid)
            views[gpu.uuid] = self._utilization.update(gpu.uuid, per_pid, newest, device_pct, time.monotonic_ns())
            memory = self._driver.memory(gpu.uuid)
            telemetry = self._device_telemetry(self._driver, gpu.uuid)
            hosts.append(
                HostDeviceSample(
                    device_uuid=gpu.uuid,
                    device_index=gpu.index,
                    device_type=model_type_name(gpu.name),
                    memory_used_bytes=memory[0] if memory else None,
                    memory_total_bytes=memory[1] if memory else None,
                    utilization_pct=device_pct,
                    memory_utilization_pct=telemetry.memory_utilization_pct,
                    temperature_c=telemetry.temperature_c,
                    power_w=telemetry.power_w,
                    ecc_corrected=telemetry.ecc_corrected,
                    ecc_uncorrected=telemetry.ecc_uncorrected,
                )
            )
        return views, tuple(hosts)

    def _device_telemetry(self, driver: GpuDriver, uuid: str) -> DeviceTelemetry:
        """The GPU's telemetry, read again once TELEMETRY_EVERY_S has passed since the last read."""
        now = time.monotonic()
        last = self._telemetry.get(uuid)
        if last is None or now - last[0] >= TELEMETRY_EVERY_S:
            last = (now, driver.telemetry(uuid))
            self._telemetry[uuid] = last
        return last[1]

    def _open_regions(self) -> list[_OpenRegion]:
        opened = []
        unreadable = set()
        for rf in files.region_files(self._regions_dir):
            handle = None
            try:
                handle = files.RegionHandle(rf.path)
                snap = handle.read(self._buffer)
                problem = monitor_core.layout_problem(snap)
                if problem is not None:
                    raise region_core.RegionFormatError(problem)
                opened.append(_OpenRegion(rf, handle, snap, self._records(rf.container_dir)))
            except FileNotFoundError:  # not created yet (hamicore creates it at the first CUDA call) or removed
                if handle is not None:
                    handle.close()
            except (OSError, region_core.RegionFormatError) as exc:
                if handle is not None:
                    handle.close()
                unreadable.add(rf.path)
                if rf.path not in self._unreadable:  # said once per file while it stays unreadable
                    reason = (
                        exc.reason
                        if isinstance(exc, files.RegionRefusedError)
                        else ("format" if isinstance(exc, region_core.RegionFormatError) else "open")
                    )
                    self._metrics.regions_refused.labels(reason).inc()
                    log.warning("region_unreadable", path=rf.path, reason=reason, error=str(exc)[:300])
        self._unreadable = unreadable
        return opened

    def _scan_regions(self, views: Mapping[str, Mapping[int, int]]) -> tuple[ContainerDeviceSample, ...]:
        """Reads every region, decides, writes host pids, signals and heartbeats; returns the metric samples."""
        opened = self._open_regions()
        try:
            return self._decide_and_write(opened, views)
        finally:
            for r in opened:
                r.handle.close()

    def _resolve_host_pids(self, opened: list[_OpenRegion]) -> dict[hostpid.SlotKey, int]:
        indexes = self.host_pids.indexes
        # verify_pod for the containers the plugin allocated: their processes must be in their pod's cgroup
        verify = self._verify_pod_cgroup
        regions = [
            hostpid.RegionProcesses(r.rf.path, r.uid, r.snap.processes, verify and r.record is not None) for r in opened
        ]
        resolved = self.host_pids.resolve(regions, self._procs, time.monotonic_ns())
        if self.host_pids.indexes != indexes:
            self._metrics.monitor_proc_indexes.inc()
            if self.host_pids.last_unresolved:
                # Processes that died without giving their slot back stay unknown; so does everything when the
                # monitor does not see the host's processes. Said once at warning level, then at debug.
                report = log.debug if self._warned_unresolved else log.warning
                self._warned_unresolved = True
                report(
                    "host_pid_not_found",
                    processes=self.host_pids.last_unresolved,
                    hint="dead processes whose slots are not reclaimed yet, or the monitor is not in the host PID "
                    "namespace (the DaemonSet needs hostPID: true); hamicore then measures the whole GPU",
                )
        return resolved

    def _decide_and_write(
        self, opened: list[_OpenRegion], views: Mapping[str, Mapping[int, int]]
    ) -> tuple[ContainerDeviceSample, ...]:
        host_pids = self._resolve_host_pids(opened)
        now_ns = time.monotonic_ns()
        activities = []
        self._backstop_gpus, self._backstop_unresolved = [], {}
        for r in opened:
            pids = []
            mapped, unresolved = set(), set()
            for p in r.snap.processes:
                host = host_pids.get((r.rf.path, p.slot), 0)
                if host:
                    mapped.add((host, p.start_time))
                else:
                    unresolved.add((p.pid, p.start_time))
                pids.append(host or p.pid)  # unknown: the pid itself (right when the pod shares the host's)
                if host != p.host_pid:
                    self._write(r.handle, r.snap.slot_field_offset(p.slot, region_core.SLOT_HOST_PID_FIELD), host)
            if r.record is None:
                continue  # not allocated by this plugin: no part in node-wide decisions
            accounted = {d.index: d.used_bytes for d in r.snap.devices[: region_core.MAX_DEVICES]}
            container_id = self._container_id(r.record)
            self._backstop_unresolved[r.rf.container_dir] = frozenset(unresolved)
            # The GPUs and the priority are the plugin's record; the region's own say nothing here.
            for index, gpu in enumerate(r.record.devices):
                self._backstop_gpus.append(
                    backstop_core.ContainerGpu(
                        r.rf.container_dir,
                        r.record.pod_uid,
                        gpu.uuid,
                        index,
                        gpu.limit_bytes,
                        accounted.get(index, 0),
                        frozenset(mapped),
                        container_id,
                    )
                )
                util = monitor_core.container_utilization(pids, views.get(gpu.uuid, {}))
                r.utilization[index] = util
                activities.append(
                    monitor_core.DeviceActivity(
                        r.rf.container_dir, gpu.uuid, r.record.priority, monitor_core.is_active(util)
                    )
                )
        signals = monitor_core.limiter_signals(activities)
        samples = []
        self._backstop_labels = {}
        if self._backstop is not None:
            self._add_regionless(opened)
        for r in opened:
            pod = self._pods.get(r.uid) if self._pods is not None else None
            for device in r.snap.devices[: region_core.MAX_DEVICES]:  # the header's count is the container's
                util = r.utilization.get(device.index, 0)
                recorded = r.record.device(device.index) if r.record is not None else None
                uuid = recorded.uuid if recorded is not None else ""
                signal = signals.get((r.rf.container_dir, uuid)) if recorded is not None else None
                if signal is not None:
                    self._write_signals(r, device, util, signal)
                age = (
                    (now_ns - device.last_kernel_ns) / 1e9
                    if device.last_kernel_ns and now_ns > device.last_kernel_ns
                    else None
                )
                if recorded is not None:
                    self._backstop_labels[(r.rf.container_dir, uuid)] = [
                        pod.namespace if pod else "",
                        pod.name if pod else "",
                        r.container,
                        str(device.index),
                        uuid,
                    ]
                samples.append(
                    ContainerDeviceSample(
                        namespace=pod.namespace if pod else "",
                        pod=pod.name if pod else "",
                        container=r.container,
                        vdevice_index=device.index,
                        device_uuid=uuid,
                        used_bytes=device.used_bytes,
                        limit_bytes=recorded.limit_bytes if recorded is not None else device.limit_bytes,
                        peak_bytes=device.peak_bytes,
                        oom_count=device.oom_count,
                        utilization_pct=util,
                        last_kernel_age_s=age,
                        contended=signal.contended if signal else False,
                        priority_hold=signal.priority_hold if signal else False,
                        context_bytes=device.context_bytes,
                        module_bytes=device.module_bytes,
                    )
                )
        # After every signal of this scan: the generation moves on, so hamicore knows they are current. Only for
        # containers the monitor decides for: to any other, no monitor speaks (hamicore then enforces).
        for r in opened:
            if r.record is None:
                continue
            if r.snap.monitor_interval_ms != self._interval_ms:
                self._write(r.handle, region_core.MONITOR_INTERVAL_OFFSET, self._interval_ms)
            generation = region_core.next_generation(r.snap.monitor_generation)
            self._write(r.handle, region_core.MONITOR_GENERATION_OFFSET, generation)
        return tuple(samples)

    def _add_regionless(self, opened: list[_OpenRegion]) -> None:
        """Allocated containers without a region to read (not created yet, or removed by the container): the
        backstop checks them too, with nothing accounted."""
        seen = {r.rf.container_dir for r in opened}
        for name in sorted(self._record_names() - seen):
            record = self._records(name)
            if record is None:
                continue
            pod = self._pods.get(record.pod_uid) if self._pods is not None else None
            container_id = self._container_id(record)
            for index, gpu in enumerate(record.devices):
                self._backstop_gpus.append(
                    backstop_core.ContainerGpu(
                        name, record.pod_uid, gpu.uuid, index, gpu.limit_bytes, 0, frozenset(), container_id
                    )
                )
                self._backstop_labels[(name, gpu.uuid)] = [
                    pod.namespace if pod else "",
                    pod.name if pod else "",
                    record.container,
                    str(index),
                    gpu.uuid,
                ]

    def _container_id(self, record: ContainerRecord) -> str:
        """The container's runtime ID from its pod's status ("" when unknown)."""
        pod = self._pods.get(record.pod_uid) if self._pods is not None else None
        return dict(pod.container_ids).get(record.container, "") if pod is not None else ""

    async def _check_backstop(self, backstop: Backstop) -> None:
        """The backstop's reconciliation of this scan, and the Events it asks for."""
        try:
            started = await asyncio.to_thread(
                backstop.check,
                self._backstop_gpus,
                self._backstop_labels,
                self._process_memory,
                self._backstop_unresolved,
            )
        except Exception:  # the scan's other duties (heartbeat done, cleanup next) go on; logged with the trace
            log.exception("backstop_check_failed")
            return
        for verdict, message in started:
            pod = self._pods.get(verdict.use.gpu.pod_uid) if self._pods is not None else None
            if pod is not None and self._pod_event is not None:
                self._pod_event({"namespace": pod.namespace, "name": pod.name, "uid": pod.uid}, message)

    @staticmethod
    def _write(handle: files.RegionHandle, offset: int, value: int) -> None:
        try:
            handle.write_u32(offset, value)
        except OSError as exc:
            log.warning("region_write_failed", path=handle.path, offset=offset, error=str(exc))

    def _write_signals(
        self, r: _OpenRegion, device: region_core.DeviceUsage, utilization: int, signal: monitor_core.LimiterSignal
    ) -> None:
        for field, old, new in (
            (region_core.UTILIZATION_FIELD, device.utilization_pct, utilization),
            (region_core.CONTENDED_FIELD, int(device.contended), int(signal.contended)),
            (region_core.PRIORITY_HOLD_FIELD, int(device.priority_hold), int(signal.priority_hold)),
        ):
            if old != new:
                self._write(r.handle, r.snap.device_field_offset(device.index, field), new)

    async def _cleanup(self) -> None:
        """Remove the directories (and records) of pods gone for longer than the grace.

        Destructive, so only on evidence: the pod cache has had a successful list and its watch has not failed
        since, and a fresh list of this node's pods, taken now, succeeded; a UID in either is never removed."""
        if self._pods is None or self._live_pod_uids is None:
            return
        if not self._pods.synced.is_set() or self._pods.stale:
            return  # without a current pod list every directory would look orphaned
        dirs = await asyncio.to_thread(files.container_dirs, self._regions_dir)
        cached = self._pods.uids()
        stale = monitor_core.stale_container_dirs(dirs, cached, time.time(), grace_seconds=self._cleanup_grace)
        orphans = [  # records whose directory is gone already
            name
            for name in sorted(await asyncio.to_thread(self._record_names))
            if name not in dirs and (parts := monitor_core.split_container_dir(name)) and parts[0] not in cached
        ]
        if not stale and not orphans:
            return
        live = await self._live_pod_uids()
        if live is None:
            return  # the fresh list failed: nothing is removed on the cache's word alone
        for name in (*stale, *orphans):
            parts = monitor_core.split_container_dir(name)
            if parts is None or parts[0] in live or parts[0] in self._pods.uids():
                continue
            if name in dirs:
                log.info("container_dir_removed", dir=name)
                await asyncio.to_thread(files.remove_container_dir, self._regions_dir, name)
                self._metrics.removed_dirs.inc()
            self._forget_record(name)
