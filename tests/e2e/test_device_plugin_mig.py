"""hami-device-plugin in ``operatingmode: mig`` on a real node (the upstream kubelet's device manager calling it,
containerd + runc, the NVIDIA toolkit's test double) over hamicore's fake NVML with two A100-SXM4-40GB cards (a test
double keeping NVML's MIG rules; its MIG state lives in a file every process shares, so the test reads and changes
it as another NVML client would).

The seed's pod (one container, 2 GPUs x 8000 MiB, reserved by the scheduler as a 2g.10gb at placement 0 of each
card) is created bound and annotated as the scheduler extender leaves it: the plugin creates the two instances at
Allocate and hands the container their MIG UUIDs and nothing of hamicore, and completes the reservation with their
runtime identity; a plugin killed and started again adopts them and reclaims a leftover instance no pod reserves;
once the pod is deleted the reconciler destroys its instances. Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.waiting import node_allocatable, read_pod, wait_for, wait_for_pod
from hami_shared import names
from hami_shared.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami_shared.node_register import decode_node_devices
from hami_stack import FAKE_DRIVER_LIBRARIES, HAMICORE_BUILD
from kubernetes_asyncio import client as k8s
from real_node_support import container_env, own_control_plane, pod_namespace
from test_device_plugin_allocate import (
    Ctr,
    NodeHost,
    PluginNode,
    allocated,
    bound_pod,
    install_hook,
    mounts,
    reports,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPERATOR = ROOT / "services" / "device-plugin" / "tests" / "component" / "nvml_mig_client.py"
UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"  # the fake driver's default UUIDs
G0, G1 = UUID.format(0), UUID.format(1)
GPUS, INSTANCES, MEMORY_MIB = 2, 7, 40960
WAIT_S = 90.0


@pytest.fixture(scope="module")
def mig_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "device-plugin-mig") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mig_node(
    mig_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RealNode, dict[str, str], Path]]:
    work = tmp_path_factory.mktemp("mig-node")
    driver = {
        "FAKE_GPU_COUNT": str(GPUS),
        "FAKE_GPU_NAMES": "NVIDIA A100-SXM4-40GB",
        "FAKE_GPU_MEMORY_MIB": str(MEMORY_MIB),
        "FAKE_GPU_STATE_FILE": str(work / "gpu.state"),
    }
    index = next(real_node_indexes)
    node = RealNode(
        mig_cluster,
        RealNodeConfig(f"mig-node-{index}", index, {"gpu": "on"}, driver, FAKE_DRIVER_LIBRARIES),
        node_images,
        work / "logs",
    )
    try:
        await node.start()
        await install_hook(work / "vgpu", work / "logs" / "lib-installer.log")
        yield node, driver, work
    finally:
        await node.stop()
        assert not node.leftovers(), f"real node left behind: {node.leftovers()}"


@pytest_asyncio.fixture(loop_scope="module")
async def api(mig_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with mig_cluster.api_client() as client:
        yield client


def operator(driver: dict[str, str], *ops: list[Any]) -> list[Any]:
    """NVML calls of another process on the node (an operator's nvidia-smi), through the plugin's NVML driver."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_")},
        "LD_LIBRARY_PATH": str(HAMICORE_BUILD / "fake"),
        "HAMI_TEST_NVML_LIBRARY": str(HAMICORE_BUILD / "fake" / "libnvidia-ml.so.1"),
        **driver,
    }
    proc = subprocess.run(
        [sys.executable, str(OPERATOR), json.dumps(ops)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert all("ok" in r for r in results), results
    return [r["ok"] for r in results]


def instances(driver: dict[str, str]) -> list[tuple[str, str, int, str]]:
    """(card, profile, start, MIG UUID) of every instance on the node, sorted."""
    found = operator(driver, ["mig_instances", "gpu0"], ["mig_instances", "gpu1"])
    return sorted((i["parent_uuid"], i["profile"], i["start"], i["mig_uuid"]) for per in found for i in per)


def plugin_base(
    cluster: LocalCluster, node: RealNode, driver: dict[str, str], work: Path
) -> tuple[dict[str, str], list[str]]:
    """The environment (the fake driver's, none of the test process's own FAKE_/plugin variables) and the start of
    the command line every device plugin of this file runs with."""
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FAKE_", "HAMI_DEVICE_PLUGIN_", "NODE_NAME", "DEVICE_LIST_STRATEGY"))
        },
        "LD_LIBRARY_PATH": str(HAMICORE_BUILD / "fake"),
        **driver,
        "NODE_NAME": node.name,
    }
    command = [
        str(BIN / "hami-device-plugin"),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--device-plugin-dir={node.device_plugin_dir}",
        f"--hook-path={work / 'vgpu'}",
    ]
    return env, command


