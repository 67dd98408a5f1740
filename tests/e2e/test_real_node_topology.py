"""Topology-aware placement through the whole stack on a real node: a ``topology-aware`` pod asking for 4 GPUs of
an 8-GPU NVSwitch machine gets, inside its container, exactly the 4 GPUs HAMi's topology policy prescribes.

The chain: the device plugin reads the interconnect from NVML (the fake driver's NVSwitch machine,
FAKE_GPU_TOPOLOGY=nvswitch: every pair of GPUs over all their NVLinks, the PCIe tree splitting the GPUs in two
NUMA halves) and publishes it on the Node (``hami.io/node-nvidia-topology``); the webhook sends the pod to
kube-scheduler + our extender, which picks the set from that published topology; the real kubelet's device manager
asks our device plugin (GetPreferredAllocation, Allocate), and the pod's runc container gets the set through the
NVIDIA toolkit's test double, where a CUDA client lists the devices it sees.

Two cards of the first NUMA half are taken whole first (pinned pods of 100 cores), so the usage order and the
topology disagree: the six free cards are equally empty, and spread or binpack alone would break the tie by card
index. The simulated-node version of this scenario (no kubelet, no device plugin): test_extender_topology.py.
Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for, wait_for_pod
from extender_support import best_by_brute_force
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from hami_shared.topology_codec import decode_node_topology
from hami_stack import GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import (
    kubelet_device_ids,
    own_control_plane,
    pod_log,
    pod_namespace,
    probe_results,
    real_node_stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# A DGX A100-style node: 8 SXM cards (compute capability 8.0: NVLink 3, 12 ports each, all to the NVSwitches).
NODE = NodeSpec(
    "real-nvswitch",
    tuple(GpuSpec(f"GPU-abcdef00-0000-4000-8000-{i:012d}", 8192) for i in range(8)),
    topology="nvswitch",
)
NVLINK3_PORTS = 12
TAKEN = (0, 1)  # taken whole before the topology-aware pod: two cards of the first NUMA half
WANT_GPUS = 4
WAIT_S = 120.0

# What the container sees: the devices a CUDA client lists (cuDeviceGetCount and each one's UUID, under
# libvgpu.so), then it keeps running: kubelet drops a terminated pod's devices from its checkpoint, which the
# test reads.
REPORT_SCRIPT = "exec 2>&1; cuda_probe init devices; echo reported; exec sleep 3600"


@pytest.fixture(scope="module")
def topology_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "real-topology") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    topology_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        topology_cluster, node_images, real_node_indexes, tmp_path_factory, "real-topology-stack", (NODE,)
    ) as hami:
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(topology_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with topology_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"real-topology-{uuid.uuid4().hex[:6]}") as name:
        yield name


def gpu_pod(name: str, limits: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    """A pod of the GPU-client image on the node, reporting what it sees (REPORT_SCRIPT)."""
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE.name},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": GPU_CLIENT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", REPORT_SCRIPT],
                    "resources": {"limits": limits},
                }
            ],
        },
    }


def allocated_cards(pod: dict[str, Any]) -> list[str]:
    """The cards of the pod's only container in its ``hami.io/vgpu-devices-allocated``, in order."""
    [container] = decode_pod_devices(pod["metadata"]["annotations"][names.DEVICES_ALLOCATED])
    return [device.uuid for device in container]


