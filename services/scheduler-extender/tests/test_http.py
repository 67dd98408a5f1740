"""Component tests of the HTTP API: extender v1 JSON in and out, errors, probes, metrics, concurrency.

The Kubernetes API is replaced by ``FakeKube`` (http_harness.py), a test double of the API boundary (the real
API server is exercised by the end-to-end tests in tests/e2e/test_extender_*.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from extender_builders import container, node_json, pod_json
from hami_scheduler_extender.app.extender import Extender
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from hami_shared.service.kube import KubeError
from http_harness import Harness
from prometheus_client import CollectorRegistry


async def test_filter_returns_fitting_nodes_and_hami_reasons(harness: Harness) -> None:
    pod = harness.kube.add(pod_json(containers=[container(gpu=1, mem=20000)]))
    answer = await harness.filter(pod, ["n1", "n2", "dead", "ghost"])
    assert answer["NodeNames"] == []
    assert answer["Error"] == ""
    assert answer["FailedNodes"]["n1"] == "2/2 CardInsufficientMemory"
    assert answer["FailedNodes"]["dead"].startswith("node unregistered: allocatable nvidia.com/gpu is 0")
    assert answer["FailedNodes"]["ghost"].startswith("node unregistered")
    assert [e["reason"] for e in harness.kube.events] == ["FilteringFailed"]
    small = harness.kube.add(pod_json("small"))
    answer = await harness.filter(small, ["n1", "n2", "dead"])
    assert answer["NodeNames"] == ["n1", "n2"]
    assert set(answer["FailedNodes"]) == {"dead"}


async def test_filter_with_full_node_objects(harness: Harness) -> None:
    pod = pod_json()
    nodes = {"items": [node_json("n1"), node_json("dead")]}
    answer = await harness.post("filter", {"Pod": pod, "Nodes": nodes, "NodeNames": None})
    assert [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["n1"]


async def test_pod_without_gpu_passes_every_node(harness: Harness) -> None:
    answer = await harness.filter(pod_json(containers=[container()]), ["n1", "dead"])
    assert answer["NodeNames"] == ["n1", "dead"]


async def test_pod_with_bad_resources_is_unresolvable_with_a_message(harness: Harness) -> None:
    pod = pod_json(containers=[{"name": "c", "resources": {"limits": {"nvidia.com/gpumem": "1.5"}}}])
    answer = await harness.filter(pod, ["n1"])
    assert answer["NodeNames"] == []
    assert "whole number" in answer["FailedAndUnresolvableNodes"]["n1"]


async def test_prioritize_scores_by_node_policy(harness: Harness) -> None:
    busy = harness.kube.add(pod_json("busy", containers=[container(gpu=1, mem=16000, cores=100)]))
    assert (await harness.bind(busy, "n1"))["Error"] == ""
    answer = await harness.post("prioritize", {"Pod": pod_json(), "NodeNames": ["n1", "n2"], "Nodes": None})
    scores = {entry["Host"]: entry["Score"] for entry in answer}
    assert scores["n1"] > scores["n2"] == 0
    spread = pod_json(annotations={names.NODE_SCHEDULER_POLICY: "spread"})
    answer = await harness.post("prioritize", {"Pod": spread, "NodeNames": ["n1", "n2"], "Nodes": None})
    scores = {entry["Host"]: entry["Score"] for entry in answer}
    assert scores["n1"] < scores["n2"] == 10


async def test_prioritize_follows_the_pod_version_it_is_sent(harness: Harness) -> None:
    busy = harness.kube.add(pod_json("busy", containers=[container(gpu=1, mem=16000, cores=100)]))
    assert (await harness.bind(busy, "n1"))["Error"] == ""
    pod = pod_json("p")
    pod["metadata"]["resourceVersion"] = "1"
    await harness.filter(pod, ["n1", "n2"])

    async def scores(version: dict[str, Any]) -> dict[str, int]:
        answer = await harness.post("prioritize", {"Pod": version, "NodeNames": ["n1", "n2"], "Nodes": None})
        return {entry["Host"]: entry["Score"] for entry in answer}

    assert (await scores(pod))["n1"] > 0  # binpack (the default), as filter resolved it
    newer = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "2"}}
    newer["metadata"]["annotations"] = {names.NODE_SCHEDULER_POLICY: "spread"}
    assert (await scores(newer))["n2"] == 10  # a newer version is resolved again


async def test_bind_writes_the_annotations_with_the_binding(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=1, mem=3000, cores=20)]))
    await harness.filter(pod, ["n1"])
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    assert harness.kube.order == ["bind p"]  # one API write
    stored = harness.kube.pods[("default", "p")]
    assert stored["spec"]["nodeName"] == "n1"
    annotations = stored["metadata"]["annotations"]
    assert annotations[names.VGPU_NODE] == "n1"
    assert annotations[names.BIND_PHASE] == "allocating"
    assert annotations[names.BIND_TIME] == annotations[names.VGPU_TIME]
    assert annotations[names.DEVICES_TO_ALLOCATE] == annotations[names.DEVICES_ALLOCATED]
    assert decode_pod_devices(annotations[names.DEVICES_ALLOCATED])[0][0].usedmem == 3000
    assert annotations[names.DEVICE_SLOTS] in ("GPU-a0-0;", "GPU-a1-0;")
    assert harness.kube.events[-1]["reason"] == "BindingSucceed"
    # Bound again to the same node (a retried request): success, nothing new.
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    assert harness.kube.order == ["bind p"]


def allocated(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod after its device plugin finished: ``bind-phase=success``."""
    pod["metadata"]["annotations"][names.BIND_PHASE] = "success"
    return pod