async def start_mig_plugin(
    cluster: LocalCluster, api: k8s.ApiClient, node: RealNode, driver: dict[str, str], work: Path
) -> PluginNode:
    """The plugin in MIG mode; returns once the Node advertises the register's count of slots per card."""
    env, command = plugin_base(cluster, node, driver, work)
    command += [
        "--mode=mig",
        "--mig-reconcile-interval=0.5",
        "--metrics-listen=127.0.0.1:0",
        "--allocate-wait=2",
    ]
    plugin = PluginNode(NodeHost(node, driver, work / "vgpu"), command, env, work / "device-plugin.log")
    plugin.spawn()

    async def advertised() -> bool:
        assert plugin.proc is not None
        assert plugin.proc.poll() is None, f"the device plugin exited:\n{plugin.log_text()[-4000:]}"
        return await node_allocatable(api, node.name, "nvidia.com/gpu") == str(GPUS * INSTANCES)

    try:
        await wait_for(advertised, what=f"{node.name} allocatable nvidia.com/gpu={GPUS * INSTANCES}", within=WAIT_S)
    except BaseException:
        plugin.stop()
        raise
    return plugin


def seed_pod(node: str) -> dict[str, Any]:
    pod = bound_pod("seed", node, [Ctr("main", [(G0, 0, 9856, 100), (G1, 0, 9856, 100)])])
    pod["metadata"]["annotations"][names.MIG_ALLOCATIONS] = encode_mig_allocations(
        [
            MigAllocation(container_index=0, device_index=k, gpu_uuid=g, profile="2g.10gb", start=0, size=2)
            for k, g in enumerate((G0, G1))
        ]
    )
    return pod


async def test_seed_pod_gets_mig_instances_which_survive_a_restart_and_go_with_the_pod(
    mig_cluster: LocalCluster, mig_node: tuple[RealNode, dict[str, str], Path], api: k8s.ApiClient
) -> None:
    node, driver, work = mig_node
    core = k8s.CoreV1Api(api)
    plugin = await start_mig_plugin(mig_cluster, api, node, driver, work)
    try:
        registered = decode_node_devices((await core.read_node(node.name)).metadata.annotations[names.NODE_REGISTER])
        assert [(d.id, d.mode, d.count, d.devmem) for d in registered] == [
            (G0, "mig", INSTANCES, MEMORY_MIB),
            (G1, "mig", INSTANCES, MEMORY_MIB),
        ]
        assert "2g.10gb" in {p.name for p in registered[0].mig_profiles}

        async with pod_namespace(api, f"mig-{uuid.uuid4().hex[:6]}", grace_period_seconds=0) as namespace:
            await core.create_namespaced_pod(namespace, seed_pod(node.name))
            await wait_for_pod(api, namespace, "seed", allocated, what="Running, bind-phase=success", within=WAIT_S)
            made = instances(driver)
            assert [(g, p, s) for g, p, s, _ in made] == [(G0, "2g.10gb", 0), (G1, "2g.10gb", 0)]
            uuids = [m for *_, m in made]
            log = (await reports(api, namespace, "seed", ["main"]))["main"]
            env = container_env(log)
            assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(uuids), log
            assert not [k for k in env if k.startswith("CUDA_DEVICE_")], log  # no hamicore limits
            assert "/etc/ld.so.preload" not in mounts(log), log
            assert "/usr/local/vgpu/libvgpu.so" not in mounts(log), log

            async def patched() -> bool:
                current = await read_pod(api, namespace, "seed")
                value = ((current or {}).get("metadata") or {}).get("annotations", {}).get(names.MIG_ALLOCATIONS, "")
                return [a.mig_uuid for a in decode_mig_allocations(value)] == uuids

            await wait_for(patched, what="the reservation patched with the MIG UUIDs", within=WAIT_S)

            # the plugin dies; meanwhile a crash's leftover appears: the restarted plugin adopts the pod's instances
            # and reclaims the leftover
            plugin.stop(signal.SIGKILL)
            operator(driver, ["create_mig_instance", "gpu0", 19, 6])
            plugin = await start_mig_plugin(mig_cluster, api, node, driver, work)

            async def reclaimed() -> bool:
                return [m for *_, m in instances(driver)] == uuids

            await wait_for(reclaimed, what="the leftover destroyed, the pod's instances kept", within=WAIT_S)
        # the namespace (and the pod) are gone: the reconciler destroys the instances

        async def freed() -> bool:
            return instances(driver) == []

        await wait_for(freed, what="the pod's instances destroyed", within=WAIT_S)
    finally:
        plugin.stop()


