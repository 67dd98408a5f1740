"""The attacker suite, admission part (issue 16): a tenant against the real kube-apiserver.

The tenant is what issue 16 calls one: its own namespace and a ServiceAccount bound to the ``edit`` ClusterRole
there, nothing else; it speaks to the apiserver with a TokenRequest token of that ServiceAccount. Against it stand

* the placement ValidatingAdmissionPolicy and its binding, applied as shipped (deploy/kustomize/base/admission-
  policy), and the RBAC of the extender and the device plugin as shipped;
* the real ``hami-webhook`` process behind the ValidatingWebhookConfiguration of the deploy tree (the tenant guard,
  ``/validate``), pointed at the local process and narrowed to the tenants' namespaces (other tests share this
  apiserver);
* the extender's ServiceAccount (hami-system/hami-scheduler) with a TokenRequest token, and the device plugin's
  (hami-system/hami-device-plugin) with a token bound to a stand-in of its DaemonSet pod on each of two Nodes,
  as the kubelet mounts it.

Each test's docstring names the attack it replays (the rows of docs/security.md). Admission is what is tested
here, so Nodes are plain API objects and no kubelet runs; the attacks on running containers are in the other
test_security_*.py files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for
from e2e_harness.webhooks import WebhookTLS
from hami_shared import names
from kubernetes_asyncio import client as k8s
from test_webhook_e2e import hami_webhook_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
GUARD_MANIFEST = KUSTOMIZE / "base" / "webhook" / "validating-webhook.yaml"
HAMI_NAMESPACE = "hami-system"
EXTENDER_SA = "hami-scheduler"
DEVICE_PLUGIN_SA = "hami-device-plugin"
TENANT_LABEL = "e2e.local/tenant-guard"
POLICY_DENIAL = "ValidatingAdmissionPolicy 'hami-placement-writers' with binding 'hami-placement-writers' denied"
GUARD_DENIAL = 'admission webhook "guard.hami.io" denied the request'
UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
# A placement as the extender writes it: one container, one card, 20000 MiB, 30 % of the SMs.
ALLOCATED = f"{UUID_A},NVIDIA,20000,30:;"


@dataclass
class Arena:
    """What the module sets up once (see the module docstring)."""

    cluster: LocalCluster
    admin: k8s.ApiClient
    extender: Path
    """kubeconfig of hami-system/hami-scheduler"""
    device_plugin: dict[str, Path]
    """kubeconfig of hami-system/hami-device-plugin per node, its token bound to its pod on that node"""
    nodes: tuple[str, str]


@dataclass
class Tenant:
    namespace: str
    api: k8s.ApiClient

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)


def kubectl(cluster: LocalCluster, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def aggregate_edit_role(admin: k8s.ApiClient) -> None:
    """Fill ``view``, then ``edit``, as kube-controller-manager's clusterrole-aggregation controller does (it does not
    run in localcluster): each gets the rules of every ClusterRole labelled aggregate-to-<role>. ``edit`` takes
    ``view``'s rules through it (``view`` is labelled aggregate-to-edit), so the order matters: filled alone, ``edit``
    would let a tenant create pods but not read them or their logs, which no real cluster's ``edit`` does."""
    rbac = k8s.RbacAuthorizationV1Api(admin)
    for role in ("view", "edit"):
        parts = await rbac.list_cluster_role(label_selector=f"rbac.authorization.k8s.io/aggregate-to-{role}=true")
        target = await rbac.read_cluster_role(role)
        target.rules = [rule for part in parts.items if part.metadata.name != role for rule in part.rules or []]
        await rbac.replace_cluster_role(role, target)


async def ensure(call: Awaitable[Any]) -> None:
    """Run a create call; an object that already exists is fine (the session cluster is shared)."""
    try:
        await call
    except k8s.ApiException as e:
        if e.status != 409:
            raise


