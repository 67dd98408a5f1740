"""The vertical slice's service-level stories on real nodes: the whole stack (tests/e2e/hami_stack.py: the deploy
manifests applied server-side, the webhook, extender, lib-installer and device plugin with their
ServiceAccounts' tokens) with two real GPU nodes (kubelet + containerd + runc, the NVIDIA toolkit's test double
mounting the fake driver): node A with two 8192 MiB cards, node B with one 16384 MiB card.

What each container was given is read from inside it (its env, its mounts, what hamicore lets cuda_probe see and
allocate) and from the real kubelet's own record (its device-manager checkpoint); what the plugin reports, from
its metrics. The cap itself (1000 MiB, one byte more refused, read-only /etc/ld.so.preload) is
test_real_node_vertical_slice.py's. Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.waiting import read_pod, wait_for, wait_for_pod
from hami_shared import names
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices
from hami_stack import DEFAULT_NODES, HamiStack
from kubernetes_asyncio import client as k8s
from prometheus_client.parser import text_string_to_metric_families
from real_node_support import (
    container_env,
    kubelet_device_ids,
    own_control_plane,
    pod_log,
    pod_namespace,
    probe_results,
    real_node_stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE_A, NODE_B = DEFAULT_NODES[0], DEFAULT_NODES[1]
WAIT_S = 150.0
MIB = 1 << 20
CUDA_OUT_OF_MEMORY = 2
# Print the container's environment, then keep running (the kubelet drops an ended pod's devices from its
# checkpoint, which the tests read).
ENV_AND_WAIT = "exec 2>&1; env; echo reported; exec sleep 3600"


@pytest.fixture(scope="module")
def slice_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Not the session cluster: this module installs a webhook with failurePolicy Fail for GPU pods and
    # reconfigures kube-scheduler, which other tests must not see.
    with own_control_plane(tmp_path_factory, "vertical-slice") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    slice_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        slice_cluster, node_images, real_node_indexes, tmp_path_factory, "slice-stack", DEFAULT_NODES
    ) as hami:
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(slice_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with slice_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"slice-{uuid.uuid4().hex[:6]}") as name:
        yield name


def gpu_pod(
    name: str,
    *,
    memory_mib: int,
    script: str,
    cores: int | None = None,
    gpus: int | None = None,
    annotations: dict[str, str] | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """A GPU pod of the node image's CUDA client; the webhook adds the GPU count (when not given) and the
    scheduler name."""
    limits: dict[str, str] = {"nvidia.com/gpumem": str(memory_mib)}
    if cores is not None:
        limits["nvidia.com/gpucores"] = str(cores)
    if gpus is not None:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": "main",
        "image": GPU_CLIENT_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "resources": {"limits": limits},
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [container]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def phase_in(*phases: str) -> Any:
    return lambda pod: pod.get("status", {}).get("phase") in phases


def allocated(pod: dict[str, Any]) -> list[list[tuple[str, int, int]]]:
    value = pod["metadata"]["annotations"][names.DEVICES_ALLOCATED]
    return [[(d.uuid, d.usedmem, d.usedcores) for d in container] for container in decode_pod_devices(value)]


async def wait_log_line(core: k8s.CoreV1Api, namespace: str, name: str, line: str) -> str:
    async def check() -> str | None:
        log = await pod_log(core, namespace, name)
        return log if any(x == line or x.startswith(line) for x in log.splitlines()) else None

    log: str = await wait_for(check, what=f"{namespace}/{name} printing {line!r}", within=WAIT_S, interval=0.5)
    return log


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


async def delete_and_wait(core: k8s.CoreV1Api, namespace: str, *pods: str) -> None:
    """Delete the pods and wait until they are gone, so their GPU slices are free for the next test."""
    for name in pods:
        await core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)

    async def gone() -> bool:
        left = {p.metadata.name for p in (await core.list_namespaced_pod(namespace)).items}
        return not left & set(pods)

    await wait_for(gone, what=f"pods {', '.join(pods)} gone", within=WAIT_S)


async def scheduling_events(core: k8s.CoreV1Api, namespace: str, name: str) -> list[str] | None:
    """The pod's FailedScheduling messages; None while there is none."""
    events = await core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [e.message or "" for e in events.items if e.reason == "FailedScheduling"] or None


# --- the slice ------------------------------------------------------------------------------------------------


