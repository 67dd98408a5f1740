"""A burst of 80 pods of 1000 MiB on one simulated node with 8 GPUs of split count 10 (exactly 80 slots): every pod
is bound through kube-scheduler and the extender with no card over-committed, every slot ID used once and no pod ever
published bound without its placement annotations (they come with the Binding); an 81st pod is refused with HAMi's
reason. Then the same burst with the extender killed (SIGKILL) and restarted mid-way: no reservation is lost (the new
process rebuilds usage from the pods' annotations) and nothing is over-committed.

Here the Node is a simulated one (register annotation + allocatable, no kubelet), so the extender is tested on its
own; test_real_node_burst.py runs a burst through the real kubelet and device plugin.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for
from extender_support import (
    ExtenderProcess,
    PodWatch,
    check_no_overcommit,
    create_gpu_node,
    gpu_pod,
    gpus,
    list_pods,
    scheduling_through,
)
from hami_shared import names
from kubernetes_asyncio import client as k8s

BURST = 80


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    async with scheduling_through(local_cluster, tmp_path / "extender.log") as process:
        yield process


@pytest.fixture
async def gpu_node(k8s_api: k8s.ApiClient) -> AsyncIterator[tuple[str, dict[str, list]]]:  # type: ignore[type-arg]
    name = f"burst-{uuid.uuid4().hex[:6]}"
    inventory = {name: gpus(name, 8, split=10, devmem=16000)}
    await create_gpu_node(k8s_api, name, inventory[name])
    try:
        yield name, inventory
    finally:
        await k8s.CoreV1Api(k8s_api).delete_node(name)


async def create_burst(core: k8s.CoreV1Api, namespace: str, node: str, indices: range = range(BURST)) -> None:
    limit = asyncio.Semaphore(16)

    async def create(i: int) -> None:
        async with limit:
            await core.create_namespaced_pod(namespace, gpu_pod(f"burst-{i:02d}", node, mem=1000))

    await asyncio.gather(*(create(i) for i in indices))


async def bound_count(api: k8s.ApiClient, namespace: str) -> int:
    return sum(1 for p in await list_pods(api, namespace) if p["spec"].get("nodeName"))


async def test_burst_of_80_pods_on_one_node(
    extender: ExtenderProcess,
    gpu_node: tuple[str, dict[str, list]],
    k8s_api: k8s.ApiClient,
    namespace: str,  # type: ignore[type-arg]
) -> None:
    node, inventory = gpu_node
    core = k8s.CoreV1Api(k8s_api)
    # Every state of every pod the API server publishes: none may show it bound without its placement (the device
    # plugin reads the annotations when the pod reaches the node).
    bound_bare: list[str] = []

    def seen(pod: Mapping[str, Any], _: float) -> None:
        if pod["spec"].get("nodeName") and names.DEVICES_ALLOCATED not in (pod["metadata"].get("annotations") or {}):
            bound_bare.append(pod["metadata"]["name"])

    watch = PodWatch(core, namespace, seen)
    await watch.start()
    started = time.monotonic()
    try:
        await create_burst(core, namespace, node)

        async def all_bound() -> bool:
            return await bound_count(k8s_api, namespace) == BURST

        await wait_for(all_bound, what=f"{BURST} pods bound", within=300, interval=0.5)
        elapsed = time.monotonic() - started
    finally:
        await watch.stop()
    print(f"\n{BURST} pods created and bound in {elapsed:.1f} s")
    assert bound_bare == [], "pods seen bound without their placement annotations"
    pods = await list_pods(k8s_api, namespace)
    assert check_no_overcommit(pods, inventory) == {node: BURST}

    await core.create_namespaced_pod(namespace, gpu_pod("one-too-many", node, mem=1000))

    async def refused() -> str | None:
        events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=one-too-many")
        return next(
            (
                e.message
                for e in events.items
                if e.reason == "FailedScheduling" and "CardTimeSlicingExhausted" in (e.message or "")
            ),
            None,
        )

    message = await wait_for(refused, what="the 81st pod refused", within=120)
    assert "8/8 CardTimeSlicingExhausted" in message
    assert await bound_count(k8s_api, namespace) == BURST


async def test_extender_restart_mid_burst_loses_no_reservation(
    extender: ExtenderProcess,
    gpu_node: tuple[str, dict[str, list]],
    k8s_api: k8s.ApiClient,
    namespace: str,  # type: ignore[type-arg]
) -> None:
    node, inventory = gpu_node
    core = k8s.CoreV1Api(k8s_api)
    # Half the burst first; the extender is killed once 20 are bound (the rest of that half still binding), and the
    # other half is created while it is down: however fast the binds, the restart lands mid-burst.
    half = BURST // 2
    await create_burst(core, namespace, node, range(half))

    async def some_bound() -> bool:
        return await bound_count(k8s_api, namespace) >= 20

    await wait_for(some_bound, what="20 pods bound before the restart", within=300, interval=0.2)
    await extender.kill()
    await create_burst(core, namespace, node, range(half, BURST))
    before = {
        p["metadata"]["name"]: p["metadata"]["annotations"][names.DEVICES_ALLOCATED]
        for p in await list_pods(k8s_api, namespace)
        if p["spec"].get("nodeName")
    }
    assert len(before) < BURST, "the burst finished before the restart; nothing was tested"
    await extender.start()

    async def all_bound() -> bool:
        return await bound_count(k8s_api, namespace) == BURST

    await wait_for(all_bound, what=f"{BURST} pods bound after the restart", within=300, interval=0.5)
    pods = await list_pods(k8s_api, namespace)
    assert check_no_overcommit(pods, inventory) == {node: BURST}
    after = {p["metadata"]["name"]: p["metadata"]["annotations"][names.DEVICES_ALLOCATED] for p in pods}
    assert all(after[name] == value for name, value in before.items()), "a placement changed across the restart"
    metrics = await extender.metrics()
    shared = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("hami_gpu_shared_count{") and f'node="{node}"' in line
    )
    assert shared == BURST