async def policy_enforced(admin: k8s.ApiClient, probe: Tenant) -> bool:
    """The apiserver loads new policies and webhook configurations asynchronously: a dry-run create by the tenant
    is refused by both once they are in force."""
    pod = plain_pod("probe", annotations={names.VGPU_NODE: "n"})
    try:
        await probe.core.create_namespaced_pod(probe.namespace, pod, dry_run="All")
    except k8s.ApiException as e:
        if POLICY_DENIAL not in json.loads(e.body)["message"]:
            return False
    else:
        return False
    env_pod = plain_pod("probe", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"})
    try:
        await probe.core.create_namespaced_pod(probe.namespace, env_pod, dry_run="All")
    except k8s.ApiException as e:
        return GUARD_DENIAL in json.loads(e.body)["message"]
    return False


@contextlib.asynccontextmanager
async def tenant_namespace(cluster: LocalCluster, admin: k8s.ApiClient) -> AsyncIterator[Tenant]:
    """A fresh namespace, a ServiceAccount with ``edit`` there, and an ApiClient with its token."""
    core = k8s.CoreV1Api(admin)
    namespace = f"tenant-{uuid.uuid4().hex[:8]}"
    await core.create_namespace({"metadata": {"name": namespace, "labels": {TENANT_LABEL: "true"}}})
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    await k8s.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )

    async def has_default_sa() -> bool:
        try:
            await core.read_namespaced_service_account("default", namespace)
        except k8s.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    await wait_for(has_default_sa, what=f"ServiceAccount {namespace}/default")
    kubeconfig = await cluster.kubeconfig_for_service_account(namespace, "tenant", create=False)
    try:
        async with cluster.api_client(kubeconfig) as api:
            yield Tenant(namespace=namespace, api=api)
    finally:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        await core.delete_namespace(namespace)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def arena(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arena]:
    run = uuid.uuid4().hex[:6]
    nodes = (f"sec-{run}-a", f"sec-{run}-b")
    guard_name = f"hami-webhook-security-{run}"
    tls = WebhookTLS.create(tmp_path_factory.mktemp("security-webhook-tls"))
    async with local_cluster.api_client() as admin:
        core = k8s.CoreV1Api(admin)
        admission = k8s.AdmissionregistrationV1Api(admin)
        await aggregate_edit_role(admin)
        await ensure(core.create_namespace({"metadata": {"name": HAMI_NAMESPACE}}))
        for account in (EXTENDER_SA, DEVICE_PLUGIN_SA):
            await ensure(core.create_namespaced_service_account(HAMI_NAMESPACE, {"metadata": {"name": account}}))
        for rbac in ("scheduler", "device-plugin"):
            kubectl(local_cluster, "apply", "--server-side", "-f", str(KUSTOMIZE / "base" / rbac / "rbac.yaml"))
        kubectl(local_cluster, "apply", "--server-side", "-k", str(KUSTOMIZE / "base" / "admission-policy"))
        for node in nodes:
            await core.create_node({"metadata": {"name": node, "labels": {"gpu": "on"}}})
        device_plugin = {
            node: await local_cluster.kubeconfig_for_pod(
                HAMI_NAMESPACE, f"hami-device-plugin-{node}", service_account=DEVICE_PLUGIN_SA, node=node
            )
            for node in nodes
        }
        extender = await local_cluster.kubeconfig_for_service_account(HAMI_NAMESPACE, EXTENDER_SA, create=False)
        try:
            async with hami_webhook_process(tls) as webhook:
                config: dict[str, Any] = copy.deepcopy(yaml.safe_load(GUARD_MANIFEST.read_text()))
                config["metadata"]["name"] = guard_name
                for hook in config["webhooks"]:
                    path = hook["clientConfig"]["service"]["path"]
                    hook["clientConfig"] = {"url": f"{webhook.url_base}{path}", "caBundle": tls.ca_bundle}
                    hook["namespaceSelector"]["matchLabels"] = {TENANT_LABEL: "true"}
                await admission.create_validating_webhook_configuration(config)
                async with tenant_namespace(local_cluster, admin) as probe:
                    await wait_for(lambda: policy_enforced(admin, probe), what="policy and tenant guard in force")
                yield Arena(
                    cluster=local_cluster, admin=admin, extender=extender, device_plugin=device_plugin, nodes=nodes
                )
        finally:
            # Other tests share this apiserver and write placement with their own credentials.
            with contextlib.suppress(k8s.ApiException):
                await admission.delete_validating_webhook_configuration(guard_name)
            kubectl(local_cluster, "delete", "--ignore-not-found", "-k", str(KUSTOMIZE / "base" / "admission-policy"))
            for node in nodes:
                with contextlib.suppress(k8s.ApiException):
                    await core.delete_namespaced_pod(
                        f"hami-device-plugin-{node}", HAMI_NAMESPACE, grace_period_seconds=0
                    )
                with contextlib.suppress(k8s.ApiException):
                    await core.delete_node(node)


