"""hami-device-plugin on a real node (the upstream kubelet's device manager calling it, containerd + runc, the
NVIDIA toolkit's test double) over hamicore's fake NVML (test double of the driver): the node inventory
annotation, and Allocate giving each container exactly the GPUs, limits and mounts the scheduler annotated
(multi-container and init-container pods, pods of different sizes on one GPU, Vulkan and CUDA_DISABLE_CONTROL,
GPUs passed as volume mounts), bind-phase bookkeeping, a clear admission failure when no pod matches, cleanup of
deleted pods' directories, claim recovery after a crash, and GPU health in the Node's allocatable.

Pods here are created already bound and annotated the way the scheduler extender leaves them (the whole path
through the real extender is test_vertical_slice.py's). What a container got is read from inside it (env,
mounts, the files mounted), from the real kubelet's device-manager checkpoint, and from the pod's status.
One control plane, one real node (two 16384 MiB GPUs) and one plugin with the deployed defaults serve the
module; tests of other flags stop it and run their own. The hook directory is filled by the real
hami-lib-installer (``--mode=once``). Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.waiting import node_allocatable, read_pod, wait_for, wait_for_pod
from hami_device_plugin.core.region import parse_region
from hami_device_plugin.core.spec import parse_spec
from hami_shared import names
from hami_shared.node_register import decode_node_devices
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices
from hami_shared.topology import PcieLevel
from hami_shared.topology_codec import decode_node_topology, decode_pair_scores
from hami_stack import CONTAINER_VGPU_DIR, FAKE_DRIVER_LIBRARIES, HAMICORE_BUILD
from kubernetes_asyncio import client as k8s
from real_node_support import container_env, kubelet_device_ids, own_control_plane, pod_log, pod_namespace

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIN = Path(sys.executable).parent
UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"  # the fake driver's default UUIDs
G0, G1 = UUID.format(0), UUID.format(1)
GPUS, SPLIT, MEMORY_MIB = 2, 4, 16384
WAIT_S = 90.0
# Every container prints what it got (env, mounts, the GPUs the toolkit double gave it), then the app containers
# keep running (kubelet keeps a live pod's devices in its checkpoint); init containers end.
REPORT = (
    "exec 2>&1; env; echo LS=$(ls /usr/local/vgpu | tr '\\n' ' '); "
    "[ -f /etc/hami/vgpu.spec ] && echo SPEC_MD5=$(md5sum </etc/hami/vgpu.spec | cut -d' ' -f1); "
    "[ -f /etc/ld.so.preload ] && echo PRELOAD=$(cat /etc/ld.so.preload); "
    "grep -E ' (/usr/local/vgpu[^ ]*|/etc/ld.so.preload|/etc/hami/vgpu.spec|/etc/vulkan/[^ ]*|"
    "/var/run/nvidia-container-devices/[^ ]*) ' /proc/mounts; "
    "grep -h '^FAKE_GPU_UUIDS=' /run/hami-fake-driver/gpus.conf 2>/dev/null; echo reported"
)


@pytest.fixture(scope="module")
def plugin_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "device-plugin") as cluster:
        yield cluster


@dataclass(frozen=True)
class NodeHost:
    """The node's host side: its fake driver's settings and the lib-installer's directory."""

    node: RealNode
    fake_driver: Mapping[str, str]
    hook: Path


def fake_driver(state: Path) -> dict[str, str]:
    return {"FAKE_GPU_COUNT": str(GPUS), "FAKE_GPU_MEMORY_MIB": str(MEMORY_MIB), "FAKE_GPU_STATE_FILE": str(state)}


async def install_hook(hook: Path, log: Path) -> None:
    """hami-lib-installer once, as its init container does: libvgpu.so, ld.so.preload and the Vulkan layer,
    named where containers see the directory."""
    argv = [
        str(BIN / "hami-lib-installer"),
        f"--source={HAMICORE_BUILD}",
        f"--dest={hook}",
        f"--runtime-dir={CONTAINER_VGPU_DIR}",
        "--mode=once",
    ]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120, check=False)
    await asyncio.to_thread(log.write_text, result.stdout + result.stderr)
    assert result.returncode == 0, f"hami-lib-installer failed:\n{result.stdout}{result.stderr}"


