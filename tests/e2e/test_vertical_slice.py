"""The vertical slice: a GPU pod from the API to a process refused at its cap, through every component.

On a dedicated local control plane (real kube-apiserver and kube-scheduler) the default overlay of the deploy
manifests is applied server-side and the four services run as local processes with their ServiceAccounts'
tokens (tests/e2e/hami_stack.py), so the RBAC of the manifests is what they are allowed. Two GPU nodes are
served by the kubelet stand-in (test double of the kubelet) over the fake NVIDIA driver (test double of the
driver); container commands run under the Allocate environment with the installed libvgpu.so preloaded.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from hami_shared import names
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices, split_slot_id
from hami_stack import DEFAULT_NODES, HamiStack
from kubernetes_asyncio import client as k8s
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE_A, NODE_B = DEFAULT_NODES[0], DEFAULT_NODES[1]
WAIT_S = 150.0
MIB = 1 << 20


@pytest.fixture(scope="module")
def slice_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Not the session cluster: this module installs a webhook with failurePolicy Fail for GPU pods and
    # reconfigures kube-scheduler, which other tests must not see.
    cluster = LocalCluster.start(tmp_path_factory.mktemp("vertical-slice") / "cluster")
    try:
        yield cluster
    finally:
        assert cluster.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(slice_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HamiStack]:
    hami = HamiStack(slice_cluster, tmp_path_factory.mktemp("stack"), DEFAULT_NODES)
    try:
        await hami.start()
        yield hami
    finally:
        await hami.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def api(slice_cluster: LocalCluster) -> AsyncIterator[k8s.CoreV1Api]:
    async with slice_cluster.api_client() as client:
        yield k8s.CoreV1Api(client)


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.CoreV1Api) -> AsyncIterator[str]:
    name = f"slice-{uuid.uuid4().hex[:6]}"
    await api.create_namespace({"metadata": {"name": name}})
    await until(lambda: _has_default_sa(api, name), f"ServiceAccount {name}/default")
    yield name
    await api.delete_collection_namespaced_pod(name, grace_period_seconds=0)


async def _has_default_sa(api: k8s.CoreV1Api, namespace: str) -> bool:
    try:
        await api.read_namespaced_service_account("default", namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def until(check: Callable[[], Awaitable[Any]], what: str, limit_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.5)


def gpu_pod(
    name: str,
    *,
    memory_mib: int,
    command: list[str] | None = None,
    cores: int | None = None,
    gpus: int | None = None,
    annotations: dict[str, str] | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    limits: dict[str, str] = {"nvidia.com/gpumem": str(memory_mib)}
    if cores is not None:
        limits["nvidia.com/gpucores"] = str(cores)
    if gpus is not None:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": "main",
        "image": "localhost/hami-examples:0.1.0",
        "resources": {"limits": limits},
    }
    if command:
        container["command"] = command
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


async def read(api: k8s.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    response = await api.read_namespaced_pod(name, namespace, _preload_content=False)
    pod: dict[str, Any] = json.loads(await response.read())
    return pod


async def wait_phase(api: k8s.CoreV1Api, namespace: str, name: str, *phases: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        pod = await read(api, namespace, name)
        return pod if pod.get("status", {}).get("phase") in phases else None

    pod: dict[str, Any] = await until(check, f"pod {namespace}/{name} in {phases}")
    return pod


def allocated(pod: dict[str, Any]) -> list[list[tuple[str, int, int]]]:
    value = pod["metadata"]["annotations"][names.DEVICES_ALLOCATED]
    return [[(d.uuid, d.usedmem, d.usedcores) for d in container] for container in decode_pod_devices(value)]


def program_report(stack: HamiStack, pod: dict[str, Any], container: str = "main") -> dict[str, Any]:
    node = stack.gpu_nodes[pod["spec"]["nodeName"]]
    log = node.kubelet.log_path(pod["metadata"]["namespace"], pod["metadata"]["name"], container)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, f"no report from the program in {log}:\n{log.read_text()}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def container_samples(url: str, namespace: str) -> dict[tuple[str, str, str], float]:
    """(metric, pod, device_uuid) -> value of the device plugin's per-container samples in ``namespace``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and "pod" in sample.labels:
                out[(sample.name, sample.labels["pod"], sample.labels.get("device_uuid", ""))] = sample.value
    return out


async def scheduling_events(api: k8s.CoreV1Api, namespace: str, name: str) -> list[str]:
    events = await api.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [e.message or "" for e in events.items if e.reason == "FailedScheduling"]


