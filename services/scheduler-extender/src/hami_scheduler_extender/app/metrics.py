"""Prometheus metrics of the extender, on its own registry: latency, decisions, filter failures by HAMi
reason, and HAMi's scheduler metrics (``cmd/scheduler/metrics.go``: ``hami_gpu_*``, ``hami_node_gpu_*``,
``hami_vgpu_*``, with HAMi's labels, scales and ``zone="vGPU"``; its pre-v2.9 names with ``legacy-metrics``)
computed from the usage cache at scrape time, so the hot paths pay nothing for them. docs/metrics.md maps
every HAMi name to ours.

Scales are HAMi's: cores as percent of the card's registered cores (100 = the whole card, however the card's
cores are scaled), memory ratios 0..1. Our own cores-as-cards gauges keep that scale under their own
``hami_extender_*`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from hami_shared.service.status import build_info_labels
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hami_scheduler_extender.app.mig_metrics import mig_instance_family
from hami_scheduler_extender.core.model import DeviceView
from hami_scheduler_extender.core.quota import QuotaLedger
from hami_scheduler_extender.core.state import ClusterState

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MIB = 1024 * 1024
# generate_latest's value formatting (Go's float syntax), typed: prometheus_client does not annotate it.
_go_float: Callable[[float], str] = floatToGoString


class ExtenderMetrics:
    """The extender's own counters and histograms."""

    def __init__(self, registry: CollectorRegistry, *, version: str, legacy: bool = False) -> None:
        self.registry = registry
        self.legacy = legacy  # also HAMi's pre-v2.9 names (legacy-metrics)
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
        self.nodes_topology_ignored = Gauge(
            "hami_extender_nodes_topology_ignored",
            "Nodes whose GPU topology annotation (hami.io/node-nvidia-topology or hami.io/node-nvidia-score) is "
            "malformed and ignored: their multi-GPU pods get cards as if the node published no topology",
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
        self.events_suppressed = Counter(
            "hami_extender_events_suppressed",
            "Events not written because the per-pod interval or the per-reason rate held them back "
            "(--event-pod-interval, --event-rate, --event-burst), by Event reason",
            ["reason"],
            registry=registry,
        )
        self.request_body_refused = Counter(
            "hami_extender_request_body_refused",
            "Verb requests refused because the body was over the size limit",
            registry=registry,
        )
        # --- ResourceQuota (core/quota.py): kept apart from the rest for merging ---
        self.quotas_malformed = Counter(
            "hami_extender_quotas_malformed",
            "ResourceQuota objects whose GPU limits could not be read (left out, with any limit they had)",
            registry=registry,
        )
        # --- end ResourceQuota ---
        labels = build_info_labels(version)
        build = Gauge(
            "hami_build_info",
            "hami build metadata exposed as labels with a constant value of 1.",
            list(labels),
            registry=registry,
        )
        build.labels(**labels).set(1)


ZONE = "vGPU"  # HAMi registers its collector under WrapRegistererWith({"zone": "vGPU"})
GPU_LABELS = ("node", "device_uuid", "device_index", "device_type")
VGPU_LABELS = ("namespace", "node", "pod", "container_index", "device_uuid")
LEGACY_GPU_LABELS = ("nodeid", "deviceuuid", "deviceidx", "devicetype")
LEGACY_VGPU_LABELS = ("podnamespace", "nodename", "podname", "containeridx", "deviceuuid")


def core_percent(total: int, used: int) -> tuple[int, int]:
    """HAMi's ``normalizeCoreMetrics``: (100, used as percent of ``total`` rounded up), (0, 0) without cores.

    In integers: HAMi's float64 ``ceil(used / total * 100)`` reads one too high for a few values (7 of 100 cores
    gives 7.000000000000001, so 8)."""
    if total <= 0:
        return 0, 0
    return 100, -(-used * 100 // total)


class _Families:
    """Gauge families keyed by name, each with its label names; ``zone`` appended to HAMi's."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, doc: str, labels: Sequence[str], *, zone: bool = True) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=[*labels, "zone"] if zone else list(labels))
        self.families[name] = family
        return family


class AllocationCollector(Collector):
    """HAMi's per-GPU and per-container allocation gauges: immutable views and holds of the usage cache
    captured when built (in the event loop), formatted when collected (off it)."""

    def __init__(self, state: ClusterState, *, legacy: bool = False) -> None:
        self._views = tuple(v for v in (state.view(n) for n in list(state.node_names())) if v is not None)
        self._allocations = tuple(state.allocations())
        self._legacy = legacy

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        mem_limit = f.add("hami_gpu_memory_limit_bytes", "Device memory limit for a certain GPU", GPU_LABELS)
        core_limit = f.add("hami_gpu_core_limit_ratio", "Device core limit for a certain GPU", GPU_LABELS)
        mem_alloc = f.add(
            "hami_gpu_memory_allocated_bytes",
            "Device memory allocated for a certain GPU",
            ("node", "device_uuid", "device_index", "device_cores", "device_type"),
        )
        shared = f.add("hami_gpu_shared_count", "Number of containers sharing this GPU", GPU_LABELS)
        core_alloc = f.add("hami_gpu_core_allocated_ratio", "Device core allocated for a certain GPU", GPU_LABELS)
        overview = f.add(
            "hami_node_gpu_overview",
            "GPU overview on a certain node",
            ("node", "device_uuid", "device_index", "device_cores", "device_memory_limit", "device_type"),
        )
        mem_ratio = f.add(
            "hami_node_gpu_memory_allocated_ratio",
            "GPU Memory Allocated Percentage on a certain GPU",
            ("node", "device_uuid", "device_index"),
        )
        # Ours, on the scale our dashboards used before HAMi's names took over (1 = one card).
        ours_gpu = ("node", "device_uuid", "device_index", "device_type")
        cards_limit = f.add(
            "hami_extender_gpu_core_limit_cards", "Registered cores of the GPU (1 = one card)", ours_gpu, zone=False
        )
        cards_alloc = f.add(
            "hami_extender_gpu_core_allocated_cards", "Cores held on the GPU (1 = one card)", ours_gpu, zone=False
        )
        node_ratio = f.add(
            "hami_extender_node_gpu_memory_allocated_ratio",
            "Share of the node's GPU memory held, all its GPUs together (0..1)",
            ("node",),
            zone=False,
        )
        totals: dict[str, int] = {}
        for view in self._views:
            name = view.name
            for d in view.devices:
                totals.setdefault(d.uuid, d.total_cores)
                index, cores = str(d.index), str(d.total_cores)
                labels = [name, d.uuid, index, d.type, ZONE]
                limit_pct, used_pct = core_percent(d.total_cores, d.used_cores)
                mem_limit.add_metric(labels, d.total_mem * MIB)
                core_limit.add_metric(labels, limit_pct)
                mem_alloc.add_metric([name, d.uuid, index, cores, d.type, ZONE], d.used_mem * MIB)
                shared.add_metric(labels, d.used)
                core_alloc.add_metric(labels, used_pct)
                overview.add_metric([name, d.uuid, index, cores, str(d.total_mem), d.type, ZONE], d.used_mem * MIB)
                if d.total_mem > 0:
                    mem_ratio.add_metric([name, d.uuid, index, ZONE], d.used_mem / d.total_mem)
                cards_limit.add_metric(labels[:4], d.total_cores / 100)
                cards_alloc.add_metric(labels[:4], d.used_cores / 100)
            node_ratio.add_metric([name], view.sum_used_mem / view.sum_mem if view.sum_mem else 0.0)
        vgpu_mem = f.add("hami_vgpu_memory_allocated_bytes", "vGPU memory allocated from a container", VGPU_LABELS)
        vgpu_core = f.add("hami_vgpu_core_allocated_ratio", "vGPU core allocated from a container", VGPU_LABELS)
        vgpu_cards = f.add(
            "hami_extender_vgpu_core_allocated_cards",
            "Cores given to a container on a GPU (1 = one card)",
            VGPU_LABELS,
            zone=False,
        )
        for allocation in self._allocations:
            for position, container in enumerate(allocation.grants):
                for grant in container:
                    labels = [allocation.namespace, allocation.node, allocation.name, str(position), grant.uuid]
                    vgpu_mem.add_metric([*labels, ZONE], grant.usedmem * MIB)
                    vgpu_core.add_metric([*labels, ZONE], core_percent(totals.get(grant.uuid, 0), grant.usedcores)[1])
                    vgpu_cards.add_metric(labels, grant.usedcores / 100)
        if self._legacy:
            self._add_legacy(f)
        yield from f.families.values()
        # --- MIG (issue 19): HAMi's hami_node_gpu_mig_instance_info, in app/mig_metrics.py ---
        yield mig_instance_family(self._views, self._allocations)

    def _add_legacy(self, f: _Families) -> None:
        """HAMi's names up to v2.8 (``--legacy-metrics``): its labels, and cores unnormalised (the registered
        and held cores as the registration counts them, 100 = a card unless scaled)."""
        legacy_alloc_labels = ("nodeid", "deviceuuid", "deviceidx", "devicecores", "devicetype")
        overview_labels = ("nodeid", "deviceuuid", "deviceidx", "devicecores", "devicememorylimit", "devicetype")
        mem_limit = f.add("GPUDeviceMemoryLimit", "Device memory limit for a certain GPU", LEGACY_GPU_LABELS)
        core_limit = f.add("GPUDeviceCoreLimit", "Device memory core limit for a certain GPU", LEGACY_GPU_LABELS)
        mem_alloc = f.add("GPUDeviceMemoryAllocated", "Device memory allocated for a certain GPU", legacy_alloc_labels)
        shared = f.add("GPUDeviceSharedNum", "Number of containers sharing this GPU", LEGACY_GPU_LABELS)
        core_alloc = f.add("GPUDeviceCoreAllocated", "Device core allocated for a certain GPU", LEGACY_GPU_LABELS)
        overview = f.add("nodeGPUOverview", "GPU overview on a certain node", overview_labels)
        mem_ratio = f.add(
            "nodeGPUMemoryPercentage",
            "GPU Memory Allocated Percentage on a certain GPU",
            ("nodeid", "deviceuuid", "deviceidx"),
        )
        for view in self._views:
            for d in view.devices:
                self._legacy_device(view.name, d, mem_limit, core_limit, mem_alloc, shared, core_alloc, overview)
                if d.total_mem > 0:
                    mem_ratio.add_metric([view.name, d.uuid, str(d.index), ZONE], d.used_mem / d.total_mem)
        vgpu_mem = f.add("vGPUMemoryAllocated", "vGPU memory allocated from a container", LEGACY_VGPU_LABELS)
        vgpu_core = f.add("vGPUCoreAllocated", "vGPU core allocated from a container", LEGACY_VGPU_LABELS)
        for allocation in self._allocations:
            for position, container in enumerate(allocation.grants):
                for grant in container:
                    labels = [allocation.namespace, allocation.node, allocation.name, str(position), grant.uuid, ZONE]
                    vgpu_mem.add_metric(labels, grant.usedmem * MIB)
                    vgpu_core.add_metric(labels, grant.usedcores)

    @staticmethod
    def _legacy_device(node: str, d: DeviceView, *families: GaugeMetricFamily) -> None:
        mem_limit, core_limit, mem_alloc, shared, core_alloc, overview = families
        index, cores = str(d.index), str(d.total_cores)
        labels = [node, d.uuid, index, d.type, ZONE]
        mem_limit.add_metric(labels, d.total_mem * MIB)
        core_limit.add_metric(labels, d.total_cores)
        mem_alloc.add_metric([node, d.uuid, index, cores, d.type, ZONE], d.used_mem * MIB)
        shared.add_metric(labels, d.used)
        core_alloc.add_metric(labels, d.used_cores)
        overview.add_metric([node, d.uuid, index, cores, str(d.total_mem), d.type, ZONE], d.used_mem * MIB)


def render_allocations(collector: AllocationCollector) -> bytes:
    """Text exposition (format 0.0.4) of the allocation gauges, safe to run in a worker thread.

    Formatted here rather than by prometheus_client's ``generate_latest``: at 5,000 nodes x 8 GPUs and 40,000 pods
    (about 485,000 series) that takes about four times as long, all of it holding the GIL the verbs need."""
    return _exposition(collector.collect())


def _exposition(families: Iterable[Metric]) -> bytes:
    """Gauge families in the text format, byte for byte as ``generate_latest`` writes them."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.documentation)}\n# TYPE {family.name} {family.type}\n")
        for sample in family.samples:
            # sorted, as generate_latest writes them
            labels = ",".join([f'{key}="{_escape_label(value)}"' for key, value in sorted(sample.labels.items())])
            out.append(f"{sample.name}{{{labels}}} {_go_float(sample.value)}\n")
    return "".join(out).encode()


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# --- ResourceQuota (core/quota.py): HAMi's quota gauges, kept apart from the rest for merging -------------
class QuotaCollector(Collector):
    """HAMi's ``hami_resource_quota_used{namespace,quota_name,limit}`` (usage of a namespace's GPU pods, in the
    resource's unit: MiB for gpumem, percent of a card for gpucores; every namespace with GPU usage or a GPU
    quota) and ``hami_resource_quota_limit{namespace,quota_name}`` (the smallest limit of the namespace's quotas,
    only where one is set), as HAMi's scheduler exports them; ``legacy`` adds HAMi's old ``QuotaUsed``. Samples
    captured when built (in the event loop), formatted when collected."""

    def __init__(self, ledger: QuotaLedger, *, legacy: bool = False) -> None:
        self._samples = tuple(ledger.samples())
        self._legacy = legacy

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "hami_resource_quota_used",
            "resourcequota usage for a certain device",
            labels=["limit", "namespace", "quota_name"],
        )
        limit = GaugeMetricFamily(
            "hami_resource_quota_limit", "resourcequota limit for a certain device", labels=["namespace", "quota_name"]
        )
        legacy = GaugeMetricFamily(
            "QuotaUsed", "resourcequota usage for a certain device", labels=["limit", "quotaName", "quotanamespace"]
        )
        for sample in self._samples:
            shown = str(sample.limit if sample.limit is not None else 0)
            used.add_metric([shown, sample.namespace, sample.resource], sample.used)
            if sample.limit is not None:
                limit.add_metric([sample.namespace, sample.resource], sample.limit)
            legacy.add_metric([shown, sample.resource, sample.namespace], sample.used)
        yield used
        yield limit
        if self._legacy:
            yield legacy


def render_quotas(collector: QuotaCollector) -> bytes:
    """Text exposition of the quota gauges (one series per namespace and resource: cheap in the event loop)."""
    return _exposition(collector.collect())


# --- end ResourceQuota ---