async def reported_devices(core: k8s.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The container's ``devices`` line (cuda_probe), once it printed it."""

    async def report() -> dict[str, Any] | None:
        log = await pod_log(core, namespace, name)
        if "reported" not in log.splitlines():
            return None
        probe = probe_results(log)
        assert [r["cmd"] for r in probe] == ["init", "devices"], log
        assert all(r["rc"] == 0 for r in probe), log
        return probe[1]

    return await wait_for(report, what=f"{name} reporting its devices", within=WAIT_S)


async def test_topology_aware_pod_sees_exactly_the_prescribed_four_gpus(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    uuids = [g.uuid for g in NODE.gpus]

    # The device plugin published the NVSwitch machine it read from NVML: every card on the switches with all
    # its NVLink 3 ports, the first half on NUMA node 0, the second on node 1, every pair linked.
    node = await core.read_node(NODE.name)
    topology = decode_node_topology(node.metadata.annotations[names.NODE_TOPOLOGY])
    assert [(g.uuid, g.numa, g.nvlink_version, g.nvlink_ports, g.nvswitch) for g in topology.gpus] == [
        (u, int(i >= len(uuids) // 2), 3, NVLINK3_PORTS, True) for i, u in enumerate(uuids)
    ]
    assert sorted((link.a, link.b, link.nvlinks) for link in topology.links) == sorted(
        (a, b, NVLINK3_PORTS) for i, a in enumerate(uuids) for b in uuids[i + 1 :]
    )

    # Two cards taken whole (100 cores: nothing else fits on them), pinned by UUID.
    for card in TAKEN:
        pin = {names.USE_GPUUUID: uuids[card]}
        limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000", "nvidia.com/gpucores": "100"}
        await core.create_namespaced_pod(ns, gpu_pod(f"tenant-{card}", limits, pin))
    for card in TAKEN:
        tenant = await wait_for_pod(
            api, ns, f"tenant-{card}", lambda p: bool(p["spec"].get("nodeName")), what="bound", within=WAIT_S
        )
        assert allocated_cards(tenant) == [uuids[card]]

    free = [u for i, u in enumerate(uuids) if i not in TAKEN]
    want = best_by_brute_force(topology, free, WANT_GPUS)
    # NVLink ties every pair, so the PCIe term decides: the untouched NUMA half. The free cards are equally
    # empty, so spread or binpack alone would take them in card index order (hami_scheduler_extender.core.fit):
    # not this set.
    assert want == set(uuids[len(uuids) // 2 :])
    assert want != set(free[:WANT_GPUS])

    policy = {names.GPU_SCHEDULER_POLICY: "topology-aware"}
    limits = {"nvidia.com/gpu": str(WANT_GPUS), "nvidia.com/gpumem": "1000"}
    await core.create_namespaced_pod(ns, gpu_pod("four", limits, policy))
    tenant_reports = [reported_devices(core, ns, f"tenant-{card}") for card in TAKEN]
    four_report, *tenant_seen = await asyncio.gather(reported_devices(core, ns, "four"), *tenant_reports)

    four = await wait_for_pod(api, ns, "four", lambda p: bool(p["spec"].get("nodeName")), what="bound")
    assert four["spec"]["nodeName"] == NODE.name
    assert four["metadata"]["annotations"][names.BIND_PHASE] == "success"
    cards = allocated_cards(four)
    assert len(cards) == WANT_GPUS, cards
    assert set(cards) == want, cards

    # Inside the container: exactly those four GPUs, as CUDA lists them (the toolkit double gives a container
    # its GPUs in node order).
    assert (four_report["count"], four_report["uuids"]) == (WANT_GPUS, sorted(want)), four_report
    # And each tenant sees only its own card.
    for card, seen in zip(TAKEN, tenant_seen, strict=True):
        assert (seen["count"], seen["uuids"]) == (1, [uuids[card]]), seen

    # The kubelet's device manager gave the container one device (slot) of each of those cards, and the
    # toolkit double applied exactly them.
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    device_ids = kubelet_device_ids(real)[(four["metadata"]["uid"], "main")]
    assert sorted(d.rsplit("-", 1)[0] for d in device_ids) == sorted(want), device_ids
    creates = [json.loads(line) for line in real.toolkit_log.read_text().splitlines()]
    gave = [c["devices"] for c in creates if c["event"] == "create" and c.get("devices")]
    assert sorted(sorted(d) for d in gave) == sorted([sorted(want), *([uuids[card]] for card in TAKEN)]), gave
