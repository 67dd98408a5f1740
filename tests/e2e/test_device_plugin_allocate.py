"""hami-device-plugin on the local control plane with the kubelet stand-in (test double) and hamicore's fake NVML
(test double): the node inventory annotation, and Allocate giving each container exactly the GPUs, limits and
mounts the scheduler annotated (multi-container and init-container pods, two pods of different sizes on one GPU,
Vulkan and CUDA_DISABLE_CONTROL, GPUs passed as volume mounts), bind-phase bookkeeping, and a clear failure when
no pod matches.

Pods here are created already bound and annotated the way the scheduler extender leaves them (its own e2e test,
test_device_plugin_e2e.py, goes through the real extender)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.kubelet_standin import AddGpuNode, KubeletStandIn, MountSpec
from e2e_harness.waiting import node_allocatable, wait_for, wait_for_pod
from hami_device_plugin.core.region import parse_region
from hami_device_plugin.core.spec import parse_spec
from hami_shared import names
from hami_shared.node_register import decode_node_devices
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices
from kubernetes_asyncio import client as k8s

ROOT = Path(__file__).resolve().parents[2]
FAKE_NVML_DIR = ROOT / "hamicore" / "build" / "fake"
PLUGIN = Path(sys.executable).with_name("hami-device-plugin")
UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"
G0, G1 = UUID.format(0), UUID.format(1)


@dataclass
class PluginNode:
    kubelet: KubeletStandIn
    proc: subprocess.Popen[bytes]
    hook: Path
    log: Path
    command: list[str]
    env: dict[str, str]

    @property
    def node(self) -> str:
        return self.kubelet.node_name

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def start_plugin_node(
    cluster: LocalCluster,
    add_gpu_node: AddGpuNode,
    api: k8s.ApiClient,
    work: Path,
    *,
    gpus: int = 2,
    split: int = 4,
    memory_mib: int = 16384,
    extra_args: Sequence[str] = (),
    labels: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> PluginNode:
    """A Node served by the kubelet stand-in, with the real hami-device-plugin process registered on it."""
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").is_file():
        pytest.fail(f"hamicore's fake NVML is missing at {FAKE_NVML_DIR}: run `make hamicore` first")
    kubelet = await add_gpu_node(labels={"gpu": "on", **(labels or {})})
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    hook = work / "vgpu"
    log = work / "device-plugin.log"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FAKE_", "HAMI_DEVICE_PLUGIN_", "NODE_NAME", "DEVICE_LIST_STRATEGY"))
        },
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "FAKE_GPU_COUNT": str(gpus),
        "FAKE_GPU_MEMORY_MIB": str(memory_mib),
        "NODE_NAME": kubelet.node_name,
        **(extra_env or {}),
    }
    command = [
        str(PLUGIN),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--device-plugin-dir={kubelet.device_plugin_dir}",
        f"--hook-path={hook}",
        f"--split-count={split}",
        "--metrics-listen=127.0.0.1:0",
        "--allocate-wait=2",
        *extra_args,
    ]
    proc = await asyncio.to_thread(_spawn, command, env, log)
    handle = PluginNode(kubelet, proc, hook, log, command, env)
    try:
        await wait_for(
            lambda: _allocatable_is(api, kubelet.node_name, str(gpus * split)),
            what=f"{kubelet.node_name} allocatable nvidia.com/gpu={gpus * split}",
            within=90,
        )
    except TimeoutError as exc:
        stop_plugin(handle)
        raise AssertionError(f"{exc}; plugin log:\n{handle.log_text()[-4000:]}") from None
    return handle


async def _allocatable_is(api: k8s.ApiClient, node: str, value: str) -> bool:
    return await node_allocatable(api, node, "nvidia.com/gpu") == value


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_plugin(handle: PluginNode) -> None:
    if handle.proc.poll() is None:
        handle.proc.send_signal(signal.SIGTERM)
        try:
            handle.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait()


@pytest.fixture
async def plugin_node(
    local_cluster: LocalCluster, add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, tmp_path: Path
) -> AsyncIterator[PluginNode]:
    handle = await start_plugin_node(local_cluster, add_gpu_node, k8s_api, tmp_path / "plugin")
    try:
        yield handle
    finally:
        stop_plugin(handle)


@dataclass(frozen=True)
class Ctr:
    name: str
    gpus: Sequence[tuple[str, int, int, int]] = ()  # (uuid, replica, MiB, cores)
    init: bool = False
    env: Sequence[tuple[str, str]] = ()


def bound_pod(name: str, node: str, containers: Sequence[Ctr], *, vulkan: bool = False) -> dict[str, Any]:
    """A pod as the scheduler extender leaves it at bind: on the node, with HAMi's and our annotations."""
    ordered = [c for c in containers if c.init] + [c for c in containers if not c.init]
    devices = [[ContainerDevice(uuid=u, usedmem=m, usedcores=c) for u, _, m, c in x.gpus] for x in ordered]
    annotations = {
        names.VGPU_NODE: node,
        names.VGPU_TIME: "1795000000",
        names.DEVICES_TO_ALLOCATE: encode_pod_devices(devices),
        names.DEVICES_ALLOCATED: encode_pod_devices(devices),
        names.DEVICE_SLOTS: encode_device_slots([[f"{u}-{r}" for u, r, _, _ in x.gpus] for x in ordered]),
        names.BIND_PHASE: "allocating",
        names.BIND_TIME: "1795000000",
    }
    if vulkan:
        annotations[names.VULKAN] = "true"

    def spec(c: Ctr) -> dict[str, Any]:
        out: dict[str, Any] = {"name": c.name, "image": "registry.local/cuda:12"}
        if c.gpus:
            out["resources"] = {"limits": {"nvidia.com/gpu": str(len(c.gpus))}}
        if c.env:
            out["env"] = [{"name": k, "value": v} for k, v in c.env]
        return out

    pod_spec: dict[str, Any] = {
        "nodeName": node,
        "schedulerName": "hami-scheduler",  # what the webhook writes; the plugin serves only its scheduler's pods
        "restartPolicy": "Never",
        "containers": [spec(c) for c in ordered if not c.init],
    }
    if any(c.init for c in ordered):
        pod_spec["initContainers"] = [spec(c) for c in ordered if c.init]
    return {"metadata": {"name": name, "annotations": annotations}, "spec": pod_spec}