# --- the slice ------------------------------------------------------------------------------------------------


async def test_gpu_pod_is_mutated_scheduled_admitted_and_refused_at_exactly_its_cap(
    stack: HamiStack, api: k8s.CoreV1Api, ns: str
) -> None:
    # The pod names no scheduler and no GPU count: the webhook must add both.
    created = await api.create_namespaced_pod(
        ns, gpu_pod("capped", memory_mib=1000, command=["hami-gpu-alloc", "--chunk-mib=100", "--expect-mib=1000"])
    )
    assert created.spec.scheduler_name == "hami-scheduler"
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"

    pod = await wait_phase(api, ns, "capped", "Succeeded", "Failed")
    annotations = pod["metadata"]["annotations"]
    node = pod["spec"]["nodeName"]
    assert node in stack.gpu_nodes
    assert annotations[names.VGPU_NODE] == node
    assert annotations[names.BIND_PHASE] == "success"
    [[(gpu_uuid, memory, _cores)]] = allocated(pod)
    assert memory == 1000
    assert gpu_uuid in {g.uuid for g in stack.gpu_nodes[node].spec.gpus}

    # What the device plugin gave the container, as the kubelet stand-in received it.
    [allocation] = stack.gpu_nodes[node].kubelet.allocations_of(ns, "capped")
    assert allocation.envs["NVIDIA_VISIBLE_DEVICES"] == gpu_uuid
    assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
    [[slot]] = decode_device_slots(annotations[names.DEVICE_SLOTS])
    assert allocation.device_ids == (slot,)
    assert split_slot_id(slot)[0] == gpu_uuid
    mounted = {m.container_path for m in allocation.mounts}
    assert "/etc/ld.so.preload" in mounted

    # The program, under the installed libvgpu.so, got exactly 1000 MiB and was refused the next chunk.
    report = program_report(stack, pod)
    assert report["device_total_mib"] == 1000
    assert report["allocated_mib"] == 1000
    assert report["refused"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert pod["status"]["phase"] == "Succeeded"


async def test_two_pods_share_one_gpu(stack: HamiStack, api: k8s.CoreV1Api, ns: str) -> None:
    command = ["hami-gpu-alloc", "--chunk-mib=500", "--expect-mib=3000", "--hold=40"]
    binpack = {names.GPU_SCHEDULER_POLICY: "binpack", names.NODE_SCHEDULER_POLICY: "binpack"}
    for name in ("share-a", "share-b"):
        await api.create_namespaced_pod(
            ns, gpu_pod(name, memory_mib=3000, cores=30, command=command, annotations=binpack, node=NODE_A.name)
        )

    # Both programs hold their memory for 40 s: the two pods run on the card at the same time.
    async def both_running() -> list[dict[str, Any]] | None:
        pods = [await read(api, ns, n) for n in ("share-a", "share-b")]
        return pods if all(p.get("status", {}).get("phase") == "Running" for p in pods) else None

    pods = await until(both_running, "share-a and share-b Running together")
    placements = [allocated(p) for p in pods]
    assert placements[0][0][0][0] == placements[1][0][0][0], f"not on one GPU: {placements}"
    assert all(p[0][0][1:] == (3000, 30) for p in placements)
    slots = [stack.gpu_nodes[NODE_A.name].kubelet.allocations_of(ns, n)[0].device_ids for n in ("share-a", "share-b")]
    assert slots[0] != slots[1], "two pods were given the same virtual device"
    # While they hold it, the device plugin's metrics (read from hamicore's accounting files) show each
    # container's slice full: what the Grafana dashboard charts.
    plugin = stack.gpu_nodes[NODE_A.name].device_plugin
    assert plugin.ready_url is not None
    metrics_url = plugin.ready_url.rsplit("/", 1)[0] + "/metrics"

    last: dict[tuple[str, str, str], float] = {}
    gpu = placements[0][0][0][0]

    async def slices_full() -> bool:
        last.update(await asyncio.to_thread(container_samples, metrics_url, ns))
        return all(
            last.get(("hami_vgpu_memory_used_bytes", name, gpu))
            == last.get(("hami_vgpu_memory_limit_bytes", name, gpu))
            == 3000 * MIB
            for name in ("share-a", "share-b")
        )

    try:
        await until(slices_full, "hami_vgpu_memory_used_bytes = limit = 3000 MiB for both pods", limit_s=35)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; per-container samples: {last}") from None
    for name in ("share-a", "share-b"):
        pod = await wait_phase(api, ns, name, "Succeeded", "Failed")
        report = program_report(stack, pod)
        # Each saw its own 3000 MiB slice of the 8192 MiB card and got all of it.
        assert (report["device_total_mib"], report["allocated_mib"]) == (3000, 3000)
        assert pod["status"]["phase"] == "Succeeded"


async def test_pod_too_big_for_any_card_stays_pending_with_our_reason(api: k8s.CoreV1Api, ns: str) -> None:
    await api.create_namespaced_pod(ns, gpu_pod("too-big", memory_mib=100_000, command=["true"]))
    messages = await until(lambda: scheduling_events(api, ns, "too-big"), "a FailedScheduling event")
    assert any("CardInsufficientMemory" in m for m in messages), messages
    pod = await read(api, ns, "too-big")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


async def test_vulkan_opt_in_pod_gets_the_vulkan_env_and_mounts(stack: HamiStack, api: k8s.CoreV1Api, ns: str) -> None:
    created = await api.create_namespaced_pod(
        ns,
        gpu_pod(
            "vulkan",
            memory_mib=2000,
            command=["printenv", "HAMI_VULKAN_ENABLE", "NVIDIA_DRIVER_CAPABILITIES"],
            annotations={names.VULKAN: "true"},
        ),
    )
    env = {e.name: e.value for e in created.spec.containers[0].env or []}
    assert env[names.ENV_VULKAN_ENABLE] == "1"
    assert "graphics" in env[names.ENV_DRIVER_CAPABILITIES].split(",")
    pod = await wait_phase(api, ns, "vulkan", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    node = stack.gpu_nodes[pod["spec"]["nodeName"]]
    [allocation] = node.kubelet.allocations_of(ns, "vulkan")
    mounts = {m.container_path: Path(m.host_path) for m in allocation.mounts}
    manifest = mounts["/etc/vulkan/implicit_layer.d/hami.json"]
    layer = json.loads(manifest.read_text())["layer"]
    assert layer["enable_environment"] == {names.ENV_VULKAN_ENABLE: "1"}
    vk_library = next(path for container_path, path in mounts.items() if container_path.endswith("libvgpu_vk.so"))
    assert vk_library.is_file()
    output = node.kubelet.log_path(ns, "vulkan", "main").read_text().split()
    assert output[0] == "1"


async def test_restarting_each_service_in_turn_loses_no_allocation(
    stack: HamiStack, api: k8s.CoreV1Api, ns: str
) -> None:
    # A long-running pod holding 12000 of node B's 16384 MiB (no command: it "serves" until deleted).
    await api.create_namespaced_pod(ns, gpu_pod("holder", memory_mib=12000, node=NODE_B.name))
    holder = await wait_phase(api, ns, "holder", "Running")
    before = holder["metadata"]["annotations"]
    installed = sorted(p.name for p in (stack.gpu_nodes[NODE_B.name].root / "usr/local/vgpu").iterdir())

    for round_, service in enumerate(("webhook", "extender", "device-plugin", "lib-installer")):
        await stack.restart_service(service)
        holder = await read(api, ns, "holder")
        assert holder["status"]["phase"] == "Running", service
        for key in (names.DEVICES_ALLOCATED, names.DEVICE_SLOTS, names.BIND_PHASE, names.VGPU_NODE):
            assert holder["metadata"]["annotations"][key] == before[key], f"{key} changed after restarting {service}"
        # 8000 MiB would fit node B's card only if the holder's 12000 were forgotten.
        big, small = f"big-{round_}", f"small-{round_}"
        await api.create_namespaced_pod(ns, gpu_pod(big, memory_mib=8000, node=NODE_B.name))
        await api.create_namespaced_pod(ns, gpu_pod(small, memory_mib=4000, node=NODE_B.name))
        small_pod = await wait_phase(api, ns, small, "Running")
        assert allocated(small_pod)[0][0][1] == 4000
        messages = await until(lambda b=big: scheduling_events(api, ns, b), f"FailedScheduling of {big} ({service})")
        assert any("CardInsufficientMemory" in m for m in messages), (service, messages)
        assert not (await read(api, ns, big))["spec"].get("nodeName"), f"{big} was placed after restarting {service}"
        for name in (big, small):
            await api.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    after = sorted(p.name for p in (stack.gpu_nodes[NODE_B.name].root / "usr/local/vgpu").iterdir())
    assert after == installed
