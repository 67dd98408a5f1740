"""Fixtures' building blocks for the tests that run the stack on real nodes (kubelet + containerd + runc).

Each such test module has a control plane of its own (the stack installs webhooks with failurePolicy Fail and
reconfigures kube-scheduler), a HamiStack whose GPU nodes are real nodes, and namespaces whose ``default``
ServiceAccount exists before a pod is created there. Every real node must leave nothing behind.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from e2e_harness.cluster import HARNESS_CONTROLLERS, LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.real_node import RealNode, control_plane_address
from e2e_harness.waiting import wait_for
from hami_stack import HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s


@contextlib.contextmanager
def own_control_plane(
    tmp_path_factory: pytest.TempPathFactory, label: str, controllers: str = HARNESS_CONTROLLERS
) -> Iterator[LocalCluster]:
    """A local control plane for one test module, stopped cleanly at the end. Its apiserver listens on
    CONTROL_PLANE_ADDRESS (a /32 on lo for the while), the endpoint of the ``kubernetes`` Service, so pods reach it
    (through a node's kube-proxy, see RealNodeConfig.kube_proxy). ``controllers``: see LocalCluster.start."""
    with control_plane_address() as address:
        cluster = LocalCluster.start(
            tmp_path_factory.mktemp(label) / "cluster", address=address, controllers=controllers
        )
        try:
            yield cluster
        finally:
            assert cluster.stop() == 0


@contextlib.asynccontextmanager
async def real_node_stack(
    cluster: LocalCluster,
    images: NodeImages,
    node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
    label: str,
    nodes: Sequence[NodeSpec],
    **options: Any,
) -> AsyncIterator[HamiStack]:
    """The whole stack with ``nodes`` as real nodes; fails the test if a node leaves anything behind."""
    hami = HamiStack(
        cluster,
        tmp_path_factory.mktemp(label),
        tuple(nodes),
        real_nodes=images,
        node_indexes=node_indexes,
        **options,
    )
    reals: list[RealNode] = []
    try:
        await hami.start()
        reals = [n.kubelet for n in hami.gpu_nodes.values() if isinstance(n.kubelet, RealNode)]
        yield hami
    finally:
        await hami.stop()
    left = [piece for node in reals for piece in node.leftovers()]
    assert not left, f"real nodes left behind: {left}"


async def has_default_service_account(core: k8s.CoreV1Api, namespace: str) -> bool:
    try:
        await core.read_namespaced_service_account("default", namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


@contextlib.asynccontextmanager
async def pod_namespace(api: k8s.ApiClient, name: str, grace_period_seconds: int = 1) -> AsyncIterator[str]:
    """Namespace ``name``, usable once its ``default`` ServiceAccount exists; its pods are deleted at the end, also
    when the test failed (a failed burst's pods would otherwise hold the node's GPU slots for the next test)."""
    core = k8s.CoreV1Api(api)
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    await wait_for(lambda: has_default_service_account(core, name), what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        await core.delete_collection_namespaced_pod(name, grace_period_seconds=grace_period_seconds)


async def pod_log(core: k8s.CoreV1Api, namespace: str, name: str, container: str = "main") -> str:
    """The container's log so far ("" while it has not started)."""
    try:
        log: str | None = await core.read_namespaced_pod_log(name, namespace, container=container)
    except k8s.ApiException:
        return ""
    return log or ""


def container_env(log: str) -> dict[str, str]:
    """``KEY=VALUE`` lines a container printed (``env``, ``echo``), the last one of a key winning."""
    out: dict[str, str] = {}
    for line in log.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    return out


def probe_results(log: str) -> list[dict[str, Any]]:
    """The JSON lines of hamicore's cuda_probe in a container's log, in order."""
    return [json.loads(line) for line in log.splitlines() if line.startswith('{"cmd"')]


def kubelet_device_ids(node: RealNode | Any, resource: str = "nvidia.com/gpu") -> dict[tuple[str, str], list[str]]:
    """(pod UID, container) -> the device IDs the real kubelet's device manager gave that container, from its own
    checkpoint (``kubelet_internal_checkpoint`` in the node's device-plugin directory). A pod that ended is
    dropped from it by the kubelet."""
    assert isinstance(node, RealNode)
    doc = json.loads((node.device_plugin_dir / "kubelet_internal_checkpoint").read_text())
    out: dict[tuple[str, str], list[str]] = {}
    for entry in doc["Data"]["PodDeviceEntries"]:
        if entry["ResourceName"] == resource:
            ids = [device for per_numa in entry["DeviceIDs"].values() for device in per_numa]
            out.setdefault((entry["PodUID"], entry["ContainerName"]), []).extend(ids)
    return out


def gpu_client_pod(name: str, node: str, memory_mib: int | None, script: str) -> dict[str, Any]:
    """A pod of the GPU-client image running ``script`` on ``node``; with ``memory_mib`` it asks for GPU memory only
    (the webhook adds the GPU count and the scheduler name), without it for nothing of ours."""
    resources = {"limits": {"nvidia.com/gpumem": str(memory_mib)}} if memory_mib is not None else {}
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": GPU_CLIENT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "resources": resources,
                }
            ],
        },
    }


def finished(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def mount_options(log: str, path: str) -> list[str]:
    """Options of ``path`` in the /proc/mounts lines the pod printed."""
    for line in log.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == path:
            return fields[3].split(",")
    raise AssertionError(f"{path} is not mounted in the container:\n{log}")