@pytest_asyncio.fixture(loop_scope="module")
async def tenant(arena: Arena) -> AsyncIterator[Tenant]:
    async with tenant_namespace(arena.cluster, arena.admin) as made:
        yield made


# --- helpers -----------------------------------------------------------------------------------------------------


def plain_pod(
    name: str,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    scheduler: str | None = None,
    node_name: str | None = None,
    init: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.local/cuda:12"}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if limits:
        container["resources"] = {"limits": limits}
    spec: dict[str, Any] = {"containers": [container]}
    if init:
        spec = {"initContainers": [container], "containers": [{"name": "main", "image": "registry.local/x:1"}]}
    if scheduler:
        spec["schedulerName"] = scheduler
    if node_name:
        spec["nodeName"] = node_name
    metadata: dict[str, Any] = {"name": name, "annotations": annotations or {}, "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


async def create_binding(api: k8s.ApiClient, namespace: str, pod: str, binding: dict[str, Any]) -> None:
    """POST pods/<pod>/binding. Raw (the answer is a Status, which the client's Binding model cannot hold), so
    the error status is raised here as the client would."""
    response = await k8s.CoreV1Api(api).create_namespaced_pod_binding(pod, namespace, binding, _preload_content=False)
    body = await response.read()
    if not 200 <= response.status <= 299:
        error = k8s.ApiException(status=response.status, reason=response.reason)
        error.body = body.decode()
        raise error


async def refused(call: Awaitable[Any]) -> tuple[int, str]:
    """The status and message of a refused API call (fails the test when the call succeeds)."""
    with pytest.raises(k8s.ApiException) as caught:
        await call
    body = json.loads(caught.value.body)
    return caught.value.status, str(body["message"])


async def patch_annotations(api: k8s.ApiClient, namespace: str, name: str, annotations: dict[str, str | None]) -> Any:
    return await k8s.CoreV1Api(api).patch_namespaced_pod(
        name,
        namespace,
        {"metadata": {"annotations": annotations}},
        _content_type="application/merge-patch+json",
    )


async def patch_node_annotations(api: k8s.ApiClient, node: str, annotations: dict[str, str | None]) -> Any:
    return await k8s.CoreV1Api(api).patch_node(
        node, {"metadata": {"annotations": annotations}}, _content_type="application/merge-patch+json"
    )


async def bind_as_extender(arena: Arena, namespace: str, pod: str, node: str) -> None:
    """What the extender's bind verb does: one Binding carrying the placement annotations."""
    async with arena.cluster.api_client(arena.extender) as extender:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {
                "name": pod,
                "annotations": {
                    names.VGPU_NODE: node,
                    names.DEVICES_TO_ALLOCATE: ALLOCATED,
                    names.DEVICES_ALLOCATED: ALLOCATED,
                    names.BIND_PHASE: "allocating",
                    names.BIND_TIME: "1765000000",
                },
            },
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        await create_binding(extender, namespace, pod, binding)


async def bound_gpu_pod(arena: Arena, tenant: Tenant, name: str, node: str) -> dict[str, Any]:
    """A tenant's GPU pod placed by the extender on ``node`` (its annotations as the extender wrote them)."""
    await tenant.core.create_namespaced_pod(
        tenant.namespace, plain_pod(name, limits={"nvidia.com/gpu": "1"}, scheduler="hami-scheduler")
    )
    await bind_as_extender(arena, tenant.namespace, name, node)
    pod = await k8s.CoreV1Api(arena.admin).read_namespaced_pod(name, tenant.namespace)
    result: dict[str, Any] = arena.admin.sanitize_for_serialization(pod)
    return result


# --- placement annotations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [names.VGPU_NODE, names.DEVICES_ALLOCATED, names.BIND_PHASE, names.DEVICE_SLOTS])
async def test_forged_placement_annotations_on_create_are_refused(tenant: Tenant, key: str) -> None:
    """Attack: a Pending pod with no GPU request, annotated hami.io/vgpu-node=N and
    hami.io/vgpu-devices-allocated=<uuid>,NVIDIA,81920,100:; so the extender counts the card as full."""
    forged = {names.VGPU_NODE: "node-a", key: f"{UUID_A},NVIDIA,81920,100:;"}
    status, message = await refused(
        tenant.core.create_namespaced_pod(tenant.namespace, plain_pod("forger", annotations=forged))
    )
    assert status == 403
    assert POLICY_DENIAL in message
    assert key in message
    assert f"system:serviceaccount:{tenant.namespace}:tenant may not set" in message


async def test_reannotating_ones_own_pod_with_a_smaller_usedmem_is_refused(arena: Arena, tenant: Tenant) -> None:
    """Attack: re-annotating one's own running pod with a smaller usedmem frees capacity, and neighbours get
    over-committed; removing bind-phase or the allocation makes the pod vanish from the extender's count."""
    pod = await bound_gpu_pod(arena, tenant, "victim", arena.nodes[0])
    assert pod["metadata"]["annotations"][names.DEVICES_ALLOCATED] == ALLOCATED  # the extender's write went through
    for change in (
        {names.DEVICES_ALLOCATED: f"{UUID_A},NVIDIA,1,30:;"},
        {names.DEVICES_ALLOCATED: None},
        {names.BIND_PHASE: None},
        {names.VGPU_NODE: arena.nodes[1]},
    ):
        status, message = await refused(patch_annotations(tenant.api, tenant.namespace, "victim", change))
        assert status == 403, change
        assert POLICY_DENIAL in message
        assert next(iter(change)) in message
    # Annotations of its own stay the tenant's to change.
    await patch_annotations(tenant.api, tenant.namespace, "victim", {"team": "ml"})
    stored = await k8s.CoreV1Api(arena.admin).read_namespaced_pod("victim", tenant.namespace)
    assert stored.metadata.annotations[names.DEVICES_ALLOCATED] == ALLOCATED
    assert stored.metadata.annotations["team"] == "ml"


async def test_status_update_cannot_carry_placement_annotations(arena: Arena, tenant: Tenant) -> None:
    """Attack: the re-annotation through the pods/status subresource, whose strategy keeps the request's
    metadata, by an identity that may update the status of the pod (``edit`` may not; the kubelet of the pod's
    node may, so a compromised node could shrink its pods' recorded usage)."""
    node = arena.nodes[0]
    await bound_gpu_pod(arena, tenant, "status-victim", node)
    kubeconfig = arena.cluster.kubeconfig_for_user(f"system:node:{node}", ["system:nodes"])
    async with arena.cluster.api_client(kubeconfig) as kubelet:
        status, message = await refused(
            k8s.CoreV1Api(kubelet).patch_namespaced_pod_status(
                "status-victim",
                tenant.namespace,
                {"metadata": {"annotations": {names.DEVICES_ALLOCATED: f"{UUID_A},NVIDIA,1,1:;"}}},
                _content_type="application/merge-patch+json",
            )
        )
    assert status == 403
    assert POLICY_DENIAL in message


async def test_other_scheduler_with_node_name_and_to_allocate_is_refused(arena: Arena, tenant: Tenant) -> None:
    """Attack: a pod with schedulerName: other, nodeName: N, a GPU request, hami.io/bind-phase=allocating and
    hami.io/vgpu-devices-to-allocate=<uuid>,NVIDIA,0,0:; (limit 0 = no limit) that Allocate would match."""
    attack = plain_pod(
        "unlimited",
        limits={"nvidia.com/gpu": "1"},
        scheduler="other",
        node_name=arena.nodes[0],
        annotations={names.BIND_PHASE: "allocating", names.DEVICES_TO_ALLOCATE: f"{UUID_A},NVIDIA,0,0:;"},
    )
    status, message = await refused(tenant.core.create_namespaced_pod(tenant.namespace, attack))
    assert status == 403
    assert POLICY_DENIAL in message
    assert names.DEVICES_TO_ALLOCATE in message
    assert names.BIND_PHASE in message


async def test_a_scheduler_that_is_not_ours_cannot_bind_with_placement(arena: Arena, tenant: Tenant) -> None:
    """Attack: any identity allowed to create Bindings (another scheduler, a compromised controller) puts
    placement annotations on a pod through the Binding, which kube-apiserver copies onto the pod."""
    core = k8s.CoreV1Api(arena.admin)
    await core.create_namespaced_service_account(tenant.namespace, {"metadata": {"name": "other-scheduler"}})
    await k8s.RbacAuthorizationV1Api(arena.admin).create_cluster_role_binding(
        {
            "metadata": {"name": f"other-scheduler-{tenant.namespace}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kube-scheduler",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "other-scheduler", "namespace": tenant.namespace}],
        }
    )
    try:
        kubeconfig = await arena.cluster.kubeconfig_for_service_account(
            tenant.namespace, "other-scheduler", create=False
        )
        await tenant.core.create_namespaced_pod(tenant.namespace, plain_pod("pending", scheduler="hami-scheduler"))
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "pending", "annotations": {names.DEVICES_ALLOCATED: ALLOCATED}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": arena.nodes[0]},
        }
        async with arena.cluster.api_client(kubeconfig) as other:
            status, message = await refused(create_binding(other, tenant.namespace, "pending", binding))
            assert status == 403
            assert POLICY_DENIAL in message
            # The same scheduler binding without our annotations is none of the policy's business.
            del binding["metadata"]["annotations"]
            await create_binding(other, tenant.namespace, "pending", binding)
        stored = await core.read_namespaced_pod("pending", tenant.namespace)
        assert stored.spec.node_name == arena.nodes[0]
        assert names.DEVICES_ALLOCATED not in (stored.metadata.annotations or {})
    finally:
        await k8s.RbacAuthorizationV1Api(arena.admin).delete_cluster_role_binding(f"other-scheduler-{tenant.namespace}")


