"""The vertical slice on a real node: a GPU pod goes through the webhook, kube-scheduler + our extender, the real
kubelet's device manager calling our device plugin, and starts in a real runc container (containerd, with the
NVIDIA toolkit's test double mounting the fake driver), where its CUDA client runs under libvgpu.so loaded
through the mounted /etc/ld.so.preload and is refused at exactly its cap. Then the kubelet restarts and the
plugin registers again.

The stack is tests/e2e/hami_stack.py with ``real_nodes=``: the deploy manifests applied server-side, the webhook,
extender, lib-installer and device plugin as host processes (inside the run's namespaces) with their
ServiceAccounts' tokens. Two real nodes: one with one simulated GPU, one with two (where each container must
see only the GPU it was given, capped). Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import read_pod, wait_for, wait_for_pod
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from hami_stack import GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import (
    finished,
    gpu_client_pod,
    mount_options,
    own_control_plane,
    pod_namespace,
    probe_results,
    real_node_stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

GPU_UUID = "GPU-cccccccc-0000-4000-8000-000000000000"
NODE = NodeSpec("real-gpu-a", (GpuSpec(GPU_UUID, 8192),))
TWO_GPUS = NodeSpec(
    "real-gpu-b",
    (
        GpuSpec("GPU-dddddddd-0000-4000-8000-000000000000", 8192),
        GpuSpec("GPU-dddddddd-0000-4000-8000-000000000001", 8192),
    ),
)
CUDA_OUT_OF_MEMORY = 2  # CUresult CUDA_ERROR_OUT_OF_MEMORY
CUDA_INVALID_DEVICE = 101
WAIT_S = 120.0
CAP = 1000 << 20


@pytest.fixture(scope="module")
def slice_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "real-slice") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    slice_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        slice_cluster, node_images, real_node_indexes, tmp_path_factory, "real-stack", (NODE, TWO_GPUS)
    ) as hami:
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(slice_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with slice_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"real-slice-{uuid.uuid4().hex[:6]}") as name:
        yield name


# The container prints its preload file and mounts, tries to overwrite the preload file, then runs the CUDA
# client: 1000 MiB in one allocation, then one byte more. One stream (2>&1): the runtime timestamps stdout and
# stderr lines as it reads each pipe, so lines of two streams may reach the log out of order.
CAP_SCRIPT = (
    "exec 2>&1; cat /etc/ld.so.preload; grep -E ' /etc/ld.so.preload | /usr/local/vgpu' /proc/mounts; "
    "if echo >/etc/ld.so.preload; then echo preload-writable; else echo preload-read-only; fi; "
    "exec cuda_probe init ctx 0 total 0 info alloc 1000m alloc 1 info"
)


async def test_gpu_pod_in_a_real_container_is_refused_at_exactly_its_cap(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    created = await core.create_namespaced_pod(ns, gpu_client_pod("capped", NODE.name, 1000, CAP_SCRIPT))
    assert created.spec.scheduler_name == "hami-scheduler"
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"

    pod = await wait_for_pod(api, ns, "capped", finished, what="finished", within=WAIT_S)
    log = await core.read_namespaced_pod_log("capped", ns, container="main")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    annotations = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == NODE.name
    assert annotations[names.BIND_PHASE] == "success"

    # libvgpu.so came in through the read-only /etc/ld.so.preload the device plugin's Allocate mounted.
    preload = log.splitlines()[0]
    assert preload.endswith("/libvgpu.so"), log
    assert "ro" in mount_options(log, "/etc/ld.so.preload")
    assert "preload-read-only" in log.splitlines(), log

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

    # The toolkit double saw the pod's GPU container and gave it the fake driver.
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    creates = [json.loads(line) for line in real.toolkit_log.read_text().splitlines()]
    assert [GPU_UUID] in [c.get("devices") for c in creates if c["event"] == "create"]


async def test_kubelet_restart_and_the_plugin_registers_again(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    node = stack.gpu_nodes[NODE.name]
    real = node.kubelet
    assert isinstance(real, RealNode)
    before = real.registrations()
    assert before >= 1
    await real.restart_kubelet()
    # The plugin sees its kubelet socket recreated and registers again; the Node advertises its devices again.
    await wait_for(lambda: _async(real.registrations() > before), what="the device plugin registered again", within=60)
    await stack.wait_node_advertised(node)

    core = k8s.CoreV1Api(api)
    script = "exec cuda_probe init ctx 0 alloc 500m alloc 1"
    await core.create_namespaced_pod(ns, gpu_client_pod("after-restart", NODE.name, 500, script))
    pod = await wait_for_pod(api, ns, "after-restart", finished, what="finished", within=WAIT_S)
    log = await core.read_namespaced_pod_log("after-restart", ns, container="main")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    assert [r["rc"] for r in probe_results(log)] == [0, 0, 0, CUDA_OUT_OF_MEMORY], log


async def _async(value: bool) -> bool:
    return value


async def pod_log(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    try:
        log: str | None = await core.read_namespaced_pod_log(name, namespace, container="main")
    except k8s.ApiException:
        return ""  # not started yet
    return log or ""


async def run_to_cap(api: k8s.ApiClient, namespace: str, name: str, memory_mib: int) -> None:
    """A GPU pod that takes exactly its cap and is refused one byte more."""
    core = k8s.CoreV1Api(api)
    script = f"exec cuda_probe init ctx 0 alloc {memory_mib}m alloc 1"
    await core.create_namespaced_pod(namespace, gpu_client_pod(name, NODE.name, memory_mib, script))
    pod = await wait_for_pod(api, namespace, name, finished, what="finished", within=WAIT_S)
    log = await pod_log(core, namespace, name)
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    assert [r["rc"] for r in probe_results(log)] == [0, 0, 0, CUDA_OUT_OF_MEMORY], log


async def test_device_plugin_and_containerd_restarts_lose_nothing(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    core = k8s.CoreV1Api(api)
    # A pod holding 600 of its 700 MiB for the whole test.
    holder = gpu_client_pod("holder", NODE.name, 700, "exec cuda_probe init ctx 0 alloc 600m hold")
    await core.create_namespaced_pod(ns, holder)

    async def holding() -> bool:
        return '"cmd":"hold"' in await pod_log(core, ns, "holder")

    await wait_for(holding, what="the holder holding its memory", within=WAIT_S)
    before = (await core.read_namespaced_pod("holder", ns)).status.container_statuses[0]

    await stack.restart_service("device-plugin")  # returns once it registered again and the Node advertises it
    await run_to_cap(api, ns, "after-plugin-restart", 300)
    await real.restart_containerd()
    await run_to_cap(api, ns, "after-containerd-restart", 400)

    # The holder's container is the same one, never restarted, and its process still holds (no output after it).
    after = (await core.read_namespaced_pod("holder", ns)).status.container_statuses[0]
    assert (after.container_id, after.restart_count) == (before.container_id, 0)
    assert after.state.running is not None
    log = await pod_log(core, ns, "holder")
    assert [r["cmd"] for r in probe_results(log)] == ["init", "ctx", "alloc", "hold"], log


async def test_on_a_two_gpu_node_each_container_sees_only_its_gpu_capped(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    # 6000 + 6000 MiB cannot share an 8192 MiB card: while both hold, they are on different GPUs.
    script = "exec cuda_probe init ctx 0 total 0 total 1 alloc 6000m alloc 1 hold"
    for name in ("left", "right"):
        await core.create_namespaced_pod(ns, gpu_client_pod(name, TWO_GPUS.name, 6000, script))

    async def both_hold() -> list[str] | None:
        logs = [await pod_log(core, ns, name) for name in ("left", "right")]
        return logs if all('"cmd":"hold"' in log for log in logs) else None

    logs = await wait_for(both_hold, what="both pods holding their memory", within=WAIT_S)
    placed = []
    for name, log in zip(("left", "right"), logs, strict=True):
        pod = await read_pod(api, ns, name)
        assert pod is not None
        [[(gpu, memory, _cores)]] = allocated(pod)
        assert memory == 6000
        placed.append(gpu)
        # One device, its slice of 6000 MiB, all of it granted and not one byte more.
        probe = probe_results(log)
        assert [r["cmd"] for r in probe] == ["init", "ctx", "total", "total", "alloc", "alloc", "hold"], log
        init, ctx, total, second_device, alloc_cap, alloc_byte, _hold = probe
        assert (init["rc"], ctx["rc"], total["rc"], total["total"]) == (0, 0, 0, 6000 << 20), log
        assert second_device["rc"] == CUDA_INVALID_DEVICE, log
        assert alloc_cap["rc"] == 0, log
        assert alloc_byte["rc"] == CUDA_OUT_OF_MEMORY, log
    assert sorted(placed) == sorted(g.uuid for g in TWO_GPUS.gpus), placed
    # The toolkit double gave each container exactly its GPU.
    real = stack.gpu_nodes[TWO_GPUS.name].kubelet
    assert isinstance(real, RealNode)
    seen = [c["devices"] for c in map(json.loads, real.toolkit_log.read_text().splitlines()) if c.get("devices")]
    assert sorted(seen) == sorted([g] for g in placed)
    for name in ("left", "right"):
        await core.delete_namespaced_pod(name, ns, grace_period_seconds=1)


def allocated(pod: dict[str, Any]) -> list[list[tuple[str, int, int]]]:
    value = pod["metadata"]["annotations"][names.DEVICES_ALLOCATED]
    return [[(d.uuid, d.usedmem, d.usedcores) for d in container] for container in decode_pod_devices(value)]