async def test_vgpu_node_label_is_written_once_the_device_plugin_allocated(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=1, mem=3000)]))
    harness.extender.pod_seen(pod)  # not bound yet: nothing to label
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    stored = harness.kube.pods[("default", "p")]
    harness.extender.pod_seen(stored)  # bound, containers not started: not yet
    assert harness.kube.labels_queued == []
    harness.extender.pod_seen(allocated(stored))
    identity = {"name": "p", "namespace": "default", "uid": pod["metadata"]["uid"]}
    assert harness.kube.labels_queued == [(identity, {names.VGPU_NODE: "n1"})]
    # Where the API server copied the Binding's labels (or the device plugin set it), no write.
    harness.kube.labels_queued.clear()
    harness.kube.copy_binding_labels = True
    other = harness.kube.add(pod_json("q", containers=[container(gpu=1, mem=3000)]))
    assert (await harness.bind(other, "n1"))["Error"] == ""
    stored = allocated(harness.kube.pods[("default", "q")])
    assert stored["metadata"]["labels"] == {names.VGPU_NODE: "n1"}
    harness.extender.pod_seen(stored)
    assert harness.kube.labels_queued == []


async def test_label_is_written_only_by_the_leader_and_when_enabled(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=1, mem=3000)]))
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    bound = allocated(harness.kube.pods[("default", "p")])
    follower = Extender(
        state=harness.state,
        kube=harness.kube,
        config=harness.extender_config,
        metrics=ExtenderMetrics(CollectorRegistry(), version="test"),
        ready=lambda: None,
        leading=lambda: False,
    )
    follower.pod_seen(bound)
    unlabelled = Extender(
        state=harness.state,
        kube=harness.kube,
        config=dataclasses.replace(harness.extender_config, node_label=False),
        metrics=ExtenderMetrics(CollectorRegistry(), version="test"),
        ready=lambda: None,
    )
    unlabelled.pod_seen(bound)
    assert harness.kube.labels_queued == []


