"""ResourceQuota on GPU slices, HAMi's way, through the real kube-apiserver and kube-scheduler: a namespace whose
ResourceQuota says ``limits.nvidia.com/gpumem: 8000`` gets pods bound up to 8000 MiB (memory x cards); the next
one stays Pending with HAMi's ``ResourceQuotaNotFit`` reason naming the quota and the numbers (in kube-scheduler's
FailedScheduling event and the pod's PodScheduled condition); deleting a pod lets it bind. The extender is killed
(SIGKILL) and restarted in between: the usage is rebuilt from the bound pods' annotations, so the quota still
holds. Also what kube-apiserver itself does with such a quota: it accepts ``limits.<extended resource>`` (whole
numbers only), and its own quota admission does not count or refuse GPU pods against it (no double counting).

The Nodes are simulated (register annotation + allocatable, no kubelet), as in test_extender_placement.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for, wait_for_pod
from extender_support import ExtenderProcess, create_gpu_node, gpu_pod, gpus, list_pods, scheduling_through
from kubernetes_asyncio import client as k8s

QUOTA_KEY = "limits.nvidia.com/gpumem"


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    async with scheduling_through(local_cluster, tmp_path / "extender.log") as process:
        yield process


def bound(pod: dict[str, Any]) -> bool:
    return bool(pod["spec"].get("nodeName"))


async def quota_refusal(core: k8s.CoreV1Api, namespace: str, pod: str, needle: str) -> str | None:
    """kube-scheduler's word on why ``pod`` is Pending, if it carries ``needle``: the FailedScheduling event, or the
    pod's PodScheduled condition."""
    events = await core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}")
    for event in events.items:
        if event.reason == "FailedScheduling" and needle in (event.message or ""):
            return str(event.message)
    status = (await core.read_namespaced_pod(pod, namespace)).status
    for condition in (status.conditions or []) if status else []:
        if condition.type == "PodScheduled" and needle in (condition.message or ""):
            return str(condition.message)
    return None


async def test_gpu_memory_quota_holds_across_restart_and_frees_on_delete(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    node = f"quota-{uuid.uuid4().hex[:6]}"
    await create_gpu_node(k8s_api, node, gpus(node, 2, split=10, devmem=16000))
    try:
        # kube-apiserver validates limits.<extended resource> like any extended resource: whole numbers only.
        with pytest.raises(k8s.ApiException) as refused:
            await core.create_namespaced_resource_quota(
                namespace, {"metadata": {"name": "fractional"}, "spec": {"hard": {QUOTA_KEY: "1.5"}}}
            )
        assert refused.value.status == 422
        await core.create_namespaced_resource_quota(
            namespace, {"metadata": {"name": "gpu"}, "spec": {"hard": {QUOTA_KEY: "8000"}}}
        )
        # 3000 + 2 cards x 2500 = 8000 MiB: exactly the quota. kube-apiserver's own quota admission lets them in
        # (it evaluates only requests.<extended resource> for pods) and the extender binds them.
        await core.create_namespaced_pod(namespace, gpu_pod("a", node, mem=3000))
        await core.create_namespaced_pod(namespace, gpu_pod("b", node, gpus=2, mem=2500))
        for name in ("a", "b"):
            await wait_for_pod(k8s_api, namespace, name, bound, what="bound", within=120)
        await core.create_namespaced_pod(namespace, gpu_pod("c", node, mem=1000))
        expected = (
            f"ResourceQuotaNotFit: ResourceQuota {namespace}/gpu {QUOTA_KEY}: used 8000 + asked 1000 > limit 8000"
        )

        async def c_refused() -> str | None:
            return await quota_refusal(core, namespace, "c", expected)

        await wait_for(c_refused, what="pod c refused with ResourceQuotaNotFit", within=120)
        metrics = await extender.metrics()
        used = f'hami_resource_quota_used{{limit="8000",namespace="{namespace}",quota_name="nvidia.com/gpumem"}} 8000.0'
        assert used in metrics
        assert f'hami_resource_quota_limit{{namespace="{namespace}",quota_name="nvidia.com/gpumem"}} 8000.0' in metrics

        # A crash: the new process has nothing but what it lists. The quota still holds for a new pod.
        await extender.kill()
        await extender.start()
        assert used in await extender.metrics()
        await core.create_namespaced_pod(namespace, gpu_pod("d", node, mem=500))
        expected_d = (
            f"ResourceQuotaNotFit: ResourceQuota {namespace}/gpu {QUOTA_KEY}: used 8000 + asked 500 > limit 8000"
        )

        async def d_refused() -> str | None:
            return await quota_refusal(core, namespace, "d", expected_d)

        await wait_for(d_refused, what="pod d refused after the restart", within=120)
        pods = {p["metadata"]["name"]: p for p in await list_pods(k8s_api, namespace)}
        assert not bound(pods["c"])
        assert not bound(pods["d"])

        # kube-apiserver's quota keeps no usage of its own for this key: the extender's is the only count.
        quota = await core.read_namespaced_resource_quota("gpu", namespace)
        status_used = (quota.status.used if quota.status else None) or {}
        assert QUOTA_KEY not in status_used

        # Deleting a pod frees its share at once (kube-scheduler retries the Pending pods on the delete).
        await core.delete_namespaced_pod("a", namespace, grace_period_seconds=0)

        async def a_gone() -> bool:
            # 8000 no more: 5000, or more already if kube-scheduler's retry has bound c or d meanwhile.
            text = await extender.metrics()
            return used not in text and f'namespace="{namespace}",quota_name="nvidia.com/gpumem"}}' in text

        await wait_for(a_gone, what="the extender's watch saw pod a gone", within=60)
        # If kube-scheduler's retry on the delete came before the extender's watch saw it, c and d wait for the next
        # cluster event (services/scheduler-extender/README.md, "Known limits"): an update of each is one.
        for name in ("c", "d"):
            await core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"e2e.hami.io/retry": "1"}}})
        for name in ("c", "d"):
            await wait_for_pod(k8s_api, namespace, name, bound, what=f"{name} bound after a was deleted", within=180)
        metrics = await extender.metrics()
        assert used.replace("} 8000.0", "} 6500.0") in metrics
    finally:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        await core.delete_node(node)
