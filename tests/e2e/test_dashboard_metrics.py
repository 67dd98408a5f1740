"""The Grafana dashboard (deploy/grafana/hami-dashboard.json) queries only what the services export.

Each service's exposition is built from a populated state (the extender's usage cache with nodes and pods, the
device plugin's monitor with containers and GPUs, the webhook's and lib-installer's counters after one event) and
parsed with prometheus_client's text parser. Every metric a panel's PromQL selects must be a series name there, and
every label it groups or matches on must be a label of that series (Prometheus adds ``instance`` and ``job``).
No cluster needed.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
import sys
from collections.abc import Iterator

from hami_device_plugin.app.metrics import ContainerDeviceSample, HostDeviceSample, MigDeviceSample, PluginMetrics
from hami_lib_installer.app.daemon import Metrics as InstallerMetrics
from hami_scheduler_extender.app.metrics import AllocationCollector, ExtenderMetrics, render_allocations
from hami_scheduler_extender.core import commit, objects
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.mig import decode_mig_allocations, encode_mig_allocations
from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.core.decision import Outcome
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services" / "scheduler-extender" / "tests"))
from extender_builders import container, gpu, mig_gpu, node_json, pod_json, request_of, state_with  # noqa: E402

TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
G0 = "GPU-00000000-0000-4000-8000-000000000000"


def realize_mig_pod(state: ClusterState) -> None:
    """A pod on node ``mig`` whose instance the device plugin has created (its runtime identity recorded in the
    pod's ``hami.io/vgpu-mig-allocations``, as on a dynamic MIG node), so ``hami_node_gpu_mig_instance_info``
    has a series."""
    pod = pod_json("m", namespace="ml", containers=[container(gpu=1, mem=8000)])
    meta = pod["metadata"]
    allocation, _ = state.reserve_fit(
        uid=meta["uid"], namespace="ml", name="m", node="mig", request=request_of(pod), now=0
    )
    assert allocation is not None
    annotations = commit.placement_annotations(allocation, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    reserved = decode_mig_allocations(annotations[names.MIG_ALLOCATIONS])
    annotations[names.MIG_ALLOCATIONS] = encode_mig_allocations(
        [a.with_identity(f"MIG-{a.gpu_uuid}", 5, 0) for a in reserved]
    )
    pod["metadata"] = {**meta, "annotations": annotations}
    pod["spec"] = {**pod["spec"], "nodeName": "mig"}
    read, _ = objects.trusted_allocation(pod)
    assert read is not None
    state.apply_pod(allocation.uid, read)


def extender_text() -> str:
    state = state_with(node_json("n1", [gpu(G0, devmem=16000)]), node_json("mig", [mig_gpu("GPU-m0", index=0)]))
    pod = pod_json("p", namespace="ml", containers=[container(gpu=1, mem=4000, cores=25)])
    meta = pod["metadata"]
    allocation, _ = state.reserve_fit(
        uid=meta["uid"], namespace="ml", name="p", node="n1", request=request_of(pod), now=0
    )
    assert allocation is not None
    realize_mig_pod(state)
    metrics = ExtenderMetrics(CollectorRegistry(auto_describe=True), version="t")
    metrics.request_seconds.labels(verb="filter").observe(0.002)
    metrics.decisions.labels(verb="filter", result="fit").inc()
    metrics.filter_failures.labels(reason="node unregistered").inc()
    metrics.watch_restarts.labels(resource="pods").inc()
    return (generate_latest(metrics.registry) + render_allocations(AllocationCollector(state))).decode()


def device_plugin_text() -> str:
    metrics = PluginMetrics.create("t", node="n1")
    metrics.monitor.containers = (
        ContainerDeviceSample("ml", "p", "c", 0, G0, 10, 20, 15, 1, 40, 2.0, False, False),
    )  # fmt: skip
    metrics.monitor.hosts = (HostDeviceSample(G0, 0, "NVIDIA A100", 1, 2, 55, 30, 60, 70.0, 0, 0),)
    metrics.monitor.migs = (MigDeviceSample("ml", "p", "c", 0, G0, "MIG-1", "1g.5gb", 1, 0),)
    metrics.allocations.labels(result="ok", matched_by="pod-resources").inc()
    return generate_latest(metrics.registry).decode()


def webhook_text() -> str:
    metrics = WebhookMetrics.create()
    metrics.record_decision(Outcome.PATCHED)
    metrics.request_seconds.observe(0.001)
    return generate_latest(metrics.registry).decode()


def installer_text() -> str:
    metrics = InstallerMetrics()
    metrics.passes.labels("ok").inc()
    metrics.files_replaced.inc()
    metrics.versions_removed.inc()
    metrics.last_success.set(1.0)
    return generate_latest(metrics.registry).decode()


def exported() -> dict[str, set[str]]:
    """Series name -> its label names, over the four services."""
    out: dict[str, set[str]] = {}
    for text in (extender_text(), device_plugin_text(), webhook_text(), installer_text()):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


def queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hami-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def parse(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names selected, labels grouped on, labels matched on) of a PromQL expression."""
    grouped = {
        label.strip()
        for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
        for label in body.split(",")
        if label.strip()
    }
    matched = {name for body in re.findall(r"\{([^}]*)\}", expr) for name in re.findall(r"(\w+)\s*[=!]~?", body)}
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", rest)
    names = {
        token
        for token, call in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\(?)", rest)
        if not call and token not in KEYWORDS and not re.fullmatch(r"\d+(e\d+)?", token)
    }
    return names, grouped, matched


def test_the_parser_tells_metrics_from_functions_and_labels() -> None:
    names, grouped, matched = parse(
        'histogram_quantile(0.99, sum by (le, verb) (rate(x_bucket{verb="filter"}[5m]))) / on (verb) y > 0.9'
    )
    assert (names, grouped, matched) == ({"x_bucket", "y"}, {"le", "verb"}, {"verb"})


def test_every_metric_and_label_the_dashboard_queries_is_exported() -> None:
    series = exported()
    seen = set()
    for title, expr in queries():
        names, grouped, matched = parse(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert name in series, f"panel {title!r} queries {name}, which no service exports"
            missing = (grouped | matched) - series[name] - TARGET_LABELS
            assert not missing, f"panel {title!r}: {name} has no label {sorted(missing)}"
            seen.add(name)
    # the dashboard shows HAMi's scheduler and monitor metrics, not only ours
    for hami in ("hami_node_gpu_memory_allocated_ratio", "hami_gpu_core_allocated_ratio", "hami_node_gpu_overview",
                 "hami_host_gpu_utilization_ratio", "hami_container_device_utilization_ratio"):  # fmt: skip
        assert hami in seen


def test_utilisation_panels_use_hamis_percent_scale() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hami-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        if re.search(r"utilization_ratio|core_allocated_ratio", exprs):
            assert panel["fieldConfig"]["defaults"]["unit"] == "percent", panel["title"]
