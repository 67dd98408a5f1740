"""The product as deployed (issue 15, Deliver 2): the four services installed on a real GPU node the way an
operator installs them, and the vertical slice through them.

One control plane (its apiserver on a routable address, so pods reach it through the ``kubernetes`` Service) and
one real GPU node (label gpu=on, one simulated GPU through the NVIDIA toolkit's test double, kube-proxy for the
run) whose containerd holds the stack images (`make e2e-images`), shared with test_deployed_rollouts.py, which
runs after this module (conftest's ``deployed``). The install (e2e_harness.deployed_stack):
operator overlays over the repository's bases with ``kubectl apply --server-side -k``, the webhook certificate
from deploy/scripts/webhook-cert.sh, the regions tmpfs provided by the node. Nothing of the stack is a host
process: the apiserver calls the webhook pods through their Service, kube-scheduler and the extender run in the
scheduler pod, the device plugin and lib installer in their DaemonSets' pods.
Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deployed_support import (
    CUDA_OUT_OF_MEMORY,
    WAIT_S,
    finished,
    gpu_client_pod,
    mount_options,
    probe_results,
)
from e2e_harness.deployed_stack import NAMESPACE, SERVICE_WORKLOADS, DeployedStack
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for_pod
from hami_shared import names
from kubernetes_asyncio import client as k8s

# The deployment is shared with test_deployed_rollouts.py (conftest's ``deployed``): the session's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")

CAP = 1000 << 20


def host_processes_named(fragment: str) -> list[str]:
    """Command lines of processes in this (the run's) mount namespace that name ``fragment``: a stack service
    run as a host process would be one; container processes live in mount namespaces of their own."""
    own = os.readlink("/proc/self/ns/mnt")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mnt = os.readlink(entry / "ns" / "mnt")
        except OSError:
            continue
        if fragment in cmdline and mnt == own:
            found.append(cmdline)
    return found


async def test_each_service_runs_from_its_image_as_its_manifest_says(
    deployed: tuple[DeployedStack, list[RealNode]],
) -> None:
    stack, nodes = deployed
    references = stack.images.references
    expected = {
        "hami-webhook": {"webhook": references["webhook"]},
        "hami-scheduler": {
            "kube-scheduler": references["kube-scheduler"],
            "extender": references["scheduler-extender"],
        },
        "hami-device-plugin": {"device-plugin": references["device-plugin"]},
        "hami-lib-installer": {"lib-installer": references["lib-installer"]},
    }
    pods = (await stack.get_json("pods", "-n", NAMESPACE))["items"]
    for _kind, name in SERVICE_WORKLOADS.values():
        mine = [p for p in pods if p["metadata"]["name"].startswith(f"{name}-")]
        assert mine, (name, [p["metadata"]["name"] for p in pods])
        for pod in mine:
            assert pod["status"]["phase"] == "Running", (name, pod["status"])
            images = {c["name"]: c["image"] for c in pod["spec"]["containers"]}
            assert images == expected[name], images
            statuses = pod["status"]["containerStatuses"]
            assert all(s["ready"] and s["restartCount"] == 0 for s in statuses), statuses
            assert pod["spec"]["nodeName"] in {n.name for n in nodes}
    webhook = await stack.workload("webhook")
    assert webhook["status"]["availableReplicas"] == webhook["spec"]["replicas"] == 2
    # The services' processes exist only inside containers (their own mount namespaces), never on the host side.
    for program in ("hami-webhook", "hami-scheduler-extender", "hami-device-plugin", "hami-lib-installer"):
        assert not host_processes_named(f"bin/{program}"), program


async def test_gpu_pod_through_the_deployed_stack_is_refused_at_exactly_its_cap(
    deployed: tuple[DeployedStack, list[RealNode]], deployed_api: k8s.ApiClient, deployed_ns: str
) -> None:
    _stack, [node] = deployed
    core = k8s.CoreV1Api(deployed_api)
    script = (
        "exec 2>&1; cat /etc/ld.so.preload; grep -E ' /etc/ld.so.preload | /usr/local/vgpu' /proc/mounts; "
        "if echo >/etc/ld.so.preload; then echo preload-writable; else echo preload-read-only; fi; "
        "exec cuda_probe init ctx 0 total 0 info alloc 1000m alloc 1 info"
    )
    # Mutated by the webhook pods, which the apiserver called through their Service.
    created = await core.create_namespaced_pod(deployed_ns, gpu_client_pod("capped", node.name, 1000, script))
    assert created.spec.scheduler_name == "hami-scheduler"
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"

    pod = await wait_for_pod(deployed_api, deployed_ns, "capped", finished, what="finished", within=WAIT_S)
    log = await core.read_namespaced_pod_log("capped", deployed_ns, container="main")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    annotations = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == node.name
    # Bound by the extender in the scheduler pod.
    assert annotations[names.BIND_PHASE] == "success"

    # libvgpu.so as the lib-installer DaemonSet put it on the node, through the read-only /etc/ld.so.preload that
    # the device plugin pod's Allocate mounted.
    preload = log.splitlines()[0]
    assert preload == "/usr/local/vgpu/libvgpu.so", log
    assert "ro" in mount_options(log, "/etc/ld.so.preload")
    assert "preload-read-only" in log.splitlines(), log
    installed = node.host_path("/usr/local/vgpu/libvgpu.so")
    assert installed.is_symlink(), installed
    assert os.readlink(installed).startswith("libvgpu.so."), os.readlink(installed)

    probe = probe_results(log)
    assert [r["cmd"] for r in probe] == ["init", "ctx", "total", "info", "alloc", "alloc", "info"], log
    init, ctx, total, info, alloc_cap, alloc_byte, info_after = probe
    assert init["rc"] == ctx["rc"] == total["rc"] == info["rc"] == 0, log
    # The container sees its slice, not the 8192 MiB card.
    assert total["total"] == info["total"] == CAP, log
    assert info["free"] == CAP, log
    # Up to the cap every byte is granted; the next byte is refused.
    assert alloc_cap["rc"] == 0, log
    assert alloc_byte["rc"] == CUDA_OUT_OF_MEMORY, log
    assert (info_after["rc"], info_after["free"]) == (0, 0), log


async def test_a_pod_without_gpu_resources_is_admitted_untouched(
    deployed: tuple[DeployedStack, list[RealNode]], deployed_api: k8s.ApiClient, deployed_ns: str
) -> None:
    _stack, [node] = deployed
    core = k8s.CoreV1Api(deployed_api)
    # The guard (ValidatingWebhookConfiguration, every pod) admits it; the mutating webhook never sees it.
    created = await core.create_namespaced_pod(deployed_ns, gpu_client_pod("plain", node.name, None, "echo plain"))
    assert created.spec.scheduler_name == "default-scheduler"
    pod = await wait_for_pod(deployed_api, deployed_ns, "plain", finished, what="finished", within=WAIT_S)
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert names.DEVICES_ALLOCATED not in (pod["metadata"].get("annotations") or {})