async def test_bind_reads_the_pod_when_filter_did_not_see_it(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("unseen"))
    assert (await harness.bind(pod, "n2"))["Error"] == ""
    missing = pod_json("missing")
    answer = await harness.bind(missing, "n2")
    assert "cannot read pod default/missing" in answer["Error"]


async def test_bind_refuses_a_recreated_pod(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p"))
    stale = dict(pod, metadata=dict(pod["metadata"], uid="old-uid"))
    assert "re-created" in (await harness.bind(stale, "n1"))["Error"]


async def test_refused_binding_releases_the_reservation(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=2, mem=1000)]))
    await harness.filter(pod, ["n1"])  # the extender's copy: not bound
    pod["spec"]["nodeName"] = "n2"  # then bound by someone else before our Binding
    answer = await harness.bind(pod, "n1")
    assert "cannot bind pod default/p to n1: HTTP 409" in answer["Error"]
    assert harness.state.allocation(pod["metadata"]["uid"]) is None
    view = harness.state.view("n1")
    assert view is not None
    assert view.sum_used == 0
    assert names.DEVICES_ALLOCATED not in harness.kube.pods[("default", "p")]["metadata"]["annotations"]
    assert harness.kube.events[-1]["reason"] == "BindingFailed"


@pytest.mark.parametrize("status", [404, 409, 422])
async def test_binding_refused_by_the_api_releases_the_reservation(harness: Harness, status: int) -> None:
    pod = harness.kube.add(pod_json("p"))
    harness.kube.binding_error = KubeError(f"HTTP {status}: no", status=status)
    answer = await harness.bind(pod, "n1")
    assert f"cannot bind pod default/p to n1: HTTP {status}" in answer["Error"]
    assert harness.state.allocation(pod["metadata"]["uid"]) is None


@pytest.mark.parametrize("status", [0, 500, 504])
async def test_binding_without_an_answer_keeps_the_reservation_until_bound_again(harness: Harness, status: int) -> None:
    # Both cards of n1 taken whole by this pod: its own unconfirmed hold would make n1 look full.
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=2, mem=16000)]))
    harness.kube.binding_error = KubeError("TimeoutError: ", status=status)
    answer = await harness.bind(pod, "n1")
    assert "cannot bind pod default/p to n1" in answer["Error"]
    held = harness.state.allocation(pod["metadata"]["uid"])
    assert held is not None
    assert held.assumed  # the Binding may have been written: never under-count
    harness.kube.binding_error = None
    # kube-scheduler retries the unbound pod: its own hold does not count against it, but stays.
    assert (await harness.filter(pod, ["n1"]))["NodeNames"] == ["n1"]
    assert harness.state.allocation(pod["metadata"]["uid"]) == held
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    rebound = harness.state.allocation(pod["metadata"]["uid"])
    assert rebound is not None
    assert rebound != held
    view = harness.state.view("n1")
    assert view is not None
    assert view.sum_used == 2


async def test_filter_with_another_pods_uid_leaves_its_hold(harness: Harness) -> None:
    """Attack: POST /filter with a victim's UID used to drop the victim's hold (issue 16)."""
    victim = harness.kube.add(pod_json("victim", containers=[container(gpu=2, mem=16000)]))
    harness.kube.binding_error = KubeError("TimeoutError: ", status=0)
    await harness.bind(victim, "n1")
    harness.kube.binding_error = None
    held = harness.state.allocation(victim["metadata"]["uid"])
    assert held is not None
    forged = pod_json("attacker", uid=victim["metadata"]["uid"], containers=[container(gpu=2, mem=16000)])
    answer = await harness.filter(forged, ["n1"])
    assert answer["NodeNames"] == []  # the victim's hold counts: the forged pod gets no room from it
    assert harness.state.allocation(victim["metadata"]["uid"]) == held


async def test_bind_to_a_node_that_no_longer_fits(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("big", containers=[container(gpu=3, mem=10)]))
    answer = await harness.bind(pod, "n1")
    assert "no longer fits" in answer["Error"]
    assert "NodeInsufficientDevice" in answer["Error"]