async def test_containers_get_exactly_the_gpus_limits_and_slots_the_extender_chose(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    # One GPU of 3000 MiB / 30 % and two GPUs of 5000 MiB / 20 % each, on node A (two 8192 MiB cards).
    one = gpu_pod("one", memory_mib=3000, cores=30, script=ENV_AND_WAIT, node=NODE_A.name)
    created = await core.create_namespaced_pod(ns, one)
    # The pod names no scheduler and no GPU count: the webhook added both.
    assert created.spec.scheduler_name == "hami-scheduler"
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    await core.create_namespaced_pod(
        ns, gpu_pod("two", memory_mib=5000, cores=20, gpus=2, script=ENV_AND_WAIT, node=NODE_A.name)
    )
    logs = {name: await wait_log_line(core, ns, name, "reported") for name in ("one", "two")}
    kubelet_gave = kubelet_device_ids(stack.gpu_nodes[NODE_A.name].kubelet)
    for name, log in logs.items():
        pod = await read_pod(api, ns, name)
        assert pod is not None
        assert pod["status"]["phase"] == "Running", pod
        annotations = pod["metadata"]["annotations"]
        assert pod["spec"]["nodeName"] == NODE_A.name
        assert (annotations[names.BIND_PHASE], annotations[names.VGPU_NODE]) == ("success", NODE_A.name)
        [devices] = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])
        [slots] = decode_device_slots(annotations[names.DEVICE_SLOTS])
        env = container_env(log)
        # What the container got is the pod's own record: its cards, in order, with their limits.
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(d.uuid for d in devices), (name, env)
        for i, device in enumerate(devices):
            assert env[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] == f"{device.usedmem}m", (name, env)
            assert env[f"CUDA_DEVICE_SM_LIMIT_{i}"] == str(device.usedcores), (name, env)
        assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == f"/usr/local/vgpu/{pod['metadata']['uid']}_main.cache"
        # The real kubelet was steered to the extender's slot IDs: its checkpoint holds exactly them.
        assert sorted(kubelet_gave[(pod["metadata"]["uid"], "main")]) == sorted(slots), name
    [two] = decode_pod_devices(
        (await read_pod(api, ns, "two") or {})["metadata"]["annotations"][names.DEVICES_ALLOCATED]
    )
    assert len({d.uuid for d in two}) == 2
    assert [(d.usedmem, d.usedcores) for d in two] == [(5000, 20), (5000, 20)]
    await delete_and_wait(core, ns, "one", "two")