async def test_the_extender_and_the_nodes_device_plugin_still_write_placement(arena: Arena, tenant: Tenant) -> None:
    """Positive: the extender binds with placement annotations; the device plugin of the pod's node consumes
    to-allocate and reports bind-phase=success, and writes its own Node's inventory and handshake."""
    node = arena.nodes[0]
    pod = await bound_gpu_pod(arena, tenant, "placed", node)
    assert pod["spec"]["nodeName"] == node
    assert pod["metadata"]["annotations"][names.BIND_PHASE] == "allocating"
    async with arena.cluster.api_client(arena.device_plugin[node]) as plugin:
        updated = await patch_annotations(
            plugin, tenant.namespace, "placed", {names.DEVICES_TO_ALLOCATE: ";", names.BIND_PHASE: "success"}
        )
        assert updated.metadata.annotations[names.BIND_PHASE] == "success"
        await patch_node_annotations(
            plugin, node, {names.NODE_REGISTER: '{"devices": []}', names.NODE_HANDSHAKE: "Reported_2026-12-06"}
        )
    stored = await k8s.CoreV1Api(arena.admin).read_node(node)
    assert stored.metadata.annotations[names.NODE_HANDSHAKE] == "Reported_2026-12-06"


# --- node annotations and the device plugin's reach ------------------------------------------------------------


