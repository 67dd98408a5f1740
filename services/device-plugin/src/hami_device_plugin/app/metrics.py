"""Prometheus metrics of the plugin (Allocate outcomes and latency, devices) and of the monitor.

Per-container metrics come from the monitor's latest scan through a custom collector, so label sets of
containers that went away disappear with them (HAMi's monitor kept stale series, and lost series of
multi-container pods). Names and labels follow HAMi v2.9+ (``hami_*``; labels namespace, pod, container,
vdevice_index, device_uuid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

CONTAINER_LABELS = ("namespace", "pod", "container", "vdevice_index", "device_uuid")
HOST_LABELS = ("device_uuid", "device_index", "device_type")


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

    def labels(self) -> list[str]:
        return [self.namespace, self.pod, self.container, str(self.vdevice_index), self.device_uuid]


@dataclasses.dataclass(frozen=True, slots=True)
class HostDeviceSample:
    device_uuid: str
    device_index: int
    device_type: str
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_pct: int | None

    def labels(self) -> list[str]:
        return [self.device_uuid, str(self.device_index), self.device_type]


class MonitorCollector(Collector):
    """Yields the metric families of the latest monitor scan."""

    def __init__(self, version: str) -> None:
        self.containers: Sequence[ContainerDeviceSample] = ()
        self.hosts: Sequence[HostDeviceSample] = ()
        self._version = version

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=CONTAINER_LABELS)

        used = family("hami_vgpu_memory_used_bytes", "GPU memory the container uses on the device (hamicore)")
        limit = family("hami_vgpu_memory_limit_bytes", "GPU memory limit of the container on the device")
        peak = family("hami_vgpu_memory_peak_bytes", "High-water mark of the container's GPU memory on the device")
        device_memory = family("hami_container_device_memory_bytes", "Same as hami_vgpu_memory_used_bytes (HAMi)")
        util = family("hami_container_device_utilization_ratio", "SM utilisation of the container's processes (0..1)")
        ooms = family("hami_vgpu_memory_refusals", "Allocations refused at the limit since the container started")
        last = family("hami_container_last_kernel_elapsed_seconds", "Seconds since the container's latest launch")
        contended = family("hami_container_device_contended", "1 when other containers are active on the GPU")
        hold = family("hami_container_device_priority_hold", "1 when a higher-priority container holds the GPU")
        for s in self.containers:
            labels = s.labels()
            used.add_metric(labels, s.used_bytes)
            device_memory.add_metric(labels, s.used_bytes)
            limit.add_metric(labels, s.limit_bytes)
            peak.add_metric(labels, s.peak_bytes)
            util.add_metric(labels, s.utilization_pct / 100)
            ooms.add_metric(labels, s.oom_count)
            if s.last_kernel_age_s is not None:
                last.add_metric(labels, s.last_kernel_age_s)
            contended.add_metric(labels, int(s.contended))
            hold.add_metric(labels, int(s.priority_hold))
        yield from (used, limit, peak, device_memory, util, ooms, last, contended, hold)
        host_used = GaugeMetricFamily("hami_host_gpu_memory_used_bytes", "GPU memory used (NVML)", labels=HOST_LABELS)
        host_total = GaugeMetricFamily("hami_host_gpu_memory_total_bytes", "GPU memory size (NVML)", labels=HOST_LABELS)
        host_util = GaugeMetricFamily(
            "hami_host_gpu_utilization_ratio", "GPU utilisation (NVML, 0..1)", labels=HOST_LABELS
        )
        for h in self.hosts:
            if h.memory_used_bytes is not None:
                host_used.add_metric(h.labels(), h.memory_used_bytes)
            if h.memory_total_bytes is not None:
                host_total.add_metric(h.labels(), h.memory_total_bytes)
            if h.utilization_pct is not None:
                host_util.add_metric(h.labels(), h.utilization_pct / 100)
        yield from (host_used, host_total, host_util)
        info = InfoMetricFamily("hami_build", "Build of the device plugin")
        info.add_metric([], {"version": self._version, "component": "hami-device-plugin"})
        yield info


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
    def create(cls, version: str) -> PluginMetrics:
        registry = CollectorRegistry()
        monitor = MonitorCollector(version)
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
