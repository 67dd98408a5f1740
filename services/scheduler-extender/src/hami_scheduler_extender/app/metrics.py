"""Prometheus metrics of the extender, on its own registry: latency, decisions, filter failures by HAMi
reason, and HAMi's per-GPU allocation metrics (``hami_gpu_*``, ``hami_vgpu_*``) computed from the usage
cache at scrape time, so the hot paths pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami_scheduler_extender.core.state import ClusterState

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MIB = 1024 * 1024


class ExtenderMetrics:
    """The extender's own counters and histograms."""

    def __init__(self, registry: CollectorRegistry, *, version: str) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "hami_extender_request_duration_seconds",
            "Time to answer one extender request, by verb",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "hami_extender_decisions",
            "Extender answers by verb and result",
            ["verb", "result"],
            registry=registry,
        )
        self.filter_failures = Counter(
            "hami_extender_filter_node_failures",
            "Nodes rejected by filter, by HAMi failure reason",
            ["reason"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "hami_extender_watch_restarts",
            "List/watch restarts (errors, 410 Gone), by resource",
            ["resource"],
            registry=registry,
        )
        self.pods_ignored = Counter(
            "hami_extender_pods_ignored",
            "Pods whose placement annotations (or part of them) count for nothing, once per pod and reason: "
            "not-bound-through-us, no-gpu-request, malformed, unknown-device, changed-after-bind",
            ["reason"],
            registry=registry,
        )
        self.nodes_malformed = Counter(
            "hami_extender_nodes_malformed",
            "Node objects from the list or watch that could not be read at all (skipped)",
            registry=registry,
        )
        self.pending_holds = Gauge(
            "hami_extender_pending_holds",
            "Reservations awaiting confirmation by the pod watch (bounded by max-pending-holds)",
            registry=registry,
        )
        self.label_writes_pending = Gauge(
            "hami_extender_label_writes_pending",
            "hami.io/vgpu-node label patches queued behind the label write rate (label-writes-per-second)",
            registry=registry,
        )
        self.preemption_victims = Counter(
            "hami_extender_preemption_victims",
            "Pods proposed to kube-scheduler as preemption victims by the preempt verb (summed over candidate nodes)",
            registry=registry,
        )
        self.request_body_refused = Counter(
            "hami_extender_request_body_refused",
            "Verb requests refused because the body was over the size limit",
            registry=registry,
        )
        build = Gauge("hami_build_info", "Build information", ["component", "version"], registry=registry)
        build.labels(component="scheduler-extender", version=version).set(1)


class AllocationCollector(Collector):
    """HAMi's per-GPU and per-container allocation gauges: immutable views and holds of the usage cache
    captured when built (in the event loop), formatted when collected (off it)."""

    def __init__(self, state: ClusterState) -> None:
        self._views = tuple(v for v in (state.view(n) for n in list(state.node_names())) if v is not None)
        self._allocations = tuple(state.allocations())

    def collect(self) -> Iterator[Metric]:
        gpu_labels = ["node", "device_uuid", "device_index", "device_type"]
        mem_limit = GaugeMetricFamily("hami_gpu_memory_limit_bytes", "Registered memory of the GPU", labels=gpu_labels)
        core_limit = GaugeMetricFamily(
            "hami_gpu_core_limit_ratio", "Registered cores of the GPU (1 = one card)", labels=gpu_labels
        )
        mem_alloc = GaugeMetricFamily("hami_gpu_memory_allocated_bytes", "Memory held on the GPU", labels=gpu_labels)
        core_alloc = GaugeMetricFamily(
            "hami_gpu_core_allocated_ratio", "Cores held on the GPU (1 = one card)", labels=gpu_labels
        )
        shared = GaugeMetricFamily("hami_gpu_shared_count", "Containers sharing the GPU", labels=gpu_labels)
        node_ratio = GaugeMetricFamily(
            "hami_node_gpu_memory_allocated_ratio", "Share of the node's GPU memory held", labels=["node"]
        )
        for view in self._views:
            name = view.name
            for d in view.devices:
                labels = [name, d.uuid, str(d.index), d.type]
                mem_limit.add_metric(labels, d.total_mem * MIB)
                core_limit.add_metric(labels, d.total_cores / 100)
                mem_alloc.add_metric(labels, d.used_mem * MIB)
                core_alloc.add_metric(labels, d.used_cores / 100)
                shared.add_metric(labels, d.used)
            node_ratio.add_metric([name], view.sum_used_mem / view.sum_mem if view.sum_mem else 0.0)
        vgpu_labels = ["namespace", "node", "pod", "container_index", "device_uuid"]
        vgpu_mem = GaugeMetricFamily(
            "hami_vgpu_memory_allocated_bytes", "Memory given to a container on a GPU", labels=vgpu_labels
        )
        vgpu_core = GaugeMetricFamily(
            "hami_vgpu_core_allocated_ratio", "Cores given to a container on a GPU (1 = one card)", labels=vgpu_labels
        )
        for allocation in self._allocations:
            for position, container in enumerate(allocation.grants):
                for grant in container:
                    labels = [allocation.namespace, allocation.node, allocation.name, str(position), grant.uuid]
                    vgpu_mem.add_metric(labels, grant.usedmem * MIB)
                    vgpu_core.add_metric(labels, grant.usedcores / 100)
        yield from (mem_limit, core_limit, mem_alloc, core_alloc, shared, node_ratio, vgpu_mem, vgpu_core)


def render_allocations(collector: AllocationCollector) -> bytes:
    """Text exposition of the allocation gauges (safe to run in a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
