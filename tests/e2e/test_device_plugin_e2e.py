"""End to end with the scheduler extender: pods of different sizes are scheduled by kube-scheduler through the
real hami-scheduler-extender, admitted by the kubelet stand-in (test double) through the real hami-device-plugin
(over hamicore's fake NVML, test double), and every container receives exactly the GPU, memory limit and cores
the extender chose for it -- one pod at a time and in a burst of 80 pods on one node (8 GPUs x split count 10),
with kubelet steered to the extender's slot IDs and no mix-up between pods of different sizes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.kubelet_standin import AddGpuNode
from e2e_harness.waiting import wait_for
from extender_support import ExtenderProcess, free_port, gpu_pod, list_pods, scheduler_config
from hami_shared import names
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices
from hami_shared.quantity import parse_quantity
from kubernetes_asyncio import client as k8s
from test_device_plugin_allocate import PluginNode, start_plugin_node, stop_plugin

BURST = 80


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    process = ExtenderProcess(local_cluster, free_port(), tmp_path / "extender.log")
    await process.start()
    await asyncio.to_thread(local_cluster.restart_scheduler, scheduler_config(process.url))
    try:
        yield process
    finally:
        await asyncio.to_thread(local_cluster.restart_scheduler, None)
        await process.stop()


@pytest.fixture
async def gpu_node(
    local_cluster: LocalCluster, add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, tmp_path: Path
) -> AsyncIterator[tuple[PluginNode, str]]:
    label = f"dp-e2e-{uuid.uuid4().hex[:6]}"
    handle = await start_plugin_node(
        local_cluster,
        add_gpu_node,
        k8s_api,
        tmp_path / "plugin",
        gpus=8,
        split=10,
        memory_mib=32768,
        labels={"e2e.hami.io/node": label},
    )
    try:
        yield handle, label
    finally:
        stop_plugin(handle)


def check_pod_got_what_the_extender_chose(node: PluginNode, pod: dict[str, Any]) -> None:
    """Allocate's env equals the pod's devices-allocated record; kubelet holds exactly the extender's slots."""
    meta = pod["metadata"]
    annotations = meta["annotations"]
    assert pod["spec"]["nodeName"] == node.node
    assert annotations[names.BIND_PHASE] == "success", meta["name"]
    (devices,) = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])
    (slots,) = decode_device_slots(annotations[names.DEVICE_SLOTS])
    (allocation,) = node.kubelet.allocations_of(meta["namespace"], meta["name"])
    envs = allocation.envs
    assert envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(d.uuid for d in devices), meta["name"]
    for i, device in enumerate(devices):
        assert envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] == f"{device.usedmem}m", meta["name"]
        assert envs[f"CUDA_DEVICE_SM_LIMIT_{i}"] == str(device.usedcores), meta["name"]
    assert set(allocation.device_ids) == set(slots), f"{meta['name']}: kubelet was not steered to the slots"
    assert envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == f"/usr/local/vgpu/{meta['uid']}_main.cache"


def requested_mem(pod: dict[str, Any]) -> int:
    value = pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"]  # "1k" for 1000
    return parse_quantity(value, resource="nvidia.com/gpumem", container="main")


async def wait_all_allocated(api: k8s.ApiClient, namespace: str, count: int, within: float) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        pods = await list_pods(api, namespace)
        ready = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and (p["metadata"].get("annotations") or {}).get(names.BIND_PHASE) == "success"
        ]
        failed = [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
        assert not failed, f"pods failed admission: {failed}"
        return pods if len(ready) == count else None

    try:
        result: list[dict[str, Any]] = await wait_for(
            done, what=f"{count} pods Running and allocated", within=within, interval=1
        )
    except TimeoutError as exc:
        pods = await list_pods(api, namespace)
        bound = sum(1 for p in pods if p["spec"].get("nodeName"))
        phases: dict[str, int] = {}
        for p in pods:
            bind_phase = (p["metadata"].get("annotations") or {}).get(names.BIND_PHASE)
            key = f"{(p.get('status') or {}).get('phase')}/{bind_phase}"
            phases[key] = phases.get(key, 0) + 1
        raise AssertionError(f"{exc}: {len(pods)} pods, {bound} bound, phase/bind-phase: {phases}") from None
    return result


async def test_pods_receive_the_gpus_and_limits_the_extender_chose(
    extender: ExtenderProcess, gpu_node: tuple[PluginNode, str], k8s_api: k8s.ApiClient, namespace: str
) -> None:
    node, label = gpu_node
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespaced_pod(namespace, gpu_pod("one", label, mem=3000, cores=30))
    await core.create_namespaced_pod(namespace, gpu_pod("two", label, gpus=2, mem=5000, cores=20))
    pods = await wait_all_allocated(k8s_api, namespace, 2, within=180)
    for pod in pods:
        check_pod_got_what_the_extender_chose(node, pod)
    by_name = {p["metadata"]["name"]: p for p in pods}
    (two,) = decode_pod_devices(by_name["two"]["metadata"]["annotations"][names.DEVICES_ALLOCATED])
    assert len({d.uuid for d in two}) == 2
    assert [d.usedmem for d in two] == [5000, 5000]


async def test_burst_of_80_pods_of_different_sizes_on_one_node(
    extender: ExtenderProcess, gpu_node: tuple[PluginNode, str], k8s_api: k8s.ApiClient, namespace: str
) -> None:
    node, label = gpu_node
    core = k8s.CoreV1Api(k8s_api)
    limit = asyncio.Semaphore(16)
    # 1000..2500 MiB and 0..10 % cores: neighbours on a card differ in size; everything fits (10 x 2500 < 32768)
    sizes = [1000 + (i % 4) * 500 for i in range(BURST)]

    async def create(i: int) -> None:
        async with limit:
            await core.create_namespaced_pod(namespace, gpu_pod(f"burst-{i:02d}", label, mem=sizes[i], cores=i % 3 * 5))

    await asyncio.gather(*(create(i) for i in range(BURST)))
    pods = await wait_all_allocated(k8s_api, namespace, BURST, within=420)
    slots_seen: set[str] = set()
    for pod in pods:
        check_pod_got_what_the_extender_chose(node, pod)
        (devices,) = decode_pod_devices(pod["metadata"]["annotations"][names.DEVICES_ALLOCATED])
        assert devices[0].usedmem == requested_mem(pod), pod["metadata"]["name"]
        (allocation,) = node.kubelet.allocations_of(namespace, pod["metadata"]["name"])
        assert not slots_seen & set(allocation.device_ids)
        slots_seen |= set(allocation.device_ids)
    assert len(slots_seen) == BURST
    # each card's containers together stay within the card
    per_card: dict[str, int] = {}
    for pod in pods:
        (devices,) = decode_pod_devices(pod["metadata"]["annotations"][names.DEVICES_ALLOCATED])
        per_card[devices[0].uuid] = per_card.get(devices[0].uuid, 0) + devices[0].usedmem
    assert all(total <= 32768 for total in per_card.values()), per_card