def running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def allocated(pod: dict[str, Any]) -> bool:
    """Running, and the plugin's write-behind patch of the pod has landed."""
    return running(pod) and pod["metadata"]["annotations"].get(names.BIND_PHASE) == "success"


def expected_envs(uid: str, container: str, gpus: Sequence[tuple[str, int, int, int]]) -> dict[str, str]:
    envs = {
        "NVIDIA_VISIBLE_DEVICES": ",".join(u for u, _, _, _ in gpus),
        "CUDA_DEVICE_SM_LIMIT": str(gpus[0][3]),
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/usr/local/vgpu/{uid}_{container}.cache",
    }
    for i, (_, _, mem, cores) in enumerate(gpus):
        envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{mem}m"
        envs[f"CUDA_DEVICE_SM_LIMIT_{i}"] = str(cores)
    return envs


def expected_mounts(hook: Path, uid: str, container: str, *, preload: bool = True) -> tuple[MountSpec, ...]:
    mounts = [
        MountSpec("/usr/local/vgpu", str(hook / "containers" / f"{uid}_{container}"), False),
        MountSpec("/usr/local/vgpu/libvgpu.so", str(hook / "libvgpu.so"), True),
    ]
    if preload:
        mounts.append(MountSpec("/etc/ld.so.preload", str(hook / "ld.so.preload"), True))
    mounts.append(MountSpec("/etc/hami/vgpu.spec", str(hook / "containers" / f"{uid}_{container}.spec"), True))
    return tuple(mounts)


async def test_node_inventory_annotation(plugin_node: PluginNode, k8s_api: k8s.ApiClient) -> None:
    node = await k8s.CoreV1Api(k8s_api).read_node(plugin_node.node)
    devices = decode_node_devices(node.metadata.annotations[names.NODE_REGISTER])
    assert [(d.id, d.index, d.count, d.devmem, d.devcore, d.mode, d.health) for d in devices] == [
        (G0, 0, 4, 16384, 100, "hami-core", True),
        (G1, 1, 4, 16384, 100, "hami-core", True),
    ]
    assert {d.type for d in devices} == {"NVIDIA Fake GPU (test double)"}


