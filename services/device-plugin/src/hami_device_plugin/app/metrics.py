"""Prometheus metrics of the plugin (Allocate outcomes and latency, devices) and of the monitor.

The monitor's metrics are HAMi's vGPU monitor's (cmd/vGPUmonitor/metrics.go, v2.9+ names): same names, label
names, scales (utilisation 0..100) and ``zone="vGPU"``; its names up to v2.8 too with ``legacy-metrics``.
docs/metrics.md maps each to its source here. Per-container metrics come from the monitor's latest scan through
a custom collector, so label sets of containers that went away disappear with them (HAMi's monitor kept stale
series, and lost series of multi-container pods). Our own metrics keep their names; where one of ours had a
HAMi name on another scale (utilisation 0..1), HAMi's scale took the name and ours moved to ``*_fraction``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from hami_shared.service.status import build_info_labels
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

ZONE = "vGPU"  # HAMi registers its monitor collector under WrapRegistererWith({"zone": "vGPU"})
CONTAINER_LABELS = ("namespace", "pod", "container", "vdevice_index", "device_uuid")
HOST_LABELS = ("node", "device_index", "device_uuid", "device_type")
MIG_LABELS = (*CONTAINER_LABELS, "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id")
LEGACY_CONTAINER_LABELS = ("podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid")
LEGACY_HOST_LABELS = ("nodeid", "deviceidx", "deviceuuid", "devicetype")


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerDeviceSample:
    namespace: str
    pod: str
    container: str
    vdevice_index: int
    device_uuid: str
    used_bytes: int
    limit_bytes: int
    peak_bytes: int
    oom_count: int
    utilization_pct: int
    last_kernel_age_s: float | None
    contended: bool
    priority_hold: bool
    context_bytes: int = 0  # part of used_bytes CUDA contexts hold (0 where the library wrote no split, < 1.3)
    module_bytes: int = 0  # part of used_bytes loaded modules and libraries hold

    def labels(self) -> list[str]:
        return [self.namespace, self.pod, self.container, str(self.vdevice_index), self.device_uuid]

    @property
    def buffer_bytes(self) -> int:
        """HAMi-core's ``data``: what is neither context nor module, never negative."""
        return max(0, self.used_bytes - self.context_bytes - self.module_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class HostDeviceSample:
    device_uuid: str
    device_index: int
    device_type: str
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_pct: int | None
    memory_utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None

    def labels(self, node: str) -> list[str]:
        return [node, str(self.device_index), self.device_uuid, self.device_type]


@dataclasses.dataclass(frozen=True, slots=True)
class MigDeviceSample:
    """A container's MIG instance (HAMi's ``hami_mig_device_info``): set by the plugin's MIG allocation code."""

    namespace: str
    pod: str
    container: str
    vdevice_index: int
    device_uuid: str  # the parent GPU
    mig_uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int


class MonitorCollector(Collector):
    """Yields the metric families of the latest monitor scan."""

    def __init__(self, version: str, *, node: str = "", legacy: bool = False) -> None:
        self.containers: Sequence[ContainerDeviceSample] = ()
        self.hosts: Sequence[HostDeviceSample] = ()
        self.migs: Sequence[MigDeviceSample] = ()
        self._version = version
        self._node = node
        self._legacy = legacy

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._containers()
        yield from self._hosts()
        yield from self._migs()
        if self._legacy:
            yield from self._legacy_families()
        labels = build_info_labels(self._version)
        info = GaugeMetricFamily(
            "hami_build_info", "hami build metadata exposed as labels with a constant value of 1.", labels=list(labels)
        )
        info.add_metric(list(labels.values()), 1)
        yield info

    def _containers(self) -> Iterator[GaugeMetricFamily]:
        def hami(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*CONTAINER_LABELS, "zone"])

        def ours(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=CONTAINER_LABELS)

        used = hami("hami_vgpu_memory_used_bytes", "vGPU device memory usage in bytes")
        limit = hami("hami_vgpu_memory_limit_bytes", "vGPU device memory limit in bytes")
        device_memory = hami("hami_container_device_memory_bytes", "Container device memory usage in bytes")
        util = hami("hami_container_device_utilization_ratio", "Container device SM utilization ratio (0-100)")
        last = hami("hami_container_last_kernel_elapsed_seconds", "Seconds since last kernel execution in container")
        context = hami("hami_vgpu_memory_context_bytes", "vGPU device memory held by CUDA contexts in bytes")
        module = hami("hami_vgpu_memory_module_bytes", "vGPU device memory held by loaded modules in bytes")
        buffer = hami("hami_vgpu_memory_buffer_bytes", "vGPU device memory held by buffers (data) in bytes")
        peak = ours("hami_vgpu_memory_peak_bytes", "High-water mark of the container's GPU memory on the device")
        fraction = ours(
            "hami_container_device_utilization_fraction", "SM utilisation of the container's processes (0..1)"
        )
        ooms = ours("hami_vgpu_memory_refusals", "Allocations refused at the limit since the container started")
        contended = ours("hami_container_device_contended", "1 when other containers are active on the GPU")
        hold = ours("hami_container_device_priority_hold", "1 when a higher-priority container holds the GPU")
        for s in self.containers:
            labels = s.labels()
            zoned = [*labels, ZONE]
            used.add_metric(zoned, s.used_bytes)
            device_memory.add_metric(zoned, s.used_bytes)
            limit.add_metric(zoned, s.limit_bytes)
            util.add_metric(zoned, s.utilization_pct)
            if s.last_kernel_age_s is not None:
                last.add_metric(zoned, s.last_kernel_age_s)
            context.add_metric(zoned, s.context_bytes)
            module.add_metric(zoned, s.module_bytes)
            buffer.add_metric(zoned, s.buffer_bytes)
            peak.add_metric(labels, s.peak_bytes)
            fraction.add_metric(labels, s.utilization_pct / 100)
            ooms.add_metric(labels, s.oom_count)
            contended.add_metric(labels, int(s.contended))
            hold.add_metric(labels, int(s.priority_hold))
        yield from (used, limit, device_memory, util, last, context, module, buffer, peak, fraction, ooms, contended)
        yield hold

    def _hosts(self) -> Iterator[GaugeMetricFamily]:
        def hami(name: str, doc: str, labels: Sequence[str] = HOST_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*labels, "zone"])

        host_used = hami("hami_host_gpu_memory_used_bytes", "GPU device memory usage in bytes")
        host_util = hami("hami_host_gpu_utilization_ratio", "GPU core utilization ratio (0-100)")
        # HAMi exports this one without the node label.
        host_mem_util = hami(
            "hami_host_gpu_memory_controller_utilization_ratio",
            "GPU memory controller utilization ratio (0-100)",
            HOST_LABELS[1:],
        )
        temperature = hami("hami_host_gpu_temperature_celsius", "GPU temperature in degrees Celsius")
        power = hami("hami_host_gpu_power_usage_watts", "GPU power draw in watts")
        ecc = hami("hami_host_gpu_ecc_errors_total", "Lifetime aggregate ECC errors", (*HOST_LABELS, "error_type"))
        host_total = GaugeMetricFamily("hami_host_gpu_memory_total_bytes", "GPU memory size (NVML)", labels=HOST_LABELS)
        host_fraction = GaugeMetricFamily(
            "hami_host_gpu_utilization_fraction", "GPU utilisation (NVML, 0..1)", labels=HOST_LABELS
        )
        for h in self.hosts:
            labels = h.labels(self._node)
            zoned = [*labels, ZONE]
            if h.memory_used_bytes is not None:
                host_used.add_metric(zoned, h.memory_used_bytes)
            if h.memory_total_bytes is not None:
                host_total.add_metric(labels, h.memory_total_bytes)
            if h.utilization_pct is not None:
                host_util.add_metric(zoned, h.utilization_pct)
                host_fraction.add_metric(labels, h.utilization_pct / 100)
            if h.memory_utilization_pct is not None:
                host_mem_util.add_metric(zoned[1:], h.memory_utilization_pct)
            if h.temperature_c is not None:
                temperature.add_metric(zoned, h.temperature_c)
            if h.power_w is not None:
                power.add_metric(zoned, h.power_w)
            for kind, count in (("corrected", h.ecc_corrected), ("uncorrected", h.ecc_uncorrected)):
                if count is not None:
                    ecc.add_metric([*labels, kind, ZONE], count)
        yield from (host_used, host_util, host_mem_util, temperature, power, ecc, host_total, host_fraction)

    def _migs(self) -> Iterator[GaugeMetricFamily]:
        mig = GaugeMetricFamily(
            "hami_mig_device_info", "MIG runtime identity for a container allocation", labels=[*MIG_LABELS, "zone"]
        )
        for m in self.migs:
            mig.add_metric(
                [
                    m.namespace,
                    m.pod,
                    m.container,
                    str(m.vdevice_index),
                    m.device_uuid,
                    m.mig_uuid,
                    m.profile,
                    str(m.gpu_instance_id),
                    str(m.compute_instance_id),
                    ZONE,
                ],
                1,
            )
        yield mig

    def _legacy_families(self) -> Iterator[GaugeMetricFamily]:
        """HAMi's names up to v2.8 (``--legacy-metrics``), with its old label names."""

        def family(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*labels, "zone"])

        host_used = family("HostGPUMemoryUsage", "GPU device memory usage", LEGACY_HOST_LABELS)
        host_util = family("HostCoreUtilization", "GPU core utilization", LEGACY_HOST_LABELS)
        for h in self.hosts:
            labels = [*h.labels(self._node), ZONE]
            if h.memory_used_bytes is not None:
                host_used.add_metric(labels, h.memory_used_bytes)
            if h.utilization_pct is not None:
                host_util.add_metric(labels, h.utilization_pct)
        used = family("vGPU_device_memory_usage_in_bytes", "vGPU device usage", LEGACY_CONTAINER_LABELS)
        limit = family("vGPU_device_memory_limit_in_bytes", "vGPU device limit", LEGACY_CONTAINER_LABELS)
        # context/module/data/offset: HAMi-core's split of the used memory as label values (decimal bytes), as
        # HAMi writes them; hamicore has no offset (always 0). The value is the container's whole use.
        memory = family(
            "Device_memory_desc_of_container",
            "Container device memory description",
            (*LEGACY_CONTAINER_LABELS, "context", "module", "data", "offset"),
        )
        util = family(
            "Device_utilization_desc_of_container", "Container device utilization description", LEGACY_CONTAINER_LABELS
        )
        last = family(
            "Device_last_kernel_of_container", "Container device last kernel description", LEGACY_CONTAINER_LABELS
        )
        for s in self.containers:
            labels = [*s.labels(), ZONE]
            used.add_metric(labels, s.used_bytes)
            limit.add_metric(labels, s.limit_bytes)
            split = [str(s.context_bytes), str(s.module_bytes), str(s.buffer_bytes), "0"]
            memory.add_metric([*s.labels(), *split, ZONE], s.used_bytes)
            util.add_metric(labels, s.utilization_pct)
            if s.last_kernel_age_s is not None:
                last.add_metric(labels, s.last_kernel_age_s)
        mig = family("MigInfo", "Mig device information for container", (*LEGACY_CONTAINER_LABELS, "instanceid"))
        for m in self.migs:
            mig.add_metric(
                [m.namespace, m.pod, m.container, str(m.vdevice_index), m.device_uuid, str(m.gpu_instance_id), ZONE], 1
            )
        yield from (host_used, host_util, used, limit, memory, util, last, mig)