async def test_a_tenant_cannot_write_node_annotations(arena: Arena, tenant: Tenant) -> None:
    """Attack: a tenant writes hami.io/node-nvidia-register to advertise GPUs a node does not have."""
    status, _message = await refused(
        patch_node_annotations(tenant.api, arena.nodes[0], {names.NODE_REGISTER: '{"devices": []}'})
    )
    assert status == 403  # RBAC: edit is namespaced and grants nothing on Nodes


async def test_a_nodes_own_kubelet_cannot_write_the_gpu_inventory(arena: Arena) -> None:
    """Attack: an identity that may patch a Node (here that node's kubelet credentials, allowed by the Node
    authorizer and NodeRestriction) fakes its GPU inventory or handshake."""
    node = arena.nodes[0]
    kubeconfig = arena.cluster.kubeconfig_for_user(f"system:node:{node}", ["system:nodes"])
    async with arena.cluster.api_client(kubeconfig) as kubelet:
        status, message = await refused(
            patch_node_annotations(kubelet, node, {names.NODE_HANDSHAKE: "Reported_2099-01-01"})
        )
        assert status == 403
        assert POLICY_DENIAL in message
        assert names.NODE_HANDSHAKE in message
        assert "only by the device plugin of that node" in message
        # Its other annotations stay its own.
        await patch_node_annotations(kubelet, node, {"e2e.local/kubelet": "ok"})


