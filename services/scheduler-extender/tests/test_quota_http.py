"""ResourceQuota through the extender verbs (the HTTP application, ``FakeKube`` as the API double): filter
refuses an over-quota pod on every node with HAMi's reason, bind re-checks so a burst cannot overshoot, pods
asking a percentage count on the card each node would give, the quota metrics show HAMi's names; and a property
test: whatever pods arrive, filtered and bound in any order, a namespace never holds more than its quota."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from extender_builders import container, gpu, node_json, pod_json, state_with
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.quota import Demand, QuotaSpec
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared.names import ResourceNames
from http_harness import FakeKube, Harness
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

MEM_QUOTA = "limits.nvidia.com/gpumem"


def team_pod(name: str, *, mem: int | None = None, pct: int | None = None, gpus: int = 1) -> dict[str, Any]:
    resources: dict[str, int | str] = {"gpu": gpus}
    if mem is not None:
        resources["mem"] = mem
    if pct is not None:
        resources["pct"] = pct
    return pod_json(name, namespace="team", containers=[container("c", **resources)])


async def test_over_quota_pod_is_refused_on_every_node_with_the_numbers(harness: Harness) -> None:
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=8000))
    first = harness.kube.add(team_pod("first", mem=5000))
    assert (await harness.filter(first, ["n1", "n2"]))["NodeNames"] == ["n1", "n2"]
    assert (await harness.bind(first, "n2"))["Error"] == ""
    second = harness.kube.add(team_pod("second", mem=1600, gpus=2))
    answer = await harness.filter(second, ["n1", "n2", "dead"])
    assert answer["NodeNames"] == []
    expected = f"ResourceQuotaNotFit: ResourceQuota team/gpu {MEM_QUOTA}: used 5000 + asked 3200 > limit 8000"
    assert set(answer["FailedNodes"]) == {"n1", "n2", "dead"}
    assert all(m.startswith(expected) for m in answer["FailedNodes"].values())
    assert expected in harness.kube.events[-1]["message"]
    assert harness.kube.events[-1]["reason"] == "FilteringFailed"
    # Another namespace is not limited by it.
    other = harness.kube.add(pod_json("other", containers=[container(gpu=2, mem=9000)]))
    assert (await harness.filter(other, ["n1"]))["NodeNames"] == ["n1"]
    text = await (await harness.client.get("/metrics")).text()
    assert 'hami_extender_filter_node_failures_total{reason="ResourceQuotaNotFit"} 3.0' in text
    assert 'hami_resource_quota_used{limit="8000",namespace="team",quota_name="nvidia.com/gpumem"} 5000.0' in text
    assert 'hami_resource_quota_used{limit="0",namespace="team",quota_name="nvidia.com/gpucores"} 0.0' in text
    assert 'hami_resource_quota_limit{namespace="team",quota_name="nvidia.com/gpumem"} 8000.0' in text
    assert "QuotaUsed" not in text  # HAMi's legacy name only with legacy metrics
    # Freed quota is usable at once: the watch ends the hold of a deleted pod.
    harness.state.delete_pod(first["metadata"]["uid"])
    assert (await harness.filter(second, ["n1", "n2"]))["NodeNames"] == ["n1"]  # n2 has one card


async def test_bind_rechecks_so_a_burst_cannot_overshoot(harness: Harness) -> None:
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=8000))
    pods = [harness.kube.add(team_pod(f"p{i}", mem=5000)) for i in range(2)]
    for pod in pods:  # both filtered before either binds: each alone fits
        assert (await harness.filter(pod, ["n2"]))["NodeNames"] == ["n2"]
    assert (await harness.bind(pods[0], "n2"))["Error"] == ""
    refused = (await harness.bind(pods[1], "n2"))["Error"]
    assert "ResourceQuotaNotFit: ResourceQuota team/gpu" in refused
    assert "used 5000 + asked 5000 > limit 8000" in refused
    assert harness.state.allocation(pods[1]["metadata"]["uid"]) is None  # its reservation was released
    assert harness.state.quotas.used("team") == Demand(mem=5000)
    assert harness.kube.events[-1]["reason"] == "BindingFailed"
    assert not harness.kube.pods[("team", "p1")]["spec"].get("nodeName")


async def test_percentage_counts_the_card_each_node_would_give(harness: Harness) -> None:
    harness.state.upsert_node(objects.node_inventory(node_json("big", [gpu("GPU-big", devmem=81920)])))
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=10000))
    pod = harness.kube.add(team_pod("half", pct=50))
    answer = await harness.filter(pod, ["n1", "big"])
    assert answer["NodeNames"] == ["n1"]  # 8000 MiB of a 16000 MiB card fits; 40960 of an 80 GiB card does not
    assert answer["FailedNodes"]["big"].startswith(
        f"ResourceQuotaNotFit: ResourceQuota team/gpu {MEM_QUOTA}: used 0 + asked 40960 > limit 10000"
    )
    assert (await harness.bind(pod, "big"))["Error"].count("asked 40960 > limit 10000") == 1
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    assert harness.state.quotas.used("team") == Demand(mem=8000)


async def test_a_node_with_mixed_cards_is_decided_by_the_card_the_fit_picks(harness: Harness) -> None:
    mixed = node_json("mixed", [gpu("GPU-m0", devmem=16000), gpu("GPU-m1", devmem=81920, index=1)])
    harness.state.upsert_node(objects.node_inventory(mixed))
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=10000))
    # Spread (the default GPU policy) picks the emptier card by ratio: both idle, the first by index, 16000 MiB.
    pod = harness.kube.add(team_pod("half", pct=50))
    assert (await harness.filter(pod, ["mixed"]))["NodeNames"] == ["mixed"]
    # Bounded below by the smallest card: 90 % of 16000 already exceeds the quota, no fit needed to say so.
    large = harness.kube.add(team_pod("large", pct=90))
    message = (await harness.filter(large, ["mixed"]))["FailedNodes"]["mixed"]
    assert message.startswith(f"ResourceQuotaNotFit: ResourceQuota team/gpu {MEM_QUOTA}: used 0 + asked 14400 > limit")
    # Between the bounds, the grants decide: with the small card taken up, the fit picks the 80 GiB one.
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=20000))
    first = harness.kube.add(team_pod("first", pct=50))
    assert (await harness.bind(first, "mixed"))["Error"] == ""
    second = harness.kube.add(team_pod("second", pct=50))
    held = harness.state.allocation(first["metadata"]["uid"])
    assert held is not None
    assert held.grants[0][0].uuid == "GPU-m0"  # a tie of ratios: the first card by index
    # The smallest card would keep it under (8000 + 8000), the largest not; spread now picks the 80 GiB card.
    answer = await harness.filter(second, ["mixed"])
    assert answer["FailedNodes"]["mixed"].startswith(
        f"ResourceQuotaNotFit: ResourceQuota team/gpu {MEM_QUOTA}: used 8000 + asked 40960 > limit 20000"
    )


async def test_a_cores_only_quota_needs_no_per_node_fit(harness: Harness) -> None:
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", cores=50))
    pod = harness.kube.add(pod_json("c", namespace="team", containers=[container(gpu=2, pct=10, cores=30)]))
    answer = await harness.filter(pod, ["n1"])
    assert answer["FailedNodes"]["n1"].startswith(
        "ResourceQuotaNotFit: ResourceQuota team/gpu limits.nvidia.com/gpucores: used 0 + asked 60 > limit 50"
    )


# --- property: no overshoot ---------------------------------------------------------------------------
shapes = st.lists(
    st.tuples(
        st.integers(1, 2),  # cards
        st.one_of(st.integers(1, 9000).map(lambda m: ("mem", m)), st.integers(1, 60).map(lambda p: ("pct", p))),
        st.sampled_from([None, 10, 40]),  # cores
        st.sampled_from(["n1", "n2", "big", "mixed"]),  # where kube-scheduler binds it
        st.booleans(),  # deleted afterwards
    ),
    min_size=1,
    max_size=12,
)


def _extender() -> tuple[Extender, FakeKube]:
    state = state_with(
        node_json("n1", [gpu("GPU-a0", count=2), gpu("GPU-a1", count=2)]),
        node_json("n2", [gpu("GPU-b0", count=10)]),
        node_json("big", [gpu("GPU-big", devmem=81920)]),
        node_json("mixed", [gpu("GPU-m0", devmem=16000), gpu("GPU-m1", devmem=81920, index=1)]),
    )
    kube = FakeKube()
    config = ExtenderConfig(
        names=ResourceNames(), defaults=RequestDefaults(), node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD
    )
    metrics = ExtenderMetrics(CollectorRegistry(), version="test")
    return Extender(state=state, kube=kube, config=config, metrics=metrics, ready=lambda: None), kube


@settings(max_examples=80, deadline=None)
@given(shapes=shapes, mem_limit=st.integers(0, 30000), cores_limit=st.sampled_from([None, 0, 60, 150]))
def test_a_namespace_never_holds_more_than_its_quota(
    shapes: list[Any], mem_limit: int, cores_limit: int | None
) -> None:
    extender, kube = _extender()
    state = extender.state
    state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=mem_limit, cores=cores_limit))
    pods = []
    for i, (cards, (kind, amount), cores, _, _) in enumerate(shapes):
        resources: dict[str, int | str] = {"gpu": cards, kind: amount}
        if cores is not None:
            resources["cores"] = cores
        pods.append(kube.add(pod_json(f"p{i}", namespace="team", containers=[container("c", **resources)])))
    # Every pod filtered first (a burst), then bound where kube-scheduler would send it, some deleted afterwards.
    verdicts = [extender.filter({"Pod": pod, "NodeNames": ["n1", "n2", "big", "mixed"]}) for pod in pods]
    for pod, verdict, (_, _, _, node, delete) in zip(pods, verdicts, shapes, strict=True):
        for message in verdict["FailedNodes"].values():
            if message.startswith("ResourceQuotaNotFit"):
                numbers = re.search(r"used (\d+) \+ asked (\d+) > limit (\d+)", message)
                assert numbers is not None
                used, asked, limit = map(int, numbers.groups())
                assert used + asked > limit
        meta = pod["metadata"]
        args = {"PodName": meta["name"], "PodNamespace": "team", "PodUID": meta["uid"], "Node": node}
        result = asyncio.run(extender.bind(args))
        held = state.quotas.used("team")
        assert held.mem <= mem_limit
        assert cores_limit is None or held.cores <= cores_limit
        if result["Error"] == "" and delete:
            state.delete_pod(meta["uid"])
    holds = [a for a in state.allocations() if a.namespace == "team"]
    assert state.quotas.used("team") == Demand(
        sum(g.usedmem for a in holds for c in a.grants for g in c),
        sum(g.usedcores for a in holds for c in a.grants for g in c),
    )


async def test_a_mutex_pod_counts_its_whole_card_against_the_quota(harness: Harness) -> None:
    """A tenant asking 1 MiB with `mutex` takes a card to itself; it is charged the card, so a tight quota holds."""
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=8000))
    pod = team_pod("alone", mem=1)
    pod["metadata"]["annotations"] = {"hami.io/gpu-scheduler-policy": "mutex"}
    pod = harness.kube.add(pod)
    # Filter already counts the whole card (no filter-admits, bind-refuses loop every scheduling cycle) ...
    answer = await harness.filter(pod, ["n1"])
    assert answer["NodeNames"] == []
    assert "asked 16000 > limit 8000" in answer["FailedNodes"]["n1"]
    # ... and bind re-checks the same.
    refused = (await harness.bind(pod, "n1"))["Error"]
    assert "ResourceQuotaNotFit: ResourceQuota team/gpu" in refused
    assert "asked 16000 > limit 8000" in refused
    assert harness.state.quotas.used("team") == Demand()
    # Within a quota that holds the card, the same pod fits and is charged the card.
    harness.state.quotas.upsert(QuotaSpec(namespace="team", name="gpu", mem=16000))
    assert (await harness.filter(pod, ["n1"]))["NodeNames"] == ["n1"]
    assert (await harness.bind(pod, "n1"))["Error"] == ""
    assert harness.state.quotas.used("team").mem == 16000
