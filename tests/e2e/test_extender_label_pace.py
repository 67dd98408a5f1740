"""Issue 22: a first start of the extender over pods placed by HAMi without the ``hami.io/vgpu-node`` label, on the
real kube-apiserver. Every such pod is due a label patch; the extender must write them at its set pace
(``--label-writes-per-second`` after ``--label-write-burst``), each pod once, not all at once.

The exact bound over every window is checked on virtual time in services/scheduler-extender/tests/
test_label_writes.py; here the real process, list and API server: the labels must all arrive, one PATCH per pod
(the API server's own request counter), and no faster than the pace allows (the first to the last label seen
by a watch spans at least (pods - burst) / rate, less a second for the watch's own delays, which can only
stretch that span).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from e2e_harness.cluster import LocalCluster
from e2e_harness.ports import free_port
from e2e_harness.waiting import wait_for
from extender_support import SCHEDULER_NAME, ExtenderProcess, PodWatch, create_gpu_node, gpus
from hami_shared import names
from hami_shared.kube import checked, discard
from kubernetes_asyncio import client as k8s

PODS, RATE, BURST = 200, 20, 10
POD_PATCHES = ('code="200"', 'resource="pods"', 'subresource=""', 'verb="PATCH"')


def placed_pod(name: str, node: str, gpu: str) -> dict[str, Any]:
    """A pod as HAMi leaves it once its GPUs are allocated: bound, annotated, bind-phase success, no label."""
    return {
        "metadata": {
            "name": name,
            "annotations": {
                names.VGPU_NODE: node,
                names.DEVICES_ALLOCATED: f"{gpu},NVIDIA,100,0:;",
                names.DEVICES_TO_ALLOCATE: ";",
                names.BIND_PHASE: "success",
            },
        },
        "spec": {
            "nodeName": node,
            "schedulerName": SCHEDULER_NAME,
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "100"}},
                }
            ],
        },
    }


async def pod_patches(api: k8s.ApiClient) -> float:
    """PATCHes of pods (not of a subresource) the API server has answered with 200, from its /metrics."""
    response = await checked(
        api.call_api(
            "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
        )
    )
    try:
        text = await response.text()
    finally:
        response.release()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{") and all(needle in line for needle in POD_PATCHES)
    )


async def test_a_first_start_over_label_less_pods_labels_each_once_at_the_set_pace(
    local_cluster: LocalCluster, k8s_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    node = f"pace-{namespace[-6:]}"
    devices = gpus(node, 8, split=30)
    await create_gpu_node(k8s_api, node, devices)
    try:
        await labels_at_the_pace(local_cluster, core, namespace, node, [d.id for d in devices], tmp_path)
    finally:
        # The session's cluster is shared: a Node left here would take other tests' pods (default scheduler).
        await core.delete_node(node)


async def labels_at_the_pace(
    local_cluster: LocalCluster, core: k8s.CoreV1Api, namespace: str, node: str, gpu_ids: list[str], tmp_path: Path
) -> None:
    k8s_api = core.api_client
    limit = asyncio.Semaphore(16)

    async def create(i: int) -> None:
        async with limit:
            body = placed_pod(f"job-{i:03d}", node, gpu_ids[i % len(gpu_ids)])
            await discard(core.create_namespaced_pod(namespace, body, _preload_content=False))

    await asyncio.gather(*(create(i) for i in range(PODS)))
    labelled: dict[str, float] = {}

    def seen(pod: Any, at: float) -> None:
        if (pod["metadata"].get("labels") or {}).get(names.VGPU_NODE) == node:
            labelled.setdefault(pod["metadata"]["name"], at)

    watch = PodWatch(core, namespace, seen)
    await watch.start()
    assert labelled == {}  # nothing labels them but the extender
    patches_before = await pod_patches(k8s_api)
    extender = ExtenderProcess(
        local_cluster,
        free_port(),
        tmp_path / "extender.log",
        [f"--label-writes-per-second={RATE}", f"--label-write-burst={BURST}"],
    )
    started = time.monotonic()
    await extender.start()
    try:

        async def all_labelled() -> bool:
            return len(labelled) == PODS

        await wait_for(all_labelled, what=f"{PODS} pods labelled", within=(PODS / RATE) * 4 + 60, interval=0.5)
        await asyncio.sleep(1.0)  # a second write of any pod would be counted below
        patches = await pod_patches(k8s_api) - patches_before
        metrics = await extender.metrics()
    finally:
        await extender.stop()
        await watch.stop()
    span = max(labelled.values()) - min(labelled.values())
    assert span >= (PODS - BURST) / RATE - 1.0, (span, max(labelled.values()) - started)
    assert patches == PODS
    assert "hami_extender_label_writes_pending 0.0" in metrics
