"""The ``preempt`` verb over HTTP (kube-scheduler's ExtenderPreemptionArgs / ExtenderPreemptionResult) on the
in-process application: victims chosen on the usage cache, untrusted arguments refused or ignored, metrics."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from extender_builders import container, pod_json
from hami_scheduler_extender.adapters.watch import apply_pod_event
from hami_scheduler_extender.app import preempt as preempt_verb
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation
from hami_scheduler_extender.core.quota import QuotaSpec
from http_harness import Harness

# The harness's node n2 has one card GPU-b0: 10 slots, 16,000 MiB.


def hold(harness: Harness, uid: str, mem: int, priority: int | None, node: str = "n2", card: str = "GPU-b0") -> None:
    harness.state.apply_pod(
        uid,
        PodAllocation(
            uid=uid,
            namespace="default",
            name=uid,
            node=node,
            grants=((DeviceGrant(uuid=card, usedmem=mem, usedcores=0),),),
            priority=priority,
        ),
    )


def preemptor(mem: int = 8000, priority: int | None = 1000, **spec: Any) -> dict[str, Any]:
    pod = pod_json("urgent", containers=[container(gpu=1, mem=mem)])
    if priority is not None:
        pod["spec"]["priority"] = priority
    pod["spec"].update(spec)
    return pod


def meta(victims: dict[str, list[str]], violations: int = 0) -> dict[str, Any]:
    return {
        node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": violations} for node, uids in victims.items()
    }


async def test_preempt_proposes_the_pods_that_free_the_card(harness: Harness) -> None:
    for uid, mem, priority in (("big", 8000, 10), ("small-1", 4000, 10), ("small-2", 4000, 5)):
        hold(harness, uid, mem, priority)
    answer = await harness.post(
        "preempt",
        {"Pod": preemptor(8000), "NodeNameToMetaVictims": meta({"n2": ["big", "small-1", "small-2"]}, violations=2)},
    )
    # one pod frees 8,000 MiB: the biggest, not the two smaller ones
    assert answer == {"NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": "big"}], "NumPDBViolations": 1}}}
    # the same pod asks for the whole card: all three, highest priority first
    answer = await harness.post("preempt", {"Pod": preemptor(16000), "NodeNameToMetaVictims": meta({"n2": []})})
    victims = [p["UID"] for p in answer["NodeNameToMetaVictims"]["n2"]["Pods"]]
    assert victims[-1] == "small-2"
    assert set(victims) == {"big", "small-1", "small-2"}
    text = await (await harness.client.get("/metrics")).text()
    assert 'hami_extender_request_duration_seconds_count{verb="preempt"} 2.0' in text
    assert "hami_extender_preemption_victims_total 4.0" in text
    assert 'hami_extender_decisions_total{result="narrowed",verb="preempt"} 1.0' in text
    assert 'hami_extender_decisions_total{result="widened",verb="preempt"} 1.0' in text


async def test_a_pod_over_its_namespaces_gpu_quota_preempts_no_one(harness: Harness) -> None:
    # Evicting other namespaces' pods never makes room in a quota: without this, a pod at its quota had
    # kube-scheduler evict lower-priority GPU pods every cycle and still never bound.
    for uid, mem, priority in (("big", 8000, 10), ("small", 4000, 10)):
        hold(harness, uid, mem, priority)
    harness.state.quotas.upsert(QuotaSpec(namespace="default", name="gpu", mem=4000))
    answer = await harness.post("preempt", {"Pod": preemptor(8000), "NodeNameToMetaVictims": meta({"n2": []})})
    assert answer == {"NodeNameToMetaVictims": {}}
    text = await (await harness.client.get("/metrics")).text()
    assert 'hami_extender_decisions_total{result="over-quota",verb="preempt"} 1.0' in text
    # Within its quota the same pod preempts as before.
    harness.state.quotas.upsert(QuotaSpec(namespace="default", name="gpu", mem=64000))
    answer = await harness.post("preempt", {"Pod": preemptor(8000), "NodeNameToMetaVictims": meta({"n2": []})})
    assert answer == {"NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": "small"}], "NumPDBViolations": 0}}}


async def test_preempt_drops_nodes_it_cannot_help_and_never_names_a_more_important_pod(harness: Harness) -> None:
    hold(harness, "vip", 16000, 5000)
    hold(harness, "low", 4000, 1, node="n1", card="GPU-a0")
    answer = await harness.post(
        "preempt",
        {
            "Pod": preemptor(16000),
            "NodeNameToMetaVictims": meta({"n2": ["vip"], "no-such-node": ["x"], "dead": ["y"]}),
        },
    )
    assert answer == {"NodeNameToMetaVictims": {}}
    # the full-object form (nodeCacheCapable: false) is read too; a pod that fits already needs no victim
    # of ours: kube-scheduler's own (for its in-tree filters) pass through
    answer = await harness.post(
        "preempt",
        {
            "Pod": preemptor(2000),
            "NodeNameToVictims": {"n1": {"Pods": [{"metadata": {"uid": "low"}}], "NumPDBViolations": 0}},
        },
    )
    assert answer == {"NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "low"}], "NumPDBViolations": 0}}}


async def test_preempt_without_right_to_preempt_or_before_sync_preempts_nowhere(harness: Harness) -> None:
    hold(harness, "low", 16000, 1)
    body = {"NodeNameToMetaVictims": meta({"n2": ["low"]})}
    assert (await harness.post("preempt", {**body, "Pod": preemptor(preemptionPolicy="Never")}))[
        "NodeNameToMetaVictims"
    ] == {}
    assert (await harness.post("preempt", {**body, "Pod": preemptor(schedulerName="other")}))[
        "NodeNameToMetaVictims"
    ] == {}
    assert (await harness.post("preempt", {**body, "Pod": preemptor(priority=1)}))["NodeNameToMetaVictims"] == {}
    assert (await harness.post("preempt", {**body, "Pod": preemptor(priority=None)}))["NodeNameToMetaVictims"] == {}
    harness.not_ready = "caches not synced"
    assert (await harness.post("preempt", {**body, "Pod": preemptor()}))["NodeNameToMetaVictims"] == {}
    harness.not_ready = None
    assert (await harness.post("preempt", {**body, "Pod": preemptor()}))["NodeNameToMetaVictims"] == {
        "n2": {"Pods": [{"UID": "low"}], "NumPDBViolations": 0}
    }


async def test_malformed_preemption_arguments_get_400(harness: Harness) -> None:
    good = preemptor()
    for body in (
        [],
        {"Pod": "x"},
        {"Pod": good, "NodeNameToMetaVictims": []},
        {"Pod": good, "NodeNameToMetaVictims": {"n2": "x"}},
        {"Pod": good, "NodeNameToMetaVictims": {"n2": {"Pods": {}, "NumPDBViolations": 0}}},
        {"Pod": good, "NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": 5}], "NumPDBViolations": 0}}},
        {"Pod": good, "NodeNameToMetaVictims": {"n2": {"Pods": [], "NumPDBViolations": -1}}},
        {"Pod": good, "NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": "u"}] * 10_001}}},
    ):
        response = await harness.client.post("/preempt", json=body)
        assert response.status == 400, body
        assert (await response.text()).startswith("preempt: ")


async def test_after_the_victims_are_deleted_the_preemptor_fits_and_binds(harness: Harness) -> None:
    for n in range(4):
        hold(harness, f"low-{n}", 4000, 1)
    pod = harness.kube.add(preemptor(8000))
    assert (await harness.filter(pod, ["n2"]))["NodeNames"] == []
    answer = await harness.post("preempt", {"Pod": pod, "NodeNameToMetaVictims": meta({"n2": []})})
    victims = [p["UID"] for p in answer["NodeNameToMetaVictims"]["n2"]["Pods"]]
    assert len(victims) == 2
    for uid in victims:  # kube-scheduler deletes them; the pod watch tells the cache
        apply_pod_event(harness.state, "DELETED", pod_json(uid, uid=uid, node_name="n2"))
    assert (await harness.filter(pod, ["n2"]))["NodeNames"] == ["n2"]
    assert (await harness.bind(pod, "n2"))["Error"] == ""


async def test_a_spent_request_budget_leaves_the_remaining_candidates_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold(harness, "on-n2", 16000, 1)
    hold(harness, "on-n1", 16000, 1, node="n1", card="GPU-a0")
    hold(harness, "also-n1", 16000, 1, node="n1", card="GPU-a1")
    monkeypatch.setattr(preempt_verb, "REQUEST_BUDGET", 1)
    answer = await harness.post(
        "preempt", {"Pod": preemptor(16000), "NodeNameToMetaVictims": meta({"n1": [], "n2": []})}
    )
    assert list(answer["NodeNameToMetaVictims"]) == ["n1"]  # the first node spent it; n2 was not reached
    text = await (await harness.client.get("/metrics")).text()
    assert 'hami_extender_decisions_total{result="over-budget",verb="preempt"} 1.0' in text


async def test_a_preempt_body_over_4_mib_gets_413(harness: Harness) -> None:
    victims = {f"node-{n}": {"Pods": [{"UID": "u" * 60}] * 100, "NumPDBViolations": 0} for n in range(800)}
    body = json.dumps({"Pod": preemptor(), "NodeNameToMetaVictims": victims}).encode()
    refused = await harness.client.post("/preempt", data=io.BytesIO(body))
    assert refused.status == 413
    assert "larger than 4194304 bytes" in await refused.text()
    text = await (await harness.client.get("/metrics")).text()
    assert 'hami_extender_decisions_total{result="bad-request",verb="preempt"} 1.0' in text
