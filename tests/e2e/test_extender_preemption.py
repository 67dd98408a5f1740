"""GPU-aware preemption through the real kube-scheduler (issue 21): a high-priority GPU pod that needs the memory
of exactly two low-priority pods on one card gets exactly those two preempted (not the three on the other card,
not more), by kube-scheduler's own DefaultPreemption calling the extender's ``preempt`` verb, and then binds.

kube-scheduler v1.34's preemption dry run runs its in-tree filters only: a node becomes a candidate only when one
of them fails too (kubernetes#139270; releases with kubernetes#135486 pass candidates without victims instead).
So the node's CPUs are full as well: kube-scheduler's own victim is whichever low pod it reprieves last, one CPU's
worth, which frees too little GPU memory; the extender answers with the two pods on one card, which free the
card and a CPU each. The second test pins that limit down: with CPUs to spare, v1.34 fails the preemption
("expected at least one victim pod") without calling the extender, and deletes nothing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import read_pod, wait_for, wait_for_pod
from extender_support import (
    ExtenderProcess,
    check_no_overcommit,
    create_gpu_node,
    gpu_pod,
    gpus,
    list_pods,
    scheduling_through,
)
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from kubernetes_asyncio import client as k8s

LOW_PODS = {  # name: (card, MiB); each card 16,000 MiB, both full
    "low-a1": (0, 8000),
    "low-a2": (0, 8000),
    "low-b1": (1, 8000),
    "low-b2": (1, 4000),
    "low-b3": (1, 4000),
}


def sample_values(text: str) -> dict[str, float]:
    """Prometheus text: sample name with labels -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    async with scheduling_through(local_cluster, tmp_path / "extender.log") as process:
        yield process


def pod_with(name: str, node: str, *, mem: int, priority_class: str, card: str | None = None) -> dict[str, Any]:
    pod = gpu_pod(name, node, mem=mem, annotations={names.USE_GPUUUID: card} if card else None)
    pod["spec"]["priorityClassName"] = priority_class
    # No kubelet on a simulated node: a preempted pod must go at once rather than wait for one.
    pod["spec"]["terminationGracePeriodSeconds"] = 0
    pod["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "1"}
    return pod


@contextlib.asynccontextmanager
async def full_node(k8s_api: k8s.ApiClient, namespace: str, *, cpus: int) -> AsyncIterator[tuple[str, str, Any]]:
    """A node with two full cards (LOW_PODS, priority 10) and ``cpus`` allocatable CPUs; yields the node's name, the
    high PriorityClass (1000) and the devices."""
    core = k8s.CoreV1Api(k8s_api)
    scheduling = k8s.SchedulingV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:6]
    node = f"preempt-{suffix}"
    low, high = f"e2e-low-{suffix}", f"e2e-high-{suffix}"
    devices = gpus(node, 2, split=4, devmem=16000)
    for name, value in ((low, 10), (high, 1000)):
        await scheduling.create_priority_class(
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value}
        )
    await create_gpu_node(k8s_api, node, devices)
    resources = {"cpu": str(cpus), "memory": "256Gi", "pods": "250", "nvidia.com/gpu": "8"}
    await core.patch_node_status(node, {"status": {"capacity": resources, "allocatable": resources}})
    try:
        for name, (card, mem) in LOW_PODS.items():  # one at a time, each on the card it names
            await core.create_namespaced_pod(
                namespace, pod_with(name, node, mem=mem, priority_class=low, card=devices[card].id)
            )
            await wait_for_pod(k8s_api, namespace, name, lambda p: bool(p["spec"].get("nodeName")), what="bound")
        yield node, high, devices
    finally:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        await core.delete_node(node)
        for name in (low, high):
            await scheduling.delete_priority_class(name)


async def test_high_priority_pod_preempts_exactly_the_pods_holding_its_card(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    # One CPU per low pod: the node's CPUs are full once they run (see the module docstring).
    async with full_node(k8s_api, namespace, cpus=len(LOW_PODS)) as (node, high, devices):
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await list_pods(k8s_api, namespace)}

        await core.create_namespaced_pod(namespace, pod_with("urgent", node, mem=16000, priority_class=high))
        bound = await wait_for_pod(
            k8s_api,
            namespace,
            "urgent",
            lambda p: bool(p["spec"].get("nodeName")),
            what="bound after preemption",
            within=180,
        )
        assert bound["spec"]["nodeName"] == node
        assert bound["spec"]["priority"] == 1000
        granted = decode_pod_devices(bound["metadata"]["annotations"][names.DEVICES_ALLOCATED])
        assert [(d.uuid, d.usedmem) for d in granted[0]] == [(devices[0].id, 16000)]

        pods = {p["metadata"]["name"]: p for p in await list_pods(k8s_api, namespace)}
        assert set(pods) == {"urgent", "low-b1", "low-b2", "low-b3"}, "exactly the two pods on card 0 preempted"
        for name in ("low-b1", "low-b2", "low-b3"):  # the survivors are the same pods, still on card 1
            assert pods[name]["metadata"]["uid"] == uids[name]
            assert pods[name]["spec"]["nodeName"] == node
            assert not pods[name]["metadata"].get("deletionTimestamp")
        for name in ("low-a1", "low-a2"):
            assert await read_pod(k8s_api, namespace, name) is None
        check_no_overcommit(list(pods.values()), {node: devices})

        async def preempted_events() -> set[str] | None:
            events = await core.list_namespaced_event(namespace)
            found = {e.involved_object.name for e in events.items if e.reason == "Preempted"}
            return found if {"low-a1", "low-a2"} <= found else None

        assert await wait_for(preempted_events, what="kube-scheduler's Preempted events", within=60) == {
            "low-a1",
            "low-a2",
        }
        metrics = sample_values(await extender.metrics())
        assert metrics['hami_extender_request_duration_seconds_count{verb="preempt"}'] >= 1
        assert metrics["hami_extender_preemption_victims_total"] >= 2
        # kube-scheduler's own victim (one CPU's worth) freed too little GPU memory: the extender widened it
        assert metrics['hami_extender_decisions_total{result="widened",verb="preempt"}'] >= 1


async def test_kube_scheduler_v1_34_does_not_preempt_for_a_gpu_only_shortage(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    """The limit this release of kube-scheduler sets (kubernetes#139270): with CPUs to spare, its dry run finds no
    in-tree victim and fails the preemption before asking the extender. Nothing is deleted; the pod waits."""
    core = k8s.CoreV1Api(k8s_api)
    async with full_node(k8s_api, namespace, cpus=64) as (node, high, _):
        await core.create_namespaced_pod(namespace, pod_with("urgent", node, mem=16000, priority_class=high))

        async def preemption_failed() -> str | None:
            events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=urgent")
            messages = [e.message or "" for e in events.items if e.reason == "FailedScheduling"]
            return next((m for m in messages if "victim" in m), None)

        message = await wait_for(preemption_failed, what="FailedScheduling after the preemption attempt", within=120)
        assert "expected at least one victim pod" in message
        pods = {p["metadata"]["name"]: p for p in await list_pods(k8s_api, namespace)}
        assert set(pods) == {"urgent", *LOW_PODS}
        assert not pods["urgent"]["spec"].get("nodeName")
        assert not any(p["metadata"].get("deletionTimestamp") for p in pods.values())
        metrics = sample_values(await extender.metrics())
        assert metrics.get('hami_extender_request_duration_seconds_count{verb="preempt"}', 0) == 0