@dataclasses.dataclass(frozen=True)
class PluginMetrics:
    registry: CollectorRegistry
    monitor: MonitorCollector
    allocations: Counter
    allocate_seconds: Histogram
    preferred: Counter
    devices: Gauge
    healthy_devices: Gauge
    registrations: Counter
    inventory_patches: Counter
    pod_patches: Counter
    removed_dirs: Counter
    monitor_scan_seconds: Histogram
    monitor_proc_indexes: Counter
    regions_refused: Counter
    pods_unreadable: Counter
    identifications: Counter

    @classmethod
    def create(cls, version: str, *, node: str = "", legacy: bool = False) -> PluginMetrics:
        """``node`` labels the host metrics (HAMi's NODE_NAME); ``legacy`` adds HAMi's names up to v2.8."""
        registry = CollectorRegistry()
        monitor = MonitorCollector(version, node=node, legacy=legacy)
        registry.register(monitor)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=registry)

        return cls(
            registry=registry,
            monitor=monitor,
            allocations=counter(
                "hami_device_plugin_allocations",
                "Allocate container requests by outcome and how the pod was matched",
                "result",
                "matched_by",
            ),
            allocate_seconds=histogram(
                "hami_device_plugin_allocate_seconds",
                "Time to answer one Allocate container request",
                (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ),
            preferred=counter("hami_device_plugin_preferred_allocations", "GetPreferredAllocation answers"),
            devices=gauge("hami_device_plugin_devices", "Virtual devices advertised to kubelet"),
            healthy_devices=gauge("hami_device_plugin_healthy_devices", "Healthy virtual devices advertised"),
            registrations=counter("hami_device_plugin_registrations", "Registrations with kubelet", "result"),
            inventory_patches=counter(
                "hami_device_plugin_inventory_patches", "Patches of hami.io/node-nvidia-register"
            ),
            pod_patches=counter("hami_device_plugin_pod_patches", "Pod annotation patches written after Allocate"),
            removed_dirs=counter("hami_device_plugin_removed_container_dirs", "Per-container directories removed"),
            monitor_scan_seconds=histogram(
                "hami_device_plugin_monitor_scan_seconds",
                "Time of one monitor scan (NVML samples, every accounting file read, signals written)",
                (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            monitor_proc_indexes=counter(
                "hami_device_plugin_monitor_proc_indexes",
                "Passes over the host's /proc to find the host pid of new container processes",
            ),
            regions_refused=counter(
                "hami_device_plugin_regions_refused",
                "Accounting files the monitor refused to read, by reason (size, not a regular file, format, open)",
                "reason",
            ),
            pods_unreadable=counter(
                "hami_device_plugin_pods_unreadable",
                "Pod objects (list items or watch events) whose placement annotations could not be read",
            ),
            identifications=counter(
                "hami_device_plugin_pod_identifications",
                "How GetPreferredAllocation (rpc=preferred) and Allocate (rpc=allocate) learnt the pod kubelet is "
                "admitting: by=pod-resources (kubelet's List named it; reason=served-again: a container the plugin "
                "served already, answered with the same grant) or by=inference (the pod cache's order and slot IDs), "
                "with the reason kubelet's List did not decide",
                "rpc",
                "by",
                "reason",
            ),
        )
