"""The local control plane is the real thing: kube-apiserver with RBAC, the Node authorizer and service-account
tokens, and kube-scheduler binding pods, restartable with a new configuration. Nodes here are API objects only
(no kubelet serves them): binding is the scheduler's part; a pod running on a real node is
test_real_node_harness.py's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for_pod
from kubernetes_asyncio import client as k8s


def plain_pod(name: str, node_label: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "registry.local/plain:1"}],
            "nodeSelector": {"e2e.local/node": node_label},
            **spec,
        },
    }


async def test_apiserver_reports_its_release(k8s_api: k8s.ApiClient) -> None:
    version = await k8s.VersionApi(k8s_api).get_code()
    assert (version.major, version.minor) == ("1", "34")
    assert version.git_version.startswith("v1.34.")


async def create_node(core: k8s.CoreV1Api, name: str, label: str, *, schedulable: bool = True) -> None:
    """A Node object with room for pods (no kubelet behind it: pods bound to it stay Pending)."""
    await core.create_node(
        {"metadata": {"name": name, "labels": {"e2e.local/node": label}}, "spec": {"unschedulable": not schedulable}}
    )
    resources = {"cpu": "4", "memory": "8Gi", "pods": "10"}
    await core.patch_node_status(name, {"status": {"capacity": resources, "allocatable": resources}})


async def test_scheduler_binds_a_plain_pod_to_the_only_fitting_node(k8s_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(k8s_api)
    label = uuid.uuid4().hex[:8]
    nodes = [f"plain-{label}-a", f"plain-{label}-b"]
    for node, schedulable in zip(nodes, (False, True), strict=True):
        await create_node(core, node, label, schedulable=schedulable)
    try:
        await core.create_namespaced_pod(namespace, plain_pod("plain", label))
        pod = await wait_for_pod(k8s_api, namespace, "plain", lambda p: bool(p["spec"].get("nodeName")), what="bound")
        assert pod["spec"]["nodeName"] == nodes[1]
        scheduled = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert scheduled["PodScheduled"] == "True"
    finally:
        for node in nodes:
            await core.delete_node(node)


async def test_rbac_denies_a_service_account_without_roles(local_cluster: LocalCluster, namespace: str) -> None:
    kubeconfig = await local_cluster.kubeconfig_for_service_account(namespace, "nobody")
    async with local_cluster.api_client(kubeconfig) as api:
        with pytest.raises(k8s.ApiException) as denied:
            await k8s.CoreV1Api(api).list_node()
    assert denied.value.status == 403
    assert "system:serviceaccount:" + namespace + ":nobody" in str(denied.value.body)


async def test_service_account_token_works_once_rbac_allows(
    local_cluster: LocalCluster, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    kubeconfig = await local_cluster.kubeconfig_for_service_account(namespace, "reader")
    rbac = k8s.RbacAuthorizationV1Api(k8s_api)
    await rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    async with local_cluster.api_client(kubeconfig) as api:
        pods = await k8s.CoreV1Api(api).list_namespaced_pod(namespace)
    assert pods.items == []


async def test_node_authorizer_confines_a_node_to_its_own_node(local_cluster: LocalCluster) -> None:
    # Each node registers its own Node with its own credentials, as a kubelet does.
    names = [f"authz-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    kubeconfigs = [local_cluster.kubeconfig_for_user(f"system:node:{n}", ("system:nodes",)) for n in names]
    try:
        for name, kubeconfig in zip(names, kubeconfigs, strict=True):
            async with local_cluster.api_client(kubeconfig) as api:
                await k8s.CoreV1Api(api).create_node({"metadata": {"name": name}})
        mine, other = names
        async with local_cluster.api_client(kubeconfigs[0]) as api:
            core = k8s.CoreV1Api(api)
            await core.patch_node_status(mine, {"status": {"capacity": {"e2e.local/own": "1"}}})
            with pytest.raises(k8s.ApiException) as denied:
                await core.patch_node_status(other, {"status": {"capacity": {"e2e.local/own": "1"}}})
        assert denied.value.status == 403
    finally:
        async with local_cluster.api_client() as api:
            for name in names:
                await k8s.CoreV1Api(api).delete_node(name)


async def test_scheduler_restarts_with_a_new_profile(
    local_cluster: LocalCluster, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    label = uuid.uuid4().hex[:8]
    core = k8s.CoreV1Api(k8s_api)
    await create_node(core, f"second-{label}", label)
    local_cluster.restart_scheduler(
        "apiVersion: kubescheduler.config.k8s.io/v1\n"
        "kind: KubeSchedulerConfiguration\n"
        "profiles:\n"
        "- schedulerName: default-scheduler\n"
        "- schedulerName: e2e-second-scheduler\n"
    )
    try:
        await core.create_namespaced_pod(namespace, plain_pod("second", label, schedulerName="e2e-second-scheduler"))
        await wait_for_pod(k8s_api, namespace, "second", lambda p: bool(p["spec"].get("nodeName")), what="bound")
    finally:
        local_cluster.restart_scheduler(None)
        await core.delete_node(f"second-{label}")
    assert local_cluster.scheduler_status()["running"]


def test_scheduler_restart_reports_a_rejected_configuration(local_cluster: LocalCluster) -> None:
    try:
        with pytest.raises(RuntimeError, match="rejected the configuration"):
            local_cluster.restart_scheduler(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                "profiles:\n- schedulerName: ''\n"
            )
    finally:
        local_cluster.restart_scheduler(None)
    assert local_cluster.running
