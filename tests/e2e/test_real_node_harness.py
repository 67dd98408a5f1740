"""Acceptance tests of the real-node harness (e2e_harness/real_node.py): a real kubelet + containerd + runc node
joins the local control plane, runs a pod in a real container with no view of the machine's network or
resolver, and leaves nothing behind when stopped. Run inside tests/e2e/isolated.sh (make test-e2e does)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness.cluster import LocalCluster
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for_pod
from kubernetes_asyncio import client as k8s
from real_node_support import finished, gpu_client_pod

AddRealNode = Callable[..., Awaitable[RealNode]]


async def test_pod_runs_in_a_real_container_on_a_real_node(
    add_real_node: AddRealNode, k8s_api: k8s.ApiClient, namespace: str, local_cluster: LocalCluster
) -> None:
    node = await add_real_node(labels={"hami.e2e/real": "true"})
    core = k8s.CoreV1Api(k8s_api)
    obj = await core.read_node(node.name)
    assert obj.metadata.labels["hami.e2e/real"] == "true"
    assert obj.status.node_info.kubelet_version == "v1.34.4"
    assert obj.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in obj.status.addresses if a.type == "InternalIP"] == [node.config.node_ip]

    script = "cat /etc/resolv.conf; echo pid1=$(cat /proc/1/cmdline); ls /var/run/secrets/kubernetes.io/serviceaccount"
    await core.create_namespaced_pod(namespace, gpu_client_pod("hello", node.name, None, script))
    pod = await wait_for_pod(k8s_api, namespace, "hello", finished, what="finished", within=120)
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    # The pod got an address of this node's bridge subnet and ran as PID 1 of its own PID namespace.
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.config.pod_subnet)
    # Logs come from the kubelet through the apiserver, addressed by the Node's InternalIP (no DNS lookup).
    log = await core.read_namespaced_pod_log("hello", namespace, container="main")
    lines = log.splitlines()
    # No resolver of the machine: with the kubelet's resolvConf empty a pod names only its own loopback.
    nameservers = [line.split()[1] for line in lines if line.startswith("nameserver")]
    assert all(ipaddress.ip_address(ns).is_loopback for ns in nameservers), log
    assert any(line.startswith("pid1=/bin/sh") for line in lines), log
    # The root-CA publisher made the kube-root-ca.crt ConfigMap the projected token volume needs.
    assert {"ca.crt", "namespace", "token"} <= set(lines), log


async def test_stopped_node_leaves_nothing_behind(
    add_real_node: AddRealNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    node = await add_real_node()
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespaced_pod(namespace, gpu_client_pod("sleeper", node.name, None, "exec sleep 3600"))
    await wait_for_pod(
        k8s_api,
        namespace,
        "sleeper",
        lambda p: p.get("status", {}).get("phase") == "Running",
        what="Running",
        within=120,
    )
    assert node.leftovers(), "a running node must show up in leftovers()"
    await node.stop()
    assert node.leftovers() == []
    assert os.environ.get("HAMI_E2E_ISOLATED") == "1"


async def test_two_nodes_side_by_side_keep_their_device_plugin_dirs_apart(
    add_real_node: AddRealNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    first, second = await add_real_node(), await add_real_node()
    # Each kubelet made its registration socket in its own directory, bound over the compiled-in path only in
    # its own mount namespace; the run's namespace sees neither there.
    for node in (first, second):
        assert (node.device_plugin_dir / "kubelet.sock").is_socket()
    assert not (Path("/var/lib/kubelet/device-plugins") / "kubelet.sock").exists()
    core = k8s.CoreV1Api(k8s_api)
    for node in (first, second):
        await core.create_namespaced_pod(namespace, gpu_client_pod(f"on-{node.name}", node.name, None, "echo ok"))
    for node in (first, second):
        pod = await wait_for_pod(k8s_api, namespace, f"on-{node.name}", finished, what="finished", within=120)
        assert pod["status"]["phase"] == "Succeeded", pod["status"]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.config.pod_subnet)