async def test_concurrent_binds_never_overcommit(harness: Harness) -> None:
    harness.kube.latency = 0.01
    pods = [harness.kube.add(pod_json(f"p{i}", containers=[container(gpu=1, mem=1000)])) for i in range(30)]
    await asyncio.gather(*(harness.filter(p, ["n1"]) for p in pods))
    answers = await asyncio.gather(*(harness.bind(p, "n1") for p in pods))
    bound = [a for a in answers if a["Error"] == ""]
    assert len(bound) == 4  # 2 GPUs x split count 2
    assert all("CardTimeSlicingExhausted" in a["Error"] for a in answers if a["Error"])
    view = harness.state.view("n1")
    assert view is not None
    assert all(d.used == d.count for d in view.devices)
    slots = [
        p["metadata"]["annotations"][names.DEVICE_SLOTS]
        for p in pods
        if names.DEVICE_SLOTS in p["metadata"]["annotations"]
    ]
    assert len(set(slots)) == 4


@pytest.mark.parametrize(
    ("verb", "body", "message"),
    [
        ("filter", b"{not json", "not valid JSON"),
        ("filter", b"[]", "JSON object"),
        ("filter", b'{"Pod": 3}', "'Pod' must be a Pod object"),
        ("filter", b'{"Pod": {"metadata": {}}, "NodeNames": "n1"}', "'NodeNames' must be a list"),
        ("prioritize", b'{"NodeNames": []}', "'Pod' must be a Pod object"),
        ("bind", b'{"PodName": "p"}', "'PodNamespace' must be a non-empty string"),
    ],
)
async def test_malformed_requests_get_400(harness: Harness, verb: str, body: bytes, message: str) -> None:
    response = await harness.client.post(f"/{verb}", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert message in await response.text()


async def test_internal_error_is_reported_in_the_error_field(harness: Harness) -> None:
    def explode(name: str) -> None:
        raise RuntimeError("boom")

    harness.state.view = explode  # type: ignore[method-assign, assignment]
    answer = await harness.filter(pod_json(), ["n1"])
    assert answer["Error"] == "internal error in filter: RuntimeError: boom"


async def test_not_ready_answers_with_error_and_503(harness: Harness) -> None:
    harness.not_ready = "caches not synced yet"
    assert (await harness.filter(pod_json(), ["n1"]))["Error"] == "caches not synced yet"
    assert (await harness.bind(harness.kube.add(pod_json("p")), "n1"))["Error"] == "caches not synced yet"
    response = await harness.client.get("/readyz")
    assert response.status == 503
    harness.not_ready = None
    assert (await harness.client.get("/readyz")).status == 200
    assert (await harness.client.get("/healthz")).status == 200


async def test_metrics_expose_latency_decisions_reasons_and_allocations(harness: Harness) -> None:
    pod = harness.kube.add(pod_json("p", containers=[container(gpu=1, mem=2000, cores=25)]))
    await harness.filter(pod, ["n1", "dead"])
    await harness.bind(pod, "n1")
    text = await (await harness.client.get("/metrics")).text()
    for needle in (
        'hami_extender_request_duration_seconds_bucket{le="0.01",verb="filter"}',
        'hami_extender_request_duration_seconds_count{verb="bind"} 1.0',
        'hami_extender_decisions_total{result="bound",verb="bind"} 1.0',
        'hami_extender_filter_node_failures_total{reason="node unregistered"} 1.0',
        "hami_gpu_memory_limit_bytes{",
        "hami_gpu_memory_allocated_bytes{",
        "hami_gpu_core_allocated_ratio{",
        "hami_gpu_shared_count{",
        'hami_vgpu_memory_allocated_bytes{container_index="0",device_uuid=',
        "hami_build_info{",
    ):
        assert needle in text, needle
    assert "2.097152e+09" in text  # 2000 MiB held on the chosen card