async def test_allocate_gives_each_container_what_was_annotated(
    plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    containers = [
        Ctr("prepare", [(G1, 3, 1000, 10)], init=True),
        Ctr("trainer", [(G0, 1, 3000, 30), (G1, 1, 5000, 0)]),
        Ctr("sidecar"),
        Ctr("logger", [(G0, 2, 2000, 20)], env=[("CUDA_DISABLE_CONTROL", "true")]),
    ]
    await core.create_namespaced_pod(namespace, bound_pod("multi", plugin_node.node, containers))
    pod = await wait_for_pod(k8s_api, namespace, "multi", allocated, what="Running with bind-phase=success")
    uid = pod["metadata"]["uid"]
    allocations = {a.container: a for a in plugin_node.kubelet.allocations_of(namespace, "multi")}
    assert set(allocations) == {"prepare", "trainer", "logger"}
    for ctr in containers:
        if not ctr.gpus:
            continue
        got = allocations[ctr.name]
        assert dict(got.envs) == expected_envs(uid, ctr.name, ctr.gpus), ctr.name
        # The logger's CUDA_DISABLE_CONTROL=true is ignored: no namespace is allowed it (--disable-control-namespaces).
        assert got.mounts == expected_mounts(plugin_node.hook, uid, ctr.name), ctr.name
        # kubelet got the GPUs the scheduler chose (the trainer reuses the init container's device, as kubelet does)
        assert sorted(d.rpartition("-")[0] for d in got.device_ids) == sorted(u for u, _, _, _ in ctr.gpus)
        if ctr.name != "trainer":
            assert set(got.device_ids) == {f"{u}-{r}" for u, r, _, _ in ctr.gpus}, ctr.name
        cache_dir = plugin_node.hook / "containers" / f"{uid}_{ctr.name}"
        assert cache_dir.is_dir()
        assert cache_dir.stat().st_mode & 0o777 == 0o777
        # The region is published before the container starts: its GPUs in the container's limit order.
        region = parse_region((cache_dir / f"{uid}_{ctr.name}.cache").read_bytes())
        assert [(d.uuid, d.limit_bytes, d.sm_limit_percent) for d in region.devices] == [
            (u, mem << 20, cores) for u, _, mem, cores in ctr.gpus
        ], ctr.name
        assert region.processes == ()
        # The spec hamicore enforces (mounted read-only): the same limits, the region as the container sees it.
        spec = parse_spec((plugin_node.hook / "containers" / f"{uid}_{ctr.name}.spec").read_bytes())
        assert [(d.uuid, d.limit_bytes) for d in spec.region.devices] == [(u, mem << 20) for u, _, mem, _ in ctr.gpus]
        assert (spec.region_path, spec.allow_disable_control) == (f"/usr/local/vgpu/{uid}_{ctr.name}.cache", False)
    annotations = pod["metadata"]["annotations"]
    assert annotations[names.BIND_PHASE] == "success"
    assert annotations[names.DEVICES_TO_ALLOCATE] == ";;;;"
    assert annotations[names.DEVICES_ALLOCATED].count("GPU-") == 4  # the permanent record is untouched
    # HAMi's label (its vGPU monitor selects a node's pods by it) comes with the success patch.
    assert pod["metadata"]["labels"][names.VGPU_NODE] == plugin_node.node


async def test_two_pods_on_one_gpu_with_different_sizes_never_swap(
    plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    plugin_node.kubelet.pause_admission()  # both pods wait together, as in a burst
    sizes = {"small": (0, 2000, 25), "large": (1, 4000, 50), "medium": (2, 3000, 0)}
    for name, (replica, mem, cores) in sizes.items():
        await core.create_namespaced_pod(
            namespace, bound_pod(name, plugin_node.node, [Ctr("main", [(G0, replica, mem, cores)])])
        )
    plugin_node.kubelet.resume_admission()
    for name, (_, mem, cores) in sizes.items():
        await wait_for_pod(k8s_api, namespace, name, running, what="Running")
        (allocation,) = plugin_node.kubelet.allocations_of(namespace, name)
        assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{mem}m", name
        assert allocation.envs["CUDA_DEVICE_SM_LIMIT"] == str(cores), name
        assert allocation.envs["NVIDIA_VISIBLE_DEVICES"] == G0


async def test_vulkan_pod_gets_the_layer(plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespaced_pod(
        namespace, bound_pod("vk", plugin_node.node, [Ctr("render", [(G1, 0, 4096, 0)])], vulkan=True)
    )
    await wait_for_pod(k8s_api, namespace, "vk", running, what="Running")
    (allocation,) = plugin_node.kubelet.allocations_of(namespace, "vk")
    mounts = {m.container_path: m for m in allocation.mounts}
    assert mounts["/etc/vulkan/implicit_layer.d/hami.json"].host_path == str(
        plugin_node.hook / "vulkan" / "implicit_layer.d" / "hami.json"
    )
    assert mounts["/usr/local/vgpu/libvgpu_vk.so"].read_only
    assert allocation.envs["HAMI_VULKAN_ENABLE"] == "1"


async def test_volume_mounts_strategy_passes_the_gpus_as_dev_null_mounts(
    local_cluster: LocalCluster, add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """--device-list-strategy=volume-mounts (NVIDIA's): the toolkit learns the GPU set from a read-only /dev/null
    mount per GPU, NVIDIA_VISIBLE_DEVICES names only their directory; limits, interposer and spec are unchanged."""
    handle = await start_plugin_node(
        local_cluster,
        add_gpu_node,
        k8s_api,
        tmp_path / "volume-mounts",
        extra_args=["--device-list-strategy=volume-mounts"],
    )
    try:
        core = k8s.CoreV1Api(k8s_api)
        gpus = [(G1, 0, 3000, 30), (G0, 2, 5000, 0)]
        await core.create_namespaced_pod(namespace, bound_pod("mounted", handle.node, [Ctr("main", gpus)]))
        pod = await wait_for_pod(k8s_api, namespace, "mounted", allocated, what="Running with bind-phase=success")
        uid = pod["metadata"]["uid"]
        (allocation,) = handle.kubelet.allocations_of(namespace, "mounted")
        assert dict(allocation.envs) == {
            **expected_envs(uid, "main", gpus),
            "NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices",
        }
        device_mounts = tuple(m for m in allocation.mounts if m.host_path == "/dev/null")
        assert device_mounts == (
            MountSpec(f"/var/run/nvidia-container-devices/{G1}", "/dev/null", True),
            MountSpec(f"/var/run/nvidia-container-devices/{G0}", "/dev/null", True),
        )
        assert tuple(m for m in allocation.mounts if m not in device_mounts) == expected_mounts(
            handle.hook, uid, "main"
        )
        spec = parse_spec((handle.hook / "containers" / f"{uid}_main.spec").read_bytes())
        assert [(d.uuid, d.limit_bytes) for d in spec.region.devices] == [(G1, 3000 << 20), (G0, 5000 << 20)]
    finally:
        stop_plugin(handle)


async def test_pod_not_scheduled_by_hami_fails_with_reason(
    plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    body = {
        "metadata": {"name": "stray"},
        "spec": {
            "nodeName": plugin_node.node,
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    }
    await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(
        k8s_api, namespace, "stray", lambda p: (p.get("status") or {}).get("phase") == "Failed", what="Failed"
    )
    assert pod["status"]["reason"] == "UnexpectedAdmissionError"
    assert f"no pod on node {plugin_node.node} is waiting for GPUs" in pod["status"]["message"]
    # the next correctly annotated pod is not disturbed
    await core.create_namespaced_pod(namespace, bound_pod("fine", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
    await wait_for_pod(k8s_api, namespace, "fine", running, what="Running")


async def test_attack_pod_of_another_scheduler_with_handwritten_placement_is_refused(
    plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    """Attack (issue 16): a pod of another scheduler, bound by its author (nodeName), with a GPU request,
    bind-phase=allocating and to-allocate=<uuid>,NVIDIA,0,0:; (limit 0 would mean no limit). Allocate refuses
    it with the reason; no directory or region is made for it, and a pod our scheduler placed still runs."""
    core = k8s.CoreV1Api(k8s_api)
    body = {
        "metadata": {
            "name": "squatter",
            "annotations": {names.BIND_PHASE: "allocating", names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,0,0:;"},
        },
        "spec": {
            "schedulerName": "other",
            "nodeName": plugin_node.node,
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    }
    created = await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(
        k8s_api, namespace, "squatter", lambda p: (p.get("status") or {}).get("phase") == "Failed", what="Failed"
    )
    assert pod["status"]["reason"] == "UnexpectedAdmissionError"
    message = pod["status"]["message"]
    assert f"pod {namespace}/squatter is refused" in message
    assert "spec.schedulerName is 'other'" in message
    assert not (plugin_node.hook / "containers" / f"{created.metadata.uid}_c").exists()
    # The same with our scheduler's name but no placement by it (no vgpu-node, 0 MiB): refused as well.
    body["metadata"]["name"] = "squatter-2"
    body["spec"]["schedulerName"] = "hami-scheduler"
    await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(
        k8s_api, namespace, "squatter-2", lambda p: (p.get("status") or {}).get("phase") == "Failed", what="Failed"
    )
    assert f"pod {namespace}/squatter-2 is refused" in pod["status"]["message"]
    await core.create_namespaced_pod(namespace, bound_pod("fine", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
    await wait_for_pod(k8s_api, namespace, "fine", running, what="Running")


async def test_container_dirs_of_deleted_pods_are_removed(
    local_cluster: LocalCluster, add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    handle = await start_plugin_node(
        local_cluster,
        add_gpu_node,
        k8s_api,
        tmp_path / "gc",
        gpus=1,
        extra_args=["--cleanup-grace=0", "--monitor-interval=0.5"],
    )
    try:
        core = k8s.CoreV1Api(k8s_api)
        await core.create_namespaced_pod(namespace, bound_pod("short", handle.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
        pod = await wait_for_pod(k8s_api, namespace, "short", running, what="Running")
        directory = handle.hook / "containers" / f"{pod['metadata']['uid']}_c"
        assert directory.is_dir()
        (handle.hook / "containers" / "not-ours").mkdir()
        await core.delete_namespaced_pod("short", namespace, grace_period_seconds=0)

        async def gone() -> bool:
            return not directory.exists()

        await wait_for(gone, what=f"{directory} removed", within=60)
        assert (handle.hook / "containers" / "not-ours").is_dir()
    finally:
        stop_plugin(handle)


async def test_restarted_plugin_recovers_claims_from_container_dirs(
    plugin_node: PluginNode, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    """A plugin killed after answering Allocate but before its pod patch landed: the container's directory is
    the durable claim, so the next run empties that container's entry (and never hands it out again)."""
    core = k8s.CoreV1Api(k8s_api)
    plugin_node.kubelet.pause_admission()
    containers = [Ctr("a", [(G0, 0, 1000, 10)]), Ctr("b", [(G0, 1, 2000, 20)])]
    created = await core.create_namespaced_pod(namespace, bound_pod("resumed", plugin_node.node, containers))
    uid = created.metadata.uid
    plugin_node.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(plugin_node.proc.wait)
    (plugin_node.hook / "containers" / f"{uid}_a").mkdir(parents=True)  # what Allocate of "a" left behind
    plugin_node.proc = await asyncio.to_thread(_spawn, plugin_node.command, plugin_node.env, plugin_node.log)

    def entry_a_consumed(pod: dict[str, Any]) -> bool:
        annotations = pod["metadata"]["annotations"]
        return annotations[names.DEVICES_TO_ALLOCATE] == f";{G0},NVIDIA,2000,20:;"

    pod = await wait_for_pod(k8s_api, namespace, "resumed", entry_a_consumed, what="entry of container a consumed")
    assert pod["metadata"]["annotations"][names.BIND_PHASE] == "allocating"  # b is still to come
    assert names.VGPU_NODE not in (pod["metadata"].get("labels") or {})
    assert "claims_recovered" in plugin_node.log_text()


async def test_unhealthy_gpu_leaves_inventory_and_allocatable_then_returns(
    local_cluster: LocalCluster, add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, tmp_path: Path
) -> None:
    events = tmp_path / "nvml-events"
    events.touch()
    handle = await start_plugin_node(
        local_cluster,
        add_gpu_node,
        k8s_api,
        tmp_path / "health",
        extra_args=["--health-recovery=2", "--health-probe-interval=0.2"],
        extra_env={"FAKE_NVML_EVENTS_FILE": str(events)},
    )
    core = k8s.CoreV1Api(k8s_api)

    async def inventory_health() -> list[bool]:
        node = await core.read_node(handle.node)
        return [d.health for d in decode_node_devices(node.metadata.annotations[names.NODE_REGISTER])]

    try:
        assert await inventory_health() == [True, True]
        with events.open("a") as f:
            f.write("xid 1 79\n")  # "fallen off the bus"

        async def gpu1_unhealthy() -> bool:
            return await inventory_health() == [True, False] and await _allocatable_is(k8s_api, handle.node, "4")

        await wait_for(gpu1_unhealthy, what="GPU 1 unhealthy in the inventory and allocatable 4", within=60)

        async def recovered() -> bool:
            return await inventory_health() == [True, True] and await _allocatable_is(k8s_api, handle.node, "8")

        await wait_for(recovered, what="GPU 1 healthy again", within=60)
    finally:
        stop_plugin(handle)