async def test_another_nodes_device_plugin_cannot_write_this_node_or_its_pods(arena: Arena, tenant: Tenant) -> None:
    """Attack: the device plugin of node B (a compromised node) rewrites node A's inventory, or the placement of
    a pod bound to node A; and a device-plugin token not bound to a pod on any node writes nothing."""
    node_a, node_b = arena.nodes
    await bound_gpu_pod(arena, tenant, "on-a", node_a)
    async with arena.cluster.api_client(arena.device_plugin[node_b]) as plugin_b:
        status, message = await refused(patch_node_annotations(plugin_b, node_a, {names.NODE_REGISTER: "{}"}))
        assert status == 403
        assert POLICY_DENIAL in message
        assert "may not set, change or remove them" in message
        status, message = await refused(
            patch_annotations(plugin_b, tenant.namespace, "on-a", {names.BIND_PHASE: "success"})
        )
        assert status == 403
        assert POLICY_DENIAL in message
        # Not even a label: the plugin writes only pods bound to its node.
        status, message = await refused(
            k8s.CoreV1Api(plugin_b).patch_namespaced_pod(
                "on-a",
                tenant.namespace,
                {"metadata": {"labels": {"x": "y"}}},
                _content_type="application/merge-patch+json",
            )
        )
        assert status == 403
        assert 'token node: "' + node_b + '"' in message
    unbound = await arena.cluster.kubeconfig_for_service_account(HAMI_NAMESPACE, DEVICE_PLUGIN_SA, create=False)
    async with arena.cluster.api_client(unbound) as plugin_anywhere:
        status, message = await refused(patch_node_annotations(plugin_anywhere, node_a, {names.NODE_REGISTER: "{}"}))
        assert status == 403
        assert POLICY_DENIAL in message


# --- interposer env: the webhook's tenant guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("CUDA_DEVICE_MEMORY_LIMIT", "80g"),
        ("CUDA_DEVICE_MEMORY_LIMIT_0", "80g"),
        ("CUDA_DEVICE_SM_LIMIT", "100"),
        ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/tmp/x"),
        ("GPU_CORE_UTILIZATION_POLICY", "disable"),
        ("CUDA_DISABLE_CONTROL", "true"),
        ("HAMI_VULKAN_DISABLE", "1"),
        ("CUDA_TASK_PRIORITY", "-1"),
    ],
)
async def test_interposer_variables_are_refused_in_pods_without_gpus(tenant: Tenant, variable: str, value: str) -> None:
    """Attack: the container controls its own enforcement (CUDA_DEVICE_MEMORY_LIMIT=80g,
    CUDA_DEVICE_MEMORY_SHARED_CACHE=/tmp/x, GPU_CORE_UTILIZATION_POLICY=disable, CUDA_DISABLE_CONTROL=true,
    HAMI_VULKAN_DISABLE=1), and NVIDIA_VISIBLE_DEVICES=all in a non-GPU pod gets every GPU."""
    status, message = await refused(
        tenant.core.create_namespaced_pod(tenant.namespace, plain_pod("escape", env={variable: value}))
    )
    assert status == 403
    assert GUARD_DENIAL in message
    assert f"container 'app' sets {variable} (spec.containers[0].env[0])" in message


