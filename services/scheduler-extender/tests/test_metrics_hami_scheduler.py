"""Metric parity with HAMi's scheduler (cmd/scheduler/metrics.go, port 9395): the extender's exposition, built from
a usage cache with a few nodes and pods, carries every HAMi name with HAMi's type, label names (plus ``zone="vGPU"``)
and scales; HAMi's pre-v2.9 names only with legacy-metrics; our own gauges under their own names.

The expected catalogue below is written from HAMi's source, not from our module: a renamed label or a changed scale
on either side fails here. The exposition is parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.app.metrics import AllocationCollector, ExtenderMetrics, core_percent, render_allocations
from hami_scheduler_extender.app.settings import PROGRAM
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import PodAllocation
from hami_scheduler_extender.core.state import ClusterState
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

MIB = 1024 * 1024
GPU = ("node", "device_uuid", "device_index", "device_type")
VGPU = ("namespace", "node", "pod", "container_index", "device_uuid")
LEGACY_GPU = ("nodeid", "deviceuuid", "deviceidx", "devicetype")
LEGACY_VGPU = ("podnamespace", "nodename", "podname", "containeridx", "deviceuuid")

# HAMi v2.9+ scheduler metrics: name -> labels (all gauges; the collector is registered with zone="vGPU").
HAMI = {
    "hami_gpu_memory_limit_bytes": GPU,
    "hami_gpu_core_limit_ratio": GPU,
    "hami_gpu_memory_allocated_bytes": ("node", "device_uuid", "device_index", "device_cores", "device_type"),
    "hami_gpu_shared_count": GPU,
    "hami_gpu_core_allocated_ratio": GPU,
    "hami_node_gpu_overview": (
        "node",
        "device_uuid",
        "device_index",
        "device_cores",
        "device_memory_limit",
        "device_type",
    ),
    "hami_node_gpu_memory_allocated_ratio": ("node", "device_uuid", "device_index"),
    "hami_vgpu_memory_allocated_bytes": VGPU,
    "hami_vgpu_core_allocated_ratio": VGPU,
}
# HAMi's names up to v2.8, exported with --legacy-metrics.
LEGACY = {
    "GPUDeviceMemoryLimit": LEGACY_GPU,
    "GPUDeviceCoreLimit": LEGACY_GPU,
    "GPUDeviceMemoryAllocated": ("nodeid", "deviceuuid", "deviceidx", "devicecores", "devicetype"),
    "GPUDeviceSharedNum": LEGACY_GPU,
    "GPUDeviceCoreAllocated": LEGACY_GPU,
    "nodeGPUOverview": ("nodeid", "deviceuuid", "deviceidx", "devicecores", "devicememorylimit", "devicetype"),
    "nodeGPUMemoryPercentage": ("nodeid", "deviceuuid", "deviceidx"),
    "vGPUMemoryAllocated": LEGACY_VGPU,
    "vGPUCoreAllocated": LEGACY_VGPU,
}
# Exported by other parts of the extender (the MIG placement and ResourceQuota code), not by AllocationCollector:
# checked here only when present, so that their labels cannot drift from HAMi's either.
ELSEWHERE = {
    "hami_node_gpu_mig_instance_info": ("node", "device_uuid", "device_index"),
    "hami_resource_quota_used": ("namespace", "quota_name", "limit"),
    "hami_resource_quota_limit": ("namespace", "quota_name"),
    "nodeGPUMigInstance": ("nodeid", "deviceuuid", "deviceidx", "migname"),
    "QuotaUsed": ("quotanamespace", "quotaName", "limit"),
}
BUILD_INFO = {"version", "revision", "build_date", "go_version", "compiler", "platform"}
OURS = {
    "hami_extender_gpu_core_limit_cards": GPU,
    "hami_extender_gpu_core_allocated_cards": GPU,
    "hami_extender_vgpu_core_allocated_cards": VGPU,
    "hami_extender_node_gpu_memory_allocated_ratio": ("node",),
}


# Cards: a T4 and an A100 whose cores are scaled to 200 (deviceCoreScaling 2), and a second node's card.
@dataclasses.dataclass(frozen=True)
class Card:
    node: str
    index: int
    mem: int
    cores: int
    type: str


CARDS = {
    "GPU-t4": Card("n1", 0, 16000, 100, "NVIDIA-Tesla T4"),
    "GPU-a100": Card("n1", 1, 40000, 200, "NVIDIA-A100"),
    "GPU-l4": Card("n2", 0, 24000, 100, "NVIDIA-L4"),
}


def populated_state() -> tuple[ClusterState, list[PodAllocation]]:
    nodes = {
        name: node_json(
            name,
            [
                gpu(uuid, index=c.index, devmem=c.mem, devcore=c.cores, type=c.type)
                for uuid, c in CARDS.items()
                if c.node == name
            ],
        )
        for name in ("n1", "n2")
    }
    state = state_with(*nodes.values())
    pods = [
        ("n1", pod_json("train", namespace="ml", containers=[container("a", gpu=2, mem=3000, cores=30)])),
        (
            "n1",
            pod_json(
                "serve",
                namespace="web",
                containers=[container("a", gpu=1, mem=5000, cores=50), container("b", gpu=1, mem=1000, cores=7)],
            ),
        ),
        ("n2", pod_json("big", namespace="ml", containers=[container("a", gpu=1, mem=24000, cores=100)])),
    ]
    allocations = []
    for node, pod in pods:
        meta = pod["metadata"]
        allocation, _ = state.reserve_fit(
            uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], node=node, request=request_of(pod), now=0
        )
        assert allocation is not None, meta["name"]
        allocations.append(allocation)
    return state, allocations


def exposition(state: ClusterState, *, legacy: bool) -> dict[str, Any]:
    """What GET /metrics answers (server._metrics: the registry, then the allocation collector), parsed."""
    metrics = ExtenderMetrics(CollectorRegistry(auto_describe=True), version="9.8.7", legacy=legacy)
    text = generate_latest(metrics.registry) + render_allocations(AllocationCollector(state, legacy=legacy))
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert len(families) == len({line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE")})
    return families


def ceil_percent(used: int, total: int) -> int:
    """used in percent of total, rounded up (exactly: Fraction, no float)."""
    return math.ceil(Fraction(used * 100, total))


def by_labels(samples: list[Sample], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in keys): s.value for s in samples}


def expected_usage(allocations: list[PodAllocation]) -> dict[str, dict[str, int]]:
    usage = {uuid: {"mem": 0, "cores": 0, "count": 0} for uuid in CARDS}
    for allocation in allocations:
        for ctr in allocation.grants:
            for grant in ctr:
                usage[grant.uuid]["mem"] += grant.usedmem
                usage[grant.uuid]["cores"] += grant.usedcores
                usage[grant.uuid]["count"] += 1
    return usage


def check_family(families: Mapping[str, Any], name: str, labels: tuple[str, ...], *, zone: bool = True) -> Any:
    assert name in families, f"{name} is not exported"
    family = families[name]
    assert family.type == "gauge", (name, family.type)
    assert family.samples, f"{name} has no series"
    want = {*labels, "zone"} if zone else set(labels)
    for sample in family.samples:
        assert sample.name == name
        assert set(sample.labels) == want, (name, sorted(sample.labels))
        if zone:
            assert sample.labels["zone"] == "vGPU"
    return family


def test_every_hami_scheduler_metric_is_exported_with_hamis_type_labels_and_scale() -> None:
    state, allocations = populated_state()
    families = exposition(state, legacy=False)
    for name, labels in HAMI.items():
        check_family(families, name, labels)
    usage = expected_usage(allocations)
    assert usage["GPU-a100"]["count"] >= 1
    assert usage["GPU-l4"]["cores"] == 100

    def per_card(name: str) -> dict[tuple[str, ...], float]:
        return by_labels(families[name].samples, "device_uuid", "node", "device_index")

    def key(uuid: str) -> tuple[str, str, str]:
        return (uuid, CARDS[uuid].node, str(CARDS[uuid].index))

    for uuid, card in CARDS.items():
        used = usage[uuid]
        assert per_card("hami_gpu_memory_limit_bytes")[key(uuid)] == card.mem * MIB
        assert per_card("hami_gpu_memory_allocated_bytes")[key(uuid)] == used["mem"] * MIB
        assert per_card("hami_gpu_shared_count")[key(uuid)] == used["count"]
        # Cores in percent of the card: 100 = the whole card, even when its cores are scaled (the A100's 200).
        assert per_card("hami_gpu_core_limit_ratio")[key(uuid)] == 100
        assert per_card("hami_gpu_core_allocated_ratio")[key(uuid)] == ceil_percent(used["cores"], card.cores)
        ratio = per_card("hami_node_gpu_memory_allocated_ratio")[key(uuid)]
        assert ratio == pytest.approx(used["mem"] / card.mem)
        assert 0 <= ratio <= 1
        assert per_card("hami_node_gpu_overview")[key(uuid)] == used["mem"] * MIB
    overview = {s.labels["device_uuid"]: s.labels for s in families["hami_node_gpu_overview"].samples}
    allocated = {s.labels["device_uuid"]: s.labels for s in families["hami_gpu_memory_allocated_bytes"].samples}
    for uuid, card in CARDS.items():
        # device_memory_limit in MiB and device_cores as registered, as label values (HAMi's fmt.Sprint).
        assert overview[uuid]["device_memory_limit"] == str(card.mem)
        assert overview[uuid]["device_cores"] == allocated[uuid]["device_cores"] == str(card.cores)
        assert overview[uuid]["device_type"] == card.type

    vgpu_mem = families["hami_vgpu_memory_allocated_bytes"].samples
    vgpu_core = by_labels(families["hami_vgpu_core_allocated_ratio"].samples, *VGPU)
    want_mem, want_core = {}, {}
    for allocation in allocations:
        for position, ctr in enumerate(allocation.grants):
            for grant in ctr:
                k = (allocation.namespace, allocation.node, allocation.name, str(position), grant.uuid)
                want_mem[k] = grant.usedmem * MIB
                want_core[k] = ceil_percent(grant.usedcores, CARDS[grant.uuid].cores)
    assert by_labels(vgpu_mem, *VGPU) == want_mem
    assert vgpu_core == want_core
    # the second container of a pod is container_index 1; its 7 cores are 7 % of a 100-core card, 4 % of the A100's
    (second,) = [(k[4], v) for k, v in vgpu_core.items() if k[:4] == ("web", "n1", "serve", "1")]
    assert second[1] == (7 if CARDS[second[0]].cores == 100 else 4)

    build = families["hami_build_info"]
    assert build.type == "gauge"
    assert len(build.samples) == 1
    assert set(build.samples[0].labels) == BUILD_INFO
    assert build.samples[0].labels["version"] == "9.8.7"
    assert build.samples[0].value == 1


def test_legacy_names_only_with_the_flag_and_with_hamis_old_labels_and_raw_cores() -> None:
    state, allocations = populated_state()
    assert not set(LEGACY) & set(exposition(state, legacy=False))
    families = exposition(state, legacy=True)
    for name, labels in {**HAMI, **LEGACY}.items():
        check_family(families, name, labels)
    usage = expected_usage(allocations)
    core_limit = by_labels(families["GPUDeviceCoreLimit"].samples, "deviceuuid")
    core_alloc = by_labels(families["GPUDeviceCoreAllocated"].samples, "deviceuuid")
    mem_limit = by_labels(families["GPUDeviceMemoryLimit"].samples, "deviceuuid")
    for uuid, card in CARDS.items():
        # Before v2.9 HAMi exported the registered and held cores as they are (the A100 registers 200).
        assert core_limit[(uuid,)] == card.cores
        assert core_alloc[(uuid,)] == usage[uuid]["cores"]
        assert mem_limit[(uuid,)] == card.mem * MIB
    vgpu_core = by_labels(families["vGPUCoreAllocated"].samples, "podname", "containeridx", "deviceuuid")
    for allocation in allocations:
        for position, ctr in enumerate(allocation.grants):
            for grant in ctr:
                assert vgpu_core[(allocation.name, str(position), grant.uuid)] == grant.usedcores


def test_our_own_gauges_keep_their_names_and_the_one_card_scale() -> None:
    state, allocations = populated_state()
    families = exposition(state, legacy=False)
    for name, labels in OURS.items():
        check_family(families, name, labels, zone=False)
    usage = expected_usage(allocations)
    limit = by_labels(families["hami_extender_gpu_core_limit_cards"].samples, "device_uuid")
    held = by_labels(families["hami_extender_gpu_core_allocated_cards"].samples, "device_uuid")
    for uuid, card in CARDS.items():
        assert limit[(uuid,)] == card.cores / 100
        assert held[(uuid,)] == usage[uuid]["cores"] / 100
    node = by_labels(families["hami_extender_node_gpu_memory_allocated_ratio"].samples, "node")
    for name in ("n1", "n2"):
        cards = [u for u, c in CARDS.items() if c.node == name]
        total = sum(CARDS[u].mem for u in cards)
        assert node[(name,)] == pytest.approx(sum(usage[u]["mem"] for u in cards) / total)
    for counter in ("hami_extender_decisions", "hami_extender_filter_node_failures", "hami_extender_watch_restarts"):
        assert families[counter].type == "counter"
    assert families["hami_extender_request_duration_seconds"].type == "histogram"


def test_metrics_of_other_parts_if_present_carry_hamis_labels() -> None:
    state, _ = populated_state()
    families = exposition(state, legacy=True)
    for name, labels in ELSEWHERE.items():
        if name in families and families[name].samples:
            for sample in families[name].samples:
                assert set(labels) <= set(sample.labels), (name, sorted(sample.labels))


def test_the_legacy_flag_is_hamis_name_and_off_by_default() -> None:
    assert PROGRAM.load_settings([], {}).legacy_metrics is False
    assert PROGRAM.load_settings(["--legacy-metrics"], {}).legacy_metrics is True
    assert PROGRAM.load_settings([], {"HAMI_EXTENDER_LEGACY_METRICS": "true"}).legacy_metrics is True


def test_an_empty_cache_still_declares_every_hami_family() -> None:
    families = exposition(ClusterState(), legacy=True)
    for name in (*HAMI, *LEGACY):
        assert families[name].type == "gauge"
        assert families[name].samples == []


def test_the_fast_exposition_is_prometheus_clients_own_text() -> None:
    """render_allocations formats the text itself (for speed): it must be generate_latest's text byte for byte, also
    for label values a node's register may carry (quotes, backslashes, newlines in a device type)."""
    state, _ = populated_state()
    odd = 'NVIDIA "T4"\\x\nnext'
    state.upsert_node(objects.node_inventory(node_json("n3", [gpu("GPU-odd", type=odd)])))
    for legacy in (False, True):
        collector = AllocationCollector(state, legacy=legacy)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        text = render_allocations(collector)
        assert text == generate_latest(registry)
        ours = list(text_string_to_metric_families(text.decode()))
        assert any(s.labels.get("device_type") == odd for f in ours for s in f.samples)


def test_core_percent_is_hamis_normalisation_without_its_float_error() -> None:
    assert core_percent(100, 7) == (100, 7)  # HAMi's float64 arithmetic says 8
    assert core_percent(100, 100) == (100, 100)
    assert core_percent(200, 7) == (100, 4)  # a card with scaled cores: 3.5 % rounded up
    assert core_percent(200, 0) == (100, 0)
    assert core_percent(0, 30) == (0, 0)  # a card registering no cores