async def start_node(
    cluster: LocalCluster, images: NodeImages, index: int, work: Path, *, hardened_toolkit: bool = False
) -> NodeHost:
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    driver = fake_driver(work / "gpu.state")
    config = RealNodeConfig(
        f"dp-node-{index}", index, {"gpu": "on"}, driver, FAKE_DRIVER_LIBRARIES, hardened_toolkit=hardened_toolkit
    )
    node = RealNode(cluster, config, images, work / "logs")
    try:
        await node.start()
        await install_hook(work / "vgpu", work / "logs" / "lib-installer.log")
    except BaseException:
        await node.stop()
        raise
    return NodeHost(node, driver, work / "vgpu")


async def stop_node(host: NodeHost) -> None:
    await host.node.stop()
    left = host.node.leftovers()
    assert not left, f"real node left behind: {left}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gpu_node(
    plugin_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[NodeHost]:
    host = await start_node(plugin_cluster, node_images, next(real_node_indexes), tmp_path_factory.mktemp("dp-node"))
    try:
        yield host
    finally:
        await stop_node(host)


@pytest_asyncio.fixture(loop_scope="module")
async def api(plugin_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with plugin_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def namespace(gpu_node: NodeHost, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"dp-{uuid.uuid4().hex[:6]}", grace_period_seconds=0) as name:
        yield name
    # Pods here name their slots by hand: the next test's may name the same ones, which the kubelet hands out
    # only once this test's pods are gone.
    core = k8s.CoreV1Api(api)

    async def no_pods() -> bool:
        return not (await core.list_namespaced_pod(name)).items

    await wait_for(no_pods, what=f"the pods of {name} gone", within=WAIT_S)


@dataclass
class PluginNode:
    """The real hami-device-plugin process registered with a real node's kubelet."""

    host: NodeHost
    command: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return self.host.node.name

    @property
    def hook(self) -> Path:
        return self.host.hook

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def start_plugin(
    cluster: LocalCluster,
    api: k8s.ApiClient,
    host: NodeHost,
    work: Path,
    *,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> PluginNode:
    """The plugin on ``host``'s kubelet; returns once the kubelet took its registration and the Node
    advertises every slot."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FAKE_", "HAMI_DEVICE_PLUGIN_", "NODE_NAME", "DEVICE_LIST_STRATEGY"))
        },
        "LD_LIBRARY_PATH": str(HAMICORE_BUILD / "fake"),
        **host.fake_driver,
        "NODE_NAME": host.node.name,
        **(extra_env or {}),
    }
    command = [
        str(BIN / "hami-device-plugin"),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--device-plugin-dir={host.node.device_plugin_dir}",
        f"--hook-path={host.hook}",
        f"--split-count={SPLIT}",
        "--metrics-listen=127.0.0.1:0",
        "--allocate-wait=2",
        *extra_args,
    ]
    plugin = PluginNode(host, command, env, work / "device-plugin.log")
    before = host.node.registrations()
    plugin.spawn()
    try:
        await wait_registered(api, plugin, before)
    except BaseException:
        plugin.stop()
        raise
    return plugin


async def wait_registered(api: k8s.ApiClient, plugin: PluginNode, before: int) -> None:
    async def registered() -> bool:
        assert plugin.proc is not None
        assert plugin.proc.poll() is None, f"the device plugin exited:\n{plugin.log_text()[-4000:]}"
        return plugin.host.node.registrations() > before and await _allocatable_is(api, plugin.node, str(GPUS * SPLIT))

    try:
        await wait_for(registered, what=f"{plugin.node} allocatable nvidia.com/gpu={GPUS * SPLIT}", within=WAIT_S)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; plugin log:\n{plugin.log_text()[-4000:]}") from None


async def _allocatable_is(api: k8s.ApiClient, node: str, value: str) -> bool:
    return await node_allocatable(api, node, "nvidia.com/gpu") == value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plugin_node(
    plugin_cluster: LocalCluster, gpu_node: NodeHost, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PluginNode]:
    """The plugin with the deployed defaults, shared by the module's tests (a start costs seconds)."""
    async with plugin_cluster.api_client() as client:
        plugin = await start_plugin(plugin_cluster, client, gpu_node, tmp_path_factory.mktemp("plugin"))
    try:
        yield plugin
    finally:
        plugin.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def plugin_paused(plugin_node: PluginNode, api: k8s.ApiClient) -> AsyncIterator[None]:
    """The shared plugin stopped for a test that runs its own (same socket, same resource); it serves again
    afterwards."""
    plugin_node.stop()
    try:
        yield
    finally:
        before = plugin_node.host.node.registrations()
        plugin_node.spawn()
        await wait_registered(api, plugin_node, before)


@dataclass(frozen=True)
class Ctr:
    name: str
    gpus: Sequence[tuple[str, int, int, int]] = ()  # (uuid, replica, MiB, cores)
    init: bool = False
    env: Sequence[tuple[str, str]] = ()


def bound_pod(name: str, node: str, containers: Sequence[Ctr], *, vulkan: bool = False) -> dict[str, Any]:
    """A pod as the scheduler extender leaves it at bind: on the node, with HAMi's and our annotations. Its
    containers report what they got (REPORT); app containers then keep running."""
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
        script = REPORT if c.init else f"{REPORT}; exec sleep 3600"
        out: dict[str, Any] = {
            "name": c.name,
            "image": GPU_CLIENT_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
        }
        if c.gpus:
            out["resources"] = {"limits": {"nvidia.com/gpu": str(len(c.gpus))}}
        if c.env:
            out["env"] = [{"name": k, "value": v} for k, v in c.env]
        return out

    pod_spec: dict[str, Any] = {
        "nodeName": node,
        "schedulerName": "hami-scheduler",  # what the webhook writes; the plugin serves only its scheduler's pods
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [spec(c) for c in ordered if not c.init],
    }
    if any(c.init for c in ordered):
        pod_spec["initContainers"] = [spec(c) for c in ordered if c.init]
    return {"metadata": {"name": name, "annotations": annotations}, "spec": pod_spec}


def phase_is(phase: str) -> Any:
    return lambda pod: (pod.get("status") or {}).get("phase") == phase


def allocated(pod: dict[str, Any]) -> bool:
    """Running, and the plugin's write-behind patch of the pod has landed."""
    return phase_is("Running")(pod) and pod["metadata"]["annotations"].get(names.BIND_PHASE) == "success"


async def reports(api: k8s.ApiClient, namespace: str, pod: str, containers: Sequence[str]) -> dict[str, str]:
    """Each container's report (its log once it printed ``reported``)."""
    core = k8s.CoreV1Api(api)
    out: dict[str, str] = {}

    async def all_reported() -> bool:
        for container in set(containers) - out.keys():
            log = await pod_log(core, namespace, pod, container)
            if "reported" in log.splitlines():
                out[container] = log
        return len(out) == len(containers)

    await wait_for(all_reported, what=f"{namespace}/{pod}: {', '.join(containers)} reporting", within=WAIT_S)
    return out


def gpu_env(log: str, spec_env: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The container's GPU variables (NVIDIA_*, CUDA_*) that came from Allocate, not from its pod spec."""
    own = {k for k, _ in spec_env}
    return {k: v for k, v in container_env(log).items() if k.startswith(("NVIDIA_", "CUDA_")) and k not in own}


def mounts(log: str) -> dict[str, list[str]]:
    """Mount point -> options, of the /proc/mounts lines the container printed."""
    return {f[1]: f[3].split(",") for f in map(str.split, log.splitlines()) if len(f) == 6 and f[1][:1] == "/"}


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


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def check_hami_mounts(log: str, hook: Path, uid: str, container: str) -> None:
    """The container sees its own directory at /usr/local/vgpu (its region in it), libvgpu.so, ld.so.preload
    naming it and its enforcement spec, the last three read-only, the spec being the host's file."""
    seen = mounts(log)
    assert "ro" not in seen["/usr/local/vgpu"], (container, log)
    for path in ("/usr/local/vgpu/libvgpu.so", "/etc/ld.so.preload", "/etc/hami/vgpu.spec"):
        assert "ro" in seen[path], (container, path, log)
    env = container_env(log)
    assert f"{uid}_{container}.cache" in env["LS"].split(), (container, log)
    assert env["PRELOAD"] == "/usr/local/vgpu/libvgpu.so", (container, log)
    assert env["SPEC_MD5"] == md5(hook / "containers" / f"{uid}_{container}.spec"), (container, log)


async def test_node_inventory_annotation(plugin_node: PluginNode, api: k8s.ApiClient) -> None:
    node = await k8s.CoreV1Api(api).read_node(plugin_node.node)
    devices = decode_node_devices(node.metadata.annotations[names.NODE_REGISTER])
    assert [(d.id, d.index, d.count, d.devmem, d.devcore, d.mode, d.health) for d in devices] == [
        (G0, 0, SPLIT, MEMORY_MIB, 100, "hami-core", True),
        (G1, 1, SPLIT, MEMORY_MIB, 100, "hami-core", True),
    ]
    assert {d.type for d in devices} == {"NVIDIA Fake GPU (test double)"}
    # The kubelet advertises every virtual device the plugin listed.
    assert node.status.capacity["nvidia.com/gpu"] == str(GPUS * SPLIT)


async def test_node_topology_annotations(plugin_node: PluginNode, api: k8s.ApiClient) -> None:
    """The fake driver's default machine: no NVLink, both GPUs under one host bridge (NUMA node 0)."""

    async def published() -> dict[str, str] | None:
        annotations = (await k8s.CoreV1Api(api).read_node(plugin_node.node)).metadata.annotations or {}
        wanted = (names.NODE_SCORE, names.NODE_TOPOLOGY)
        return {k: annotations[k] for k in wanted} if all(k in annotations for k in wanted) else None

    found = await wait_for(published, what="the topology annotations", within=WAIT_S)
    assert decode_pair_scores(found[names.NODE_SCORE]) == {G0: {G1: 30}, G1: {G0: 30}}
    topology = decode_node_topology(found[names.NODE_TOPOLOGY])
    assert [g.uuid for g in topology.gpus] == [G0, G1]
    assert [(link.a, link.b, link.pcie, link.nvlinks) for link in topology.links] == [
        (G0, G1, PcieLevel.HOST_BRIDGE, 0)
    ]


async def test_allocate_gives_each_container_what_was_annotated(
    plugin_node: PluginNode, api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api)
    containers = [
        Ctr("prepare", [(G1, 3, 1000, 10)], init=True),
        Ctr("trainer", [(G0, 1, 3000, 30), (G1, 1, 5000, 0)]),
        Ctr("sidecar"),
        Ctr("logger", [(G0, 2, 2000, 20)], env=[("CUDA_DISABLE_CONTROL", "true")]),
    ]
    await core.create_namespaced_pod(namespace, bound_pod("multi", plugin_node.node, containers))
    pod = await wait_for_pod(api, namespace, "multi", allocated, what="Running with bind-phase=success", within=WAIT_S)
    uid = pod["metadata"]["uid"]
    logs = await reports(api, namespace, "multi", [c.name for c in containers])
    kubelet_gave = kubelet_device_ids(plugin_node.host.node)
    assert {c for u, c in kubelet_gave if u == uid} == {"prepare", "trainer", "logger"}
    # The container without a GPU got nothing of ours.
    assert gpu_env(logs["sidecar"]) == {}, logs["sidecar"]
    assert "/etc/hami/vgpu.spec" not in mounts(logs["sidecar"]), logs["sidecar"]
    for ctr in containers:
        if not ctr.gpus:
            continue
        log = logs[ctr.name]
        assert gpu_env(log, ctr.env) == expected_envs(uid, ctr.name, ctr.gpus), (ctr.name, log)
        # The toolkit double gave the container the driver of exactly its GPUs.
        assert sorted(container_env(log)["FAKE_GPU_UUIDS"].split(",")) == sorted({u for u, *_ in ctr.gpus}), log
        # The logger's CUDA_DISABLE_CONTROL=true reaches it but counts for nothing: no namespace is allowed it
        # (--disable-control-namespaces), as its spec below says.
        check_hami_mounts(log, plugin_node.hook, uid, ctr.name)
        # kubelet got the GPUs the scheduler chose (the trainer reuses the init container's device, as the
        # real device manager does: the rest of its set comes from GetPreferredAllocation)
        device_ids = kubelet_gave[(uid, ctr.name)]
        assert sorted(d.rpartition("-")[0] for d in device_ids) == sorted(u for u, _, _, _ in ctr.gpus), ctr.name
        if ctr.name != "trainer":
            assert set(device_ids) == {f"{u}-{r}" for u, r, _, _ in ctr.gpus}, ctr.name
        cache_dir = plugin_node.hook / "containers" / f"{uid}_{ctr.name}"
        assert cache_dir.is_dir()
        assert cache_dir.stat().st_mode & 0o777 == 0o777
        # The region: its GPUs in the container's limit order.
        region = parse_region((cache_dir / f"{uid}_{ctr.name}.cache").read_bytes())
        assert [(d.uuid, d.limit_bytes, d.sm_limit_percent) for d in region.devices] == [
            (u, mem << 20, cores) for u, _, mem, cores in ctr.gpus
        ], ctr.name
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


async def test_pods_of_different_sizes_on_one_gpu_never_swap(
    plugin_node: PluginNode, api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api)
    sizes = {"small": (0, 2000, 25), "large": (1, 4000, 50), "medium": (2, 3000, 0)}
    # Created together: the kubelet admits them back to back.
    await asyncio.gather(
        *(
            core.create_namespaced_pod(
                namespace, bound_pod(name, plugin_node.node, [Ctr("main", [(G0, replica, mem, cores)])])
            )
            for name, (replica, mem, cores) in sizes.items()
        )
    )
    for name, (replica, mem, cores) in sizes.items():
        log = (await reports(api, namespace, name, ["main"]))["main"]
        env = container_env(log)
        assert (env["CUDA_DEVICE_MEMORY_LIMIT_0"], env["CUDA_DEVICE_SM_LIMIT"]) == (f"{mem}m", str(cores)), name
        assert env["NVIDIA_VISIBLE_DEVICES"] == G0
        pod = await read_pod(api, namespace, name)
        assert pod is not None
        assert kubelet_device_ids(plugin_node.host.node)[(pod["metadata"]["uid"], "main")] == [f"{G0}-{replica}"]


async def test_vulkan_pod_gets_the_layer(plugin_node: PluginNode, api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(api)
    script = f"{REPORT}; echo LAYER_MD5=$(md5sum </etc/vulkan/implicit_layer.d/hami.json | cut -d' ' -f1)"
    body = bound_pod("vk", plugin_node.node, [Ctr("render", [(G1, 0, 4096, 0)])], vulkan=True)
    body["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", script]
    await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(api, namespace, "vk", phase_is("Succeeded"), what="Succeeded", within=WAIT_S)
    log = await pod_log(core, namespace, "vk", "render")
    env = container_env(log)
    assert env["HAMI_VULKAN_ENABLE"] == "1", log
    # The node's installed manifest, read-only, and the layer library next to libvgpu.so.
    assert env["LAYER_MD5"] == md5(plugin_node.hook / "vulkan" / "implicit_layer.d" / "hami.json"), log
    seen = mounts(log)
    assert "ro" in seen["/etc/vulkan/implicit_layer.d/hami.json"], log
    assert "ro" in seen["/usr/local/vgpu/libvgpu_vk.so"], log
    check_hami_mounts(log, plugin_node.hook, pod["metadata"]["uid"], "render")


async def test_volume_mounts_strategy_passes_the_gpus_as_dev_null_mounts(
    plugin_cluster: LocalCluster,
    api: k8s.ApiClient,
    namespace: str,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path: Path,
) -> None:
    """--device-list-strategy=volume-mounts (NVIDIA's), on a node whose toolkit takes device lists only from
    such mounts (docs/security.md, operator item 3): the toolkit learns the GPU set from a read-only /dev/null
    mount per GPU, NVIDIA_VISIBLE_DEVICES names only their directory; limits, interposer and spec are
    unchanged, and the container gets exactly those GPUs from the toolkit."""
    host = await start_node(
        plugin_cluster, node_images, next(real_node_indexes), tmp_path / "node", hardened_toolkit=True
    )
    plugin: PluginNode | None = None
    try:
        plugin = await start_plugin(
            plugin_cluster, api, host, tmp_path / "plugin", extra_args=["--device-list-strategy=volume-mounts"]
        )
        core = k8s.CoreV1Api(api)
        gpus = [(G1, 0, 3000, 30), (G0, 2, 5000, 0)]
        await core.create_namespaced_pod(namespace, bound_pod("mounted", host.node.name, [Ctr("main", gpus)]))
        pod = await wait_for_pod(
            api, namespace, "mounted", allocated, what="Running, bind-phase=success", within=WAIT_S
        )
        uid = pod["metadata"]["uid"]
        log = (await reports(api, namespace, "mounted", ["main"]))["main"]
        assert gpu_env(log) == {
            **expected_envs(uid, "main", gpus),
            "NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices",
        }, log
        seen = mounts(log)
        assert sorted(p for p in seen if p.startswith("/var/run/nvidia-container-devices/")) == sorted(
            f"/var/run/nvidia-container-devices/{u}" for u in (G1, G0)
        ), log
        assert all("ro" in seen[f"/var/run/nvidia-container-devices/{u}"] for u in (G0, G1)), log
        check_hami_mounts(log, host.hook, uid, "main")
        spec = parse_spec((host.hook / "containers" / f"{uid}_main.spec").read_bytes())
        assert [(d.uuid, d.limit_bytes) for d in spec.region.devices] == [(G1, 3000 << 20), (G0, 5000 << 20)]
        # The toolkit double took the list from the mounts and gave the container exactly those GPUs.
        assert sorted(container_env(log)["FAKE_GPU_UUIDS"].split(",")) == sorted((G0, G1)), log
        await core.delete_namespaced_pod("mounted", namespace, grace_period_seconds=0)
    finally:
        if plugin is not None:
            plugin.stop()
        await stop_node(host)


async def test_pod_not_scheduled_by_hami_fails_with_reason(
    plugin_node: PluginNode, api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api)
    body = bound_pod("stray", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])])
    body["metadata"]["annotations"] = {}
    del body["spec"]["schedulerName"]
    await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(api, namespace, "stray", phase_is("Failed"), what="Failed", within=WAIT_S)
    # The real kubelet's admission failure, carrying the plugin's reason.
    assert pod["status"]["reason"] == "UnexpectedAdmissionError"
    assert f"no pod on node {plugin_node.node} is waiting for GPUs" in pod["status"]["message"]
    # the next correctly annotated pod is not disturbed
    await core.create_namespaced_pod(namespace, bound_pod("fine", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
    await wait_for_pod(api, namespace, "fine", allocated, what="Running", within=WAIT_S)


async def test_attack_pod_of_another_scheduler_with_handwritten_placement_is_refused(
    plugin_node: PluginNode, api: k8s.ApiClient, namespace: str
) -> None:
    """Attack (issue 16): a pod of another scheduler, bound by its author (nodeName), with a GPU request,
    bind-phase=allocating and to-allocate=<uuid>,NVIDIA,0,0:; (limit 0 would mean no limit). Allocate refuses
    it with the reason, so the real kubelet never starts it; no directory or region is made for it, and a pod
    our scheduler placed still runs."""
    core = k8s.CoreV1Api(api)
    body = bound_pod("squatter", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])])
    body["metadata"]["annotations"] = {names.BIND_PHASE: "allocating", names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,0,0:;"}
    body["spec"]["schedulerName"] = "other"
    created = await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(api, namespace, "squatter", phase_is("Failed"), what="Failed", within=WAIT_S)
    assert pod["status"]["reason"] == "UnexpectedAdmissionError"
    message = pod["status"]["message"]
    assert f"pod {namespace}/squatter is refused" in message
    assert "spec.schedulerName is 'other'" in message
    assert not (plugin_node.hook / "containers" / f"{created.metadata.uid}_c").exists()
    assert not [s for s in pod["status"].get("containerStatuses") or [] if s.get("containerID")], pod["status"]
    # The same with our scheduler's name but no placement by it (no vgpu-node, 0 MiB): refused as well.
    body["metadata"]["name"] = "squatter-2"
    body["spec"]["schedulerName"] = "hami-scheduler"
    await core.create_namespaced_pod(namespace, body)
    pod = await wait_for_pod(api, namespace, "squatter-2", phase_is("Failed"), what="Failed", within=WAIT_S)
    assert f"pod {namespace}/squatter-2 is refused" in pod["status"]["message"]
    await core.create_namespaced_pod(namespace, bound_pod("fine", plugin_node.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
    await wait_for_pod(api, namespace, "fine", allocated, what="Running", within=WAIT_S)


async def test_container_dirs_of_deleted_pods_are_removed(
    plugin_cluster: LocalCluster,
    api: k8s.ApiClient,
    gpu_node: NodeHost,
    plugin_paused: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    plugin = await start_plugin(
        plugin_cluster, api, gpu_node, tmp_path / "gc", extra_args=["--cleanup-grace=0", "--monitor-interval=0.5"]
    )
    try:
        core = k8s.CoreV1Api(api)
        await core.create_namespaced_pod(namespace, bound_pod("short", plugin.node, [Ctr("c", [(G0, 0, 1000, 0)])]))
        pod = await wait_for_pod(api, namespace, "short", allocated, what="Running", within=WAIT_S)
        directory = plugin.hook / "containers" / f"{pod['metadata']['uid']}_c"
        assert directory.is_dir()
        (plugin.hook / "containers" / "not-ours").mkdir(exist_ok=True)
        await core.delete_namespaced_pod("short", namespace, grace_period_seconds=0)

        async def gone() -> bool:
            return not directory.exists()

        await wait_for(gone, what=f"{directory} removed", within=60)
        assert (plugin.hook / "containers" / "not-ours").is_dir()
    finally:
        plugin.stop()


async def test_restarted_plugin_recovers_claims_from_container_dirs(
    plugin_node: PluginNode, api: k8s.ApiClient, namespace: str
) -> None:
    """A plugin killed after answering Allocate but before its pod patch landed: the container's directory is
    the durable claim, so the next run empties that container's entry (and never hands it out again). The
    kubelet is stopped meanwhile, so it admits nothing while the test sets the crash up."""
    core = k8s.CoreV1Api(api)
    node = plugin_node.host.node
    await node.stop_kubelet()
    try:
        containers = [Ctr("a", [(G0, 0, 1000, 10)]), Ctr("b", [(G0, 1, 2000, 20)])]
        created = await core.create_namespaced_pod(namespace, bound_pod("resumed", plugin_node.node, containers))
        uid = created.metadata.uid
        plugin_node.stop(signal.SIGKILL)
        (plugin_node.hook / "containers" / f"{uid}_a").mkdir(parents=True)  # what Allocate of "a" left behind
        plugin_node.spawn()

        def entry_a_consumed(pod: dict[str, Any]) -> bool:
            annotations = pod["metadata"]["annotations"]
            return bool(annotations[names.DEVICES_TO_ALLOCATE] == f";{G0},NVIDIA,2000,20:;")

        pod = await wait_for_pod(api, namespace, "resumed", entry_a_consumed, what="entry of container a consumed")
        assert pod["metadata"]["annotations"][names.BIND_PHASE] == "allocating"  # b is still to come
        assert names.VGPU_NODE not in (pod["metadata"].get("labels") or {})
        assert "claims_recovered" in plugin_node.log_text()
        await core.delete_namespaced_pod("resumed", namespace, grace_period_seconds=0)
    finally:
        before = node.registrations()
        await node.start_kubelet()
        await wait_registered(api, plugin_node, before)


async def test_unhealthy_gpu_leaves_inventory_and_allocatable_then_returns(
    plugin_cluster: LocalCluster, api: k8s.ApiClient, gpu_node: NodeHost, plugin_paused: None, tmp_path: Path
) -> None:
    events = tmp_path / "nvml-events"
    events.touch()
    plugin = await start_plugin(
        plugin_cluster,
        api,
        gpu_node,
        tmp_path / "health",
        # Unhealthy for 10 s: the real kubelet reports allocatable with its node status, every 5 s here.
        extra_args=["--health-recovery=10", "--health-probe-interval=0.2"],
        extra_env={"FAKE_NVML_EVENTS_FILE": str(events)},
    )
    core = k8s.CoreV1Api(api)

    async def inventory_health() -> list[bool]:
        node = await core.read_node(plugin.node)
        return [d.health for d in decode_node_devices(node.metadata.annotations[names.NODE_REGISTER])]

    try:
        assert await inventory_health() == [True, True]
        with events.open("a") as f:
            f.write("xid 1 79\n")  # "fallen off the bus"

        # The real kubelet takes the unhealthy devices out of allocatable (capacity stays).
        async def gpu1_unhealthy() -> bool:
            return await inventory_health() == [True, False] and await _allocatable_is(api, plugin.node, str(SPLIT))

        await wait_for(gpu1_unhealthy, what="GPU 1 unhealthy in the inventory and allocatable 4", within=60)
        assert (await core.read_node(plugin.node)).status.capacity["nvidia.com/gpu"] == str(GPUS * SPLIT)

        async def recovered() -> bool:
            return await inventory_health() == [True, True] and await _allocatable_is(
                api, plugin.node, str(GPUS * SPLIT)
            )

        await wait_for(recovered, what="GPU 1 healthy again", within=60)
    finally:
        plugin.stop()


async def test_nvswitch_node_publishes_its_nvlinks(
    plugin_cluster: LocalCluster, api: k8s.ApiClient, gpu_node: NodeHost, plugin_paused: None, tmp_path: Path
) -> None:
    """A DGX-style node (the fake driver's NVSwitch machine, H100 NVLink 4 x18): the annotations say so, and an
    edited value is put back at the next interval."""
    plugin = await start_plugin(
        plugin_cluster,
        api,
        gpu_node,
        tmp_path / "topology",
        extra_args=["--register-interval=1"],
        extra_env={"FAKE_GPU_TOPOLOGY": "nvswitch", "FAKE_GPU_COMPUTE_CAPABILITY": "9.0"},
    )
    core = k8s.CoreV1Api(api)

    async def scores() -> dict[str, dict[str, int]] | None:
        value = ((await core.read_node(plugin.node)).metadata.annotations or {}).get(names.NODE_SCORE)
        table = None if value is None else decode_pair_scores(value)
        # two GPUs: one per NUMA node (the fake's halves), NV18 through the switches
        return table if table == {G0: {G1: 1810}, G1: {G0: 1810}} else None

    try:
        await wait_for(scores, what="NV18 pair scores", within=30)
        node = await core.read_node(plugin.node)
        topology = decode_node_topology(node.metadata.annotations[names.NODE_TOPOLOGY])
        assert [(g.nvlink_version, g.nvlink_ports, g.nvswitch, g.numa) for g in topology.gpus] == [
            (4, 18, True, 0),
            (4, 18, True, 1),
        ]
        await core.patch_node(plugin.node, {"metadata": {"annotations": {names.NODE_SCORE: "[]"}}})
        await wait_for(scores, what="the edited scores restored", within=30)
    finally:
        plugin.stop()