async def test_two_pods_share_one_gpu_and_the_plugin_reports_each_slice(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    # Each takes its whole 3000 MiB slice (and is refused one byte more), then holds it.
    script = "exec 2>&1; exec cuda_probe init ctx 0 total 0 alloc 3000m alloc 1 hold"
    binpack = {names.GPU_SCHEDULER_POLICY: "binpack", names.NODE_SCHEDULER_POLICY: "binpack"}
    for name in ("share-a", "share-b"):
        await core.create_namespaced_pod(
            ns, gpu_pod(name, memory_mib=3000, cores=30, script=script, annotations=binpack, node=NODE_A.name)
        )
    logs = {name: await wait_log_line(core, ns, name, '{"cmd":"hold"') for name in ("share-a", "share-b")}
    pods = [await read_pod(api, ns, name) for name in ("share-a", "share-b")]
    placements = [allocated(p) for p in pods if p is not None]
    assert placements[0][0][0][0] == placements[1][0][0][0], f"not on one GPU: {placements}"
    assert all(p[0][0][1:] == (3000, 30) for p in placements)
    kubelet_gave = kubelet_device_ids(stack.gpu_nodes[NODE_A.name].kubelet)
    slots = [kubelet_gave[(p["metadata"]["uid"], "main")] for p in pods if p is not None]
    assert slots[0] != slots[1], "two pods were given the same virtual device"
    for name, log in logs.items():
        # Each sees its own 3000 MiB slice of the 8192 MiB card, gets all of it and not one byte more.
        probe = probe_results(log)
        assert [(r["cmd"], r["rc"]) for r in probe[:5]] == [
            ("init", 0),
            ("ctx", 0),
            ("total", 0),
            ("alloc", 0),
            ("alloc", CUDA_OUT_OF_MEMORY),
        ], (name, log)
        assert probe[2]["total"] == 3000 * MIB, (name, log)
    # While they hold it, the device plugin's metrics (read from hamicore's accounting in the containers'
    # regions) show each container's slice full: what the Grafana dashboard charts.
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
        await wait_for(slices_full, what="hami_vgpu_memory_used_bytes = limit = 3000 MiB for both", within=35)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; per-container samples: {last}") from None
    await delete_and_wait(core, ns, "share-a", "share-b")


async def test_pod_too_big_for_any_card_stays_pending_with_our_reason(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    await core.create_namespaced_pod(ns, gpu_pod("too-big", memory_mib=100_000, script="true"))
    messages = await wait_for(lambda: scheduling_events(core, ns, "too-big"), what="a FailedScheduling event")
    assert any("CardInsufficientMemory" in m for m in messages), messages
    pod = await read_pod(api, ns, "too-big")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


# The container prints the webhook's env, the Vulkan layer manifest the plugin mounted and whether the layer
# library is there, and the mounts of both.
VULKAN_SCRIPT = (
    "exec 2>&1; echo HAMI_VULKAN_ENABLE=$HAMI_VULKAN_ENABLE; echo CAPS=$NVIDIA_DRIVER_CAPABILITIES; "
    "echo MANIFEST=$(tr -d '\\n' </etc/vulkan/implicit_layer.d/hami.json); "
    "if [ -f /usr/local/vgpu/libvgpu_vk.so ]; then echo LAYER=file; else echo LAYER=missing; fi; "
    "grep -E ' /etc/vulkan/implicit_layer.d/hami.json | /usr/local/vgpu/libvgpu_vk.so ' /proc/mounts"
)


async def test_vulkan_opt_in_pod_gets_the_vulkan_env_and_layer_in_its_container(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    created = await core.create_namespaced_pod(
        ns, gpu_pod("vulkan", memory_mib=2000, script=VULKAN_SCRIPT, annotations={names.VULKAN: "true"})
    )
    env = {e.name: e.value for e in created.spec.containers[0].env or []}
    assert env[names.ENV_VULKAN_ENABLE] == "1"
    assert "graphics" in env[names.ENV_DRIVER_CAPABILITIES].split(",")
    pod = await wait_for_pod(api, ns, "vulkan", phase_in("Succeeded", "Failed"), what="finished", within=WAIT_S)
    log = await pod_log(core, ns, "vulkan")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    seen = container_env(log)
    assert seen["HAMI_VULKAN_ENABLE"] == "1", log
    assert "graphics" in seen["CAPS"].split(","), log
    layer = json.loads(seen["MANIFEST"])["layer"]
    assert layer["enable_environment"] == {names.ENV_VULKAN_ENABLE: "1"}, log
    assert seen["LAYER"] == "file", log
    # Both come in read-only from the node's installation.
    mounts = {f[1]: f[3].split(",") for f in map(str.split, log.splitlines()) if len(f) == 6 and f[1][:1] == "/"}
    assert "ro" in mounts["/etc/vulkan/implicit_layer.d/hami.json"], log
    assert "ro" in mounts["/usr/local/vgpu/libvgpu_vk.so"], log


async def test_restarting_each_service_in_turn_loses_no_allocation(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    # A long-running pod holding 11000 of its 12000 MiB of node B's 16384 MiB card.
    await core.create_namespaced_pod(
        ns, gpu_pod("holder", memory_mib=12000, script="exec cuda_probe init ctx 0 alloc 11000m hold", node=NODE_B.name)
    )
    await wait_log_line(core, ns, "holder", '{"cmd":"hold"')
    holder = await read_pod(api, ns, "holder")
    assert holder is not None
    before = holder["metadata"]["annotations"]
    container_before = (await core.read_namespaced_pod("holder", ns)).status.container_statuses[0]
    installed = sorted(p.name for p in (stack.gpu_nodes[NODE_B.name].root / "usr/local/vgpu").iterdir())

    for round_, service in enumerate(("webhook", "extender", "device-plugin", "lib-installer")):
        await stack.restart_service(service)
        holder = await read_pod(api, ns, "holder")
        assert holder is not None
        assert holder["status"]["phase"] == "Running", service
        for key in (names.DEVICES_ALLOCATED, names.DEVICE_SLOTS, names.BIND_PHASE, names.VGPU_NODE):
            assert holder["metadata"]["annotations"][key] == before[key], f"{key} changed after restarting {service}"
        # 8000 MiB would fit node B's card only if the holder's 12000 were forgotten.
        big, small = f"big-{round_}", f"small-{round_}"
        await core.create_namespaced_pod(ns, gpu_pod(big, memory_mib=8000, script="true", node=NODE_B.name))
        await core.create_namespaced_pod(
            ns, gpu_pod(small, memory_mib=4000, script="exec cuda_probe init ctx 0 total 0", node=NODE_B.name)
        )
        small_pod = await wait_for_pod(api, ns, small, phase_in("Succeeded", "Failed"), what="done", within=WAIT_S)
        small_log = await pod_log(core, ns, small)
        assert small_pod["status"]["phase"] == "Succeeded", (service, small_pod["status"], small_log)
        assert allocated(small_pod)[0][0][1] == 4000
        assert probe_results(small_log)[-1]["total"] == 4000 * MIB, (service, small_log)
        messages = await wait_for(lambda b=big: scheduling_events(core, ns, b), what=f"FailedScheduling of {big}")
        assert any("CardInsufficientMemory" in m for m in messages), (service, messages)
        assert not (await read_pod(api, ns, big) or {})["spec"].get("nodeName"), f"{big} placed after {service}"
        await delete_and_wait(core, ns, big, small)
    # The holder's container is the one it started with, never restarted.
    container_after = (await core.read_namespaced_pod("holder", ns)).status.container_statuses[0]
    assert (container_after.container_id, container_after.restart_count) == (container_before.container_id, 0)
    after = sorted(p.name for p in (stack.gpu_nodes[NODE_B.name].root / "usr/local/vgpu").iterdir())
    assert after == installed
