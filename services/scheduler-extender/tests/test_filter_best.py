"""filter-best-nodes: filter answers only the N fitting nodes prioritize would score highest (HAMi's filter with 1),
the same nodes prioritize ranks first over the full answer; 0 keeps every fitting node."""

from __future__ import annotations

import random
from typing import Any

import pytest
from extender_builders import container, gpu, node_json, pod_json, state_with
from hami_scheduler_extender.app import cli
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.settings import PROGRAM
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared import names
from hami_shared.config import ConfigError
from hami_shared.names import ResourceNames
from http_harness import FakeKube
from prometheus_client import CollectorRegistry


def extender_with(nodes: list[dict[str, Any]], best: int) -> Extender:
    return Extender(
        state=state_with(*nodes),
        kube=FakeKube(),
        config=ExtenderConfig(
            names=ResourceNames(),
            defaults=RequestDefaults(),
            node_policy=Policy.BINPACK,
            gpu_policy=Policy.SPREAD,
            filter_best_nodes=best,
        ),
        metrics=ExtenderMetrics(CollectorRegistry(), version="test"),
        ready=lambda: None,
    )


async def place(extender: Extender, name: str, node: str, mem: int) -> None:
    """Bind a pod of ``mem`` MiB on ``node`` through the verbs (the usage the scores see)."""
    pod = pod_json(name, containers=[container(gpu=1, mem=mem)])
    kube = extender._kube
    assert isinstance(kube, FakeKube)
    kube.add(pod)
    extender.filter({"Pod": pod, "NodeNames": [node], "Nodes": None})
    meta = pod["metadata"]
    answer = await extender.bind(
        {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
    )
    assert answer["Error"] == ""


def ranked(extender: Extender, pod: dict[str, Any], nodes: list[str]) -> list[str]:
    """The reference: prioritize's scores over ``nodes``, best first, ties in candidate order."""
    scores = extender.prioritize({"Pod": pod, "NodeNames": nodes, "Nodes": None})
    order = sorted(range(len(nodes)), key=lambda i: -scores[i]["Score"])
    return [nodes[i] for i in order]


def filter_names(extender: Extender, pod: dict[str, Any], nodes: list[str]) -> tuple[list[str], dict[str, str]]:
    answer = extender.filter({"Pod": pod, "NodeNames": nodes, "Nodes": None})
    assert answer["Error"] == ""
    return answer["NodeNames"], answer["FailedNodes"]


@pytest.mark.parametrize("policy", ["binpack", "spread"])
@pytest.mark.parametrize("best", [1, 2, 3])
async def test_filter_answers_the_nodes_prioritize_ranks_first(policy: str, best: int) -> None:
    rng = random.Random(f"{policy}-{best}")
    nodes = [f"n{i}" for i in range(8)]
    everything = extender_with([node_json(n, [gpu(f"GPU-{n}", devmem=16000, count=10)]) for n in nodes], 0)
    trimmed = extender_with([node_json(n, [gpu(f"GPU-{n}", devmem=16000, count=10)]) for n in nodes], best)
    for number, node in enumerate(rng.choices(nodes[:-1], k=12)):  # n7 stays empty; n0..n6 get random usage
        mem = rng.choice([1000, 3000, 5000])
        await place(everything, f"busy-{number}", node, mem)
        await place(trimmed, f"busy-{number}", node, mem)
    pod = pod_json("p", containers=[container(gpu=1, mem=2000)], annotations={names.NODE_SCHEDULER_POLICY: policy})
    candidates = rng.sample(nodes, len(nodes))
    fits, failed_all = filter_names(everything, pod, candidates)
    answered, failed = filter_names(trimmed, pod, candidates)
    assert answered == ranked(everything, pod, fits)[:best]
    assert failed == failed_all  # the fitting nodes left out are not failures


async def test_zero_keeps_every_fitting_node_and_nodes_that_do_not_fit_stay_failed() -> None:
    nodes = [node_json("small", [gpu("GPU-s", devmem=1000)]), node_json("a"), node_json("b"), node_json("c")]
    pod = pod_json("p", containers=[container(gpu=1, mem=4000)])
    every, _ = filter_names(extender_with(nodes, 0), pod, ["small", "a", "b", "c"])
    assert every == ["a", "b", "c"]
    best, failed = filter_names(extender_with(nodes, 1), pod, ["small", "a", "b", "c"])
    assert best == ["a"]  # equal scores: the first candidate, as kube-scheduler sent them
    assert set(failed) == {"small"}


async def test_a_binpack_pod_gets_the_busier_node_and_a_spread_pod_the_emptier_one() -> None:
    extender = extender_with([node_json("n1"), node_json("n2")], 1)
    await place(extender, "busy", "n2", 14000)
    binpack = pod_json("b", containers=[container(gpu=1, mem=1000)])
    assert filter_names(extender, binpack, ["n1", "n2"])[0] == ["n2"]
    spread = pod_json("s", containers=[container(gpu=1, mem=1000)], annotations={names.NODE_SCHEDULER_POLICY: "spread"})
    assert filter_names(extender, spread, ["n1", "n2"])[0] == ["n1"]


async def test_pods_without_gpus_keep_every_candidate() -> None:
    extender = extender_with([node_json("n1"), node_json("n2")], 1)
    assert filter_names(extender, pod_json("cpu", containers=[container()]), ["n1", "n2", "x"])[0] == ["n1", "n2", "x"]


async def test_node_objects_are_trimmed_too() -> None:
    extender = extender_with([node_json("n1"), node_json("n2")], 1)
    await place(extender, "busy", "n2", 8000)
    pod = pod_json("p", containers=[container(gpu=1, mem=1000)])
    answer = extender.filter({"Pod": pod, "Nodes": {"items": [node_json("n1"), node_json("n2")]}})
    assert [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["n2"]


def test_the_setting_reaches_the_extender_and_refuses_negative_counts() -> None:
    assert cli.extender_config(PROGRAM.load_settings([], {})).filter_best_nodes == 1  # HAMi's: the best node
    settings = PROGRAM.load_settings([], {"HAMI_EXTENDER_FILTER_BEST_NODES": "0"})
    assert cli.extender_config(settings).filter_best_nodes == 0
    with pytest.raises(ConfigError, match="filter-best-nodes must be 0"):
        PROGRAM.load_settings(["--filter-best-nodes", "-1"], {})
