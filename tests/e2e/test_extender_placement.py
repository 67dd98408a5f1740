"""hami-scheduler-extender behind the real kube-scheduler on the local control plane: GPU pods are placed on the
simulated GPU Nodes that can hold them (type filters, memory, card count), the placement is recorded in HAMi's
annotations by the Binding itself (HAMi's hami.io/vgpu-node label follows once the device plugin reports the
allocation), nodes whose device plugin stopped reporting get nothing, pods that fit nowhere stay Pending with HAMi's
reasons, and the extender's metrics show what is allocated."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for, wait_for_pod
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


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    # Success Events are on by default, as in HAMi.
    async with scheduling_through(local_cluster, tmp_path / "extender.log", []) as process:
        yield process


async def test_pods_land_on_nodes_that_fit(extender: ExtenderProcess, k8s_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:6]
    inventory = {
        f"a100-{suffix}": gpus(f"a100-{suffix}", 2, split=4, devmem=81920, type="NVIDIA A100-SXM4-80GB"),
        f"t4-{suffix}": gpus(f"t4-{suffix}", 6),
        f"dead-{suffix}": gpus(f"dead-{suffix}", 8),
    }
    a100, t4, dead = inventory
    await create_gpu_node(k8s_api, a100, inventory[a100])
    await create_gpu_node(k8s_api, t4, inventory[t4])
    await create_gpu_node(k8s_api, dead, inventory[dead], allocatable_gpus=0)  # device plugin gone
    nodes = list(inventory)
    try:
        wanted = {
            "by-type": (gpu_pod("by-type", nodes, annotations={names.USE_GPUTYPE: "a100"}), {a100}),
            "big-memory": (gpu_pod("big-memory", nodes, mem=30000, cores=20), {a100}),
            "four-cards": (gpu_pod("four-cards", nodes, gpus=4, mem=2000), {t4}),
            "percent": (gpu_pod("percent", nodes, mem=None, annotations={names.NOUSE_GPUTYPE: "A100"}), {t4}),
        }
        for pod, _ in wanted.values():
            await core.create_namespaced_pod(namespace, pod)
        await core.create_namespaced_pod(namespace, gpu_pod("too-many-cards", nodes, gpus=7))
        for name, (_, allowed) in wanted.items():
            pod = await wait_for_pod(
                k8s_api, namespace, name, lambda p: bool(p["spec"].get("nodeName")), what="bound", within=120
            )
            assert pod["spec"]["nodeName"] in allowed, name
            annotations = pod["metadata"]["annotations"]
            assert annotations[names.BIND_PHASE] == "allocating"
            assert annotations[names.DEVICES_TO_ALLOCATE] == annotations[names.DEVICES_ALLOCATED]
            assert annotations[names.VGPU_TIME].isdigit()
        # No device plugin here: play its part (bind-phase=success), after which the extender adds HAMi's label.
        await core.patch_namespaced_pod(
            "by-type", namespace, {"metadata": {"annotations": {names.BIND_PHASE: "success"}}}
        )
        labelled = await wait_for_pod(
            k8s_api,
            namespace,
            "by-type",
            lambda p: names.VGPU_NODE in (p["metadata"].get("labels") or {}),
            what="labelled hami.io/vgpu-node",
            within=60,
        )
        assert labelled["metadata"]["labels"][names.VGPU_NODE] == labelled["spec"]["nodeName"] == a100
        four = (await wait_for_pod(k8s_api, namespace, "four-cards", lambda p: True, what="read"))["metadata"]
        devices = decode_pod_devices(four["annotations"][names.DEVICES_ALLOCATED])
        assert len({d.uuid for d in devices[0]}) == 4
        assert all(d.usedmem == 2000 for d in devices[0])
        whole = (await wait_for_pod(k8s_api, namespace, "percent", lambda p: True, what="read"))["metadata"]
        assert decode_pod_devices(whole["annotations"][names.DEVICES_ALLOCATED])[0][0].usedmem == 16000

        async def refused() -> str | None:
            events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-many-cards")
            messages = [e.message or "" for e in events.items if e.reason == "FailedScheduling"]
            return next((m for m in messages if "NodeInsufficientDevice" in m), None)

        message = await wait_for(refused, what="FailedScheduling with HAMi reasons", within=120)
        assert "node unregistered" in message
        pods = await list_pods(k8s_api, namespace)
        assert not next(p for p in pods if p["metadata"]["name"] == "too-many-cards")["spec"].get("nodeName")
        per_node = check_no_overcommit(pods, inventory)
        assert dead not in per_node

        async def extender_events(pod: str, reason: str) -> list[str] | None:
            events = await core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}")
            found = [
                e.message or ""
                for e in events.items
                if e.reason == reason and e.source is not None and e.source.component == "hami-scheduler"
            ]
            return found or None

        # HAMi's four Events, as HAMi words them, written by the extender to the real API server.
        (bound,) = await wait_for(
            lambda: extender_events("by-type", "BindingSucceed"), what="BindingSucceed event", within=60
        )
        assert bound.startswith(f"Successfully binding node [{a100}] to {namespace}/by-type")
        (filtered,) = await wait_for(
            lambda: extender_events("by-type", "FilteringSucceed"), what="FilteringSucceed event", within=60
        )
        # use-gputype=a100: only the A100 node fits (the T4 node does not; the dead one is unregistered).
        assert re.fullmatch(rf"find fit node\({a100}\), \d+ nodes not fit, 1 nodes fit\({a100}:\d+\.\d\d\)", filtered)
        failed = await wait_for(
            lambda: extender_events("too-many-cards", "FilteringFailed"), what="FilteringFailed event", within=60
        )
        # Retried by kube-scheduler, but one Event per pod and reason per minute (the extender's event gate).
        assert len(failed) == 1
        assert re.match(r"no available node, \d+ nodes do not meet: \d+ nodes NodeInsufficientDevice, ", failed[0])
        assert failed[0].endswith("; ask for fewer nvidia.com/gpu than the nodes have cards")
        metrics = await extender.metrics()
        shared = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("hami_gpu_shared_count{") and f'node="{a100}"' in line
        ]
        assert sum(shared) == 2
        assert 'hami_extender_decisions_total{result="bound",verb="bind"} 4.0' in metrics
    finally:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        for node in nodes:
            await core.delete_node(node)
