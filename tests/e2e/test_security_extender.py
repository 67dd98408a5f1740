"""Attacks on the scheduler extender's usage cache, replayed by a tenant (issue 16) against the real kube-apiserver
and kube-scheduler: the tenant is a ServiceAccount with ``edit``'s rights on pods in its own namespace and nothing
else. No admission policy or webhook is installed here: the extender must stand on its own.

- a Pending pod without a GPU request, annotated ``hami.io/vgpu-node=<node>`` and a full card in
  ``hami.io/vgpu-devices-allocated``, used to make the extender count that card as full;
- a 5,000-digit number in ``hami.io/vgpu-devices-allocated`` of a bound pod used to make every list of pods fail
  (after a restart the extender never became ready).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for_pod
from extender_support import (
    ExtenderProcess,
    create_gpu_node,
    gpu_pod,
    gpus,
    scheduling_through,
)
from hami_shared import names
from kubernetes_asyncio import client as k8s


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    async with scheduling_through(local_cluster, tmp_path / "extender.log") as process:
        yield process


@pytest.fixture
async def tenant(local_cluster: LocalCluster, k8s_api: k8s.ApiClient, namespace: str) -> AsyncIterator[k8s.ApiClient]:
    """A client of ServiceAccount ``tenant`` that may do in ``namespace`` what ``edit`` allows on pods, and nothing
    else. (The local control plane runs no ClusterRole aggregation controller, so the aggregated ``edit`` role has
    no rules there: its pod rules are granted by a Role of the same verbs.)"""
    kubeconfig = await local_cluster.kubeconfig_for_service_account(namespace, "tenant")
    rbac = k8s.RbacAuthorizationV1Api(k8s_api)
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    await rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "tenant-edit"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]},
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant-edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    async with local_cluster.api_client(kubeconfig) as api:
        yield api


async def _gpu_node(k8s_api: k8s.ApiClient) -> tuple[str, str]:
    node = f"sec-{uuid.uuid4().hex[:6]}"
    devices = gpus(node, 1, split=10, devmem=16000)
    await create_gpu_node(k8s_api, node, devices)
    return node, devices[0].id


def _ignored(metrics: str, reason: str) -> float:
    """``hami_extender_pods_ignored_total{reason}`` (other tests' pods of the shared cluster may count too)."""
    prefix = f'hami_extender_pods_ignored_total{{reason="{reason}"}} '
    return sum(float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix))


async def _bound_to(api: k8s.ApiClient, namespace: str, name: str) -> str:
    pod = await wait_for_pod(api, namespace, name, lambda p: bool(p["spec"].get("nodeName")), what="bound", within=120)
    return str(pod["spec"]["nodeName"])


async def test_forged_placement_on_a_pending_pod_without_gpu_request_blocks_nothing(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, tenant: k8s.ApiClient, namespace: str
) -> None:
    node, card = await _gpu_node(k8s_api)
    core = k8s.CoreV1Api(tenant)
    try:
        squatter = {
            "metadata": {
                "name": "squatter",
                "annotations": {names.VGPU_NODE: node, names.DEVICES_ALLOCATED: f"{card},NVIDIA,16000,100:;"},
            },
            # No scheduler serves this name: the pod stays Pending, its annotations in place.
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]},
        }
        await core.create_namespaced_pod(namespace, squatter)
        await core.create_namespaced_pod(namespace, gpu_pod("whole-card", node, mem=16000, cores=100))
        assert await _bound_to(k8s_api, namespace, "whole-card") == node
        metrics = await extender.metrics()
        assert _ignored(metrics, "not-bound-through-us") >= 1
    finally:
        await k8s.CoreV1Api(k8s_api).delete_node(node)


async def test_a_5000_digit_number_on_a_bound_pod_does_not_wedge_the_extender(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, tenant: k8s.ApiClient, namespace: str
) -> None:
    node, card = await _gpu_node(k8s_api)
    core = k8s.CoreV1Api(tenant)
    try:
        poison = gpu_pod("poison", node, mem=1000)
        poison["spec"]["nodeName"] = node  # bound at creation, as any pod author may write
        poison["metadata"]["annotations"] = {
            names.VGPU_NODE: node,
            names.DEVICES_ALLOCATED: f"{card},NVIDIA,{'9' * 5000},0:;",
        }
        await core.create_namespaced_pod(namespace, poison)
        # A restart lists every pod again: the list must load, the extender become ready, and place pods.
        await extender.stop()
        await extender.start(ready_within=60)
        await core.create_namespaced_pod(namespace, gpu_pod("after", node, mem=15000))
        assert await _bound_to(k8s_api, namespace, "after") == node
        metrics = await extender.metrics()
        assert _ignored(metrics, "malformed") >= 1
    finally:
        await k8s.CoreV1Api(k8s_api).delete_node(node)