async def test_the_guard_covers_init_containers_and_ignores_the_pods_own_opt_out_label(tenant: Tenant) -> None:
    """Attack: the same variables in an init container, on a pod labelled hami.io/webhook=ignore (the label
    opts a pod out of mutation; its author sets it, so it cannot opt out of the guard)."""
    attack = plain_pod("sneaky", env={"NVIDIA_VISIBLE_DEVICES": "all"}, init=True, labels={"hami.io/webhook": "ignore"})
    status, message = await refused(tenant.core.create_namespaced_pod(tenant.namespace, attack))
    assert status == 403
    assert GUARD_DENIAL in message
    assert "spec.initContainers[0]" in message


async def test_ephemeral_debug_containers_cannot_set_them_either(arena: Arena, tenant: Tenant) -> None:
    """Attack: kubectl debug adds an ephemeral container with NVIDIA_VISIBLE_DEVICES=all to a running pod.

    ``edit`` does not grant pods/ephemeralcontainers; operators who allow kubectl debug grant it with a Role like
    the one here."""
    rbac = k8s.RbacAuthorizationV1Api(arena.admin)
    await rbac.create_namespaced_role(
        tenant.namespace,
        {
            "metadata": {"name": "debug"},
            "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch", "update"]}],
        },
    )
    await rbac.create_namespaced_role_binding(
        tenant.namespace,
        {
            "metadata": {"name": "tenant-debug"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debug"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": tenant.namespace}],
        },
    )
    await tenant.core.create_namespaced_pod(tenant.namespace, plain_pod("target"))
    debug = {
        "name": "debug",
        "image": "registry.local/x:1",
        "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
    }
    status, message = await refused(
        tenant.core.patch_namespaced_pod_ephemeralcontainers(
            "target",
            tenant.namespace,
            {"spec": {"ephemeralContainers": [debug]}},
            _content_type="application/strategic-merge-patch+json",
        )
    )
    assert status == 403
    assert GUARD_DENIAL in message
    assert "container 'debug' sets NVIDIA_VISIBLE_DEVICES" in message


async def test_ordinary_pods_pass_the_guard_untouched(tenant: Tenant) -> None:
    """Positive: a pod without GPUs and with ordinary env (and the no-GPU values of NVIDIA_VISIBLE_DEVICES) is
    created exactly as written."""
    pod = plain_pod(
        "ordinary",
        env={"PATH": "/bin", "NVIDIA_VISIBLE_DEVICES": "void", "NVIDIA_DRIVER_CAPABILITIES": "compute"},
        annotations={"team": "ml", names.VULKAN: "false"},
    )
    created = await tenant.core.create_namespaced_pod(tenant.namespace, pod)
    assert [(e.name, e.value) for e in created.spec.containers[0].env] == [
        ("PATH", "/bin"),
        ("NVIDIA_VISIBLE_DEVICES", "void"),
        ("NVIDIA_DRIVER_CAPABILITIES", "compute"),
    ]
    assert created.metadata.annotations == {"team": "ml", names.VULKAN: "false"}


async def test_the_guard_refuses_placement_on_create_without_the_policy(arena: Arena, tenant: Tenant) -> None:
    """Attack: forged placement annotations on create, on a cluster without the ValidatingAdmissionPolicy. The
    policy lets system:masters through (break glass), which shows the webhook's own refusal."""
    forged = plain_pod(
        "forged-by-admin", annotations={names.VGPU_NODE: arena.nodes[0], names.DEVICES_ALLOCATED: ALLOCATED}
    )
    status, message = await refused(k8s.CoreV1Api(arena.admin).create_namespaced_pod(tenant.namespace, forged))
    assert status == 403
    assert GUARD_DENIAL in message
    assert names.VGPU_NODE in message