async def start_static_plugin(
    cluster: LocalCluster, api: k8s.ApiClient, node: RealNode, driver: dict[str, str], work: Path, strategy: str
) -> PluginNode:
    """The plugin under ``--mig-strategy``; returns once kubelet took its registration."""
    env, command = plugin_base(cluster, node, driver, work)
    command += [
        f"--mig-strategy={strategy}",
        "--split-count=4",
        "--mig-reconcile-interval=0.5",
        "--metrics-listen=127.0.0.1:0",
    ]
    before = node.registrations()
    plugin = PluginNode(NodeHost(node, driver, work / "vgpu"), command, env, work / f"device-plugin-{strategy}.log")
    plugin.spawn()

    async def registered() -> bool:
        assert plugin.proc is not None
        assert plugin.proc.poll() is None, f"the device plugin exited:\n{plugin.log_text()[-4000:]}"
        return node.registrations() > before

    await wait_for(registered, what=f"{strategy} plugin registered", within=WAIT_S)
    return plugin


def static_pod(name: str, node: str, resource: str) -> dict[str, Any]:
    """A pod bound to ``node`` asking one ``resource`` as any workload does (no HAMi annotation: static MIG devices
    are counted by kubelet alone)."""
    pod = bound_pod(name, node, [Ctr("main")])
    pod["metadata"]["annotations"] = {}
    pod["spec"]["schedulerName"] = "default-scheduler"
    pod["spec"]["containers"][0]["resources"] = {"limits": {resource: "1"}}
    return pod


async def allocatable(api: k8s.ApiClient, node: str, resources: dict[str, str]) -> bool:
    return all([await node_allocatable(api, node, r) == v for r, v in resources.items()])


async def test_static_mixed_and_single_advertise_instances_made_by_hand(
    mig_cluster: LocalCluster, mig_node: tuple[RealNode, dict[str, str], Path], api: k8s.ApiClient
) -> None:
    node, driver, work = mig_node
    core = k8s.CoreV1Api(api)
    for card in ("gpu0", "gpu1"):  # what an earlier test left (nothing, when it passed)
        for left in operator(driver, ["mig_instances", card])[0]:
            operator(driver, ["destroy_mig_instance", card, left["gpu_instance_id"]])
    big, small = operator(
        driver,
        ["set_mig_mode", "gpu0", True],
        ["create_mig_instance", "gpu0", 14, 0],
        ["create_mig_instance", "gpu0", 19, 4],
        ["set_mig_mode", "gpu1", False],
    )[1:3]
    plugin = await start_static_plugin(mig_cluster, api, node, driver, work, "mixed")
    try:
        wanted = {"nvidia.com/gpu": "4", "nvidia.com/mig-2g.10gb": "1", "nvidia.com/mig-1g.5gb": "1"}
        await wait_for(lambda: allocatable(api, node.name, wanted), what=f"allocatable {wanted}", within=WAIT_S)
        registered = decode_node_devices((await core.read_node(node.name)).metadata.annotations[names.NODE_REGISTER])
        assert [d.id for d in registered] == [G1]  # the partitioned card is not offered for sharing
        async with pod_namespace(api, f"mig-{uuid.uuid4().hex[:6]}", grace_period_seconds=0) as namespace:
            await core.create_namespaced_pod(namespace, static_pod("small", node.name, "nvidia.com/mig-1g.5gb"))
            log = (await reports(api, namespace, "small", ["main"]))["main"]
            assert container_env(log)["NVIDIA_VISIBLE_DEVICES"] == small["mig_uuid"], log
            assert "/etc/ld.so.preload" not in mounts(log), log
    finally:
        plugin.stop()

    # single: both cards partitioned alike; nvidia.com/gpu is the instances
    operator(driver, ["destroy_mig_instance", "gpu0", small["gpu_instance_id"]], ["set_mig_mode", "gpu1", True])
    (other,) = operator(driver, ["create_mig_instance", "gpu1", 14, 2])
    plugin = await start_static_plugin(mig_cluster, api, node, driver, work, "single")
    try:
        await wait_for(
            lambda: allocatable(api, node.name, {"nvidia.com/gpu": "2"}), what="allocatable 2 instances", within=WAIT_S
        )
        async with pod_namespace(api, f"mig-{uuid.uuid4().hex[:6]}", grace_period_seconds=0) as namespace:
            await core.create_namespaced_pod(namespace, static_pod("one", node.name, "nvidia.com/gpu"))
            log = (await reports(api, namespace, "one", ["main"]))["main"]
            assert container_env(log)["NVIDIA_VISIBLE_DEVICES"] in {big["mig_uuid"], other["mig_uuid"]}, log
    finally:
        plugin.stop()
        operator(
            driver,
            ["destroy_mig_instance", "gpu0", big["gpu_instance_id"]],
            ["destroy_mig_instance", "gpu1", other["gpu_instance_id"]],
        )
