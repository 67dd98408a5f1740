"""The 80-pod burst through the whole stack: 80 pods of 1000 MiB on one node with 8 GPUs of split count 10 are
bound by kube-scheduler + hami-scheduler-extender and admitted by the kubelet stand-in (TEST DOUBLE of the kubelet)
through the real hami-device-plugin (over the fake NVML, TEST DOUBLE of the driver), with no card over-committed by
what the containers really got (kubelet's slot IDs, each once; the injected card and 1000 MiB limit), and every pod
labelled hami.io/vgpu-node once allocated. Services run as in tests/e2e/hami_stack.py (deploy manifests applied,
ServiceAccount tokens)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for
from extender_support import check_no_overcommit, list_pods
from hami_shared import names
from hami_shared.node_register import DeviceInfo
from hami_shared.pod_devices import decode_device_slots
from hami_stack import GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s

pytestmark = pytest.mark.asyncio(loop_scope="module")

BURST = 80
NODE = NodeSpec(
    "burst-node", tuple(GpuSpec(f"GPU-cccccccc-0000-4000-8000-{i:012d}", 16384, "NVIDIA L40S", 142) for i in range(8))
)
SPLIT = 10  # deploy/kustomize/base/device-plugin/device-plugin-config.yaml


@pytest.fixture(scope="module")
def burst_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # A dedicated control plane: the stack installs a webhook and reconfigures kube-scheduler.
    cluster = LocalCluster.start(tmp_path_factory.mktemp("extender-burst") / "cluster")
    try:
        yield cluster
    finally:
        assert cluster.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(burst_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HamiStack]:
    hami = HamiStack(burst_cluster, tmp_path_factory.mktemp("stack"), (NODE,))
    try:
        await hami.start()
        yield hami
    finally:
        await hami.stop()


async def test_burst_is_bound_and_admitted(stack: HamiStack, burst_cluster: LocalCluster) -> None:
    async with burst_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        namespace = f"burst-{uuid.uuid4().hex[:6]}"
        await core.create_namespace({"metadata": {"name": namespace}})

        async def default_sa() -> bool:
            try:
                await core.read_namespaced_service_account("default", namespace)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        await wait_for(default_sa, what="default ServiceAccount", within=60)
        limit = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            pod = {
                "metadata": {"name": f"burst-{i:02d}"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "localhost/hami-examples:0.1.0",
                            "command": ["sleep", "600"],
                            "resources": {"limits": {"nvidia.com/gpumem": "1000"}},
                        }
                    ],
                },
            }
            async with limit:
                await core.create_namespaced_pod(namespace, pod)

        started = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(BURST)))

        async def all_running() -> bool:
            pods = await list_pods(api, namespace)
            failed = [p["metadata"]["name"] for p in pods if p.get("status", {}).get("phase") == "Failed"]
            assert not failed, f"pods failed admission: {failed}"
            return sum(1 for p in pods if p.get("status", {}).get("phase") == "Running") == BURST

        await wait_for(all_running, what=f"{BURST} pods bound and admitted", within=300, interval=0.5)
        elapsed = time.monotonic() - started
        print(f"\n{BURST} pods created, bound and admitted in {elapsed:.1f} s")

        pods = await list_pods(api, namespace)
        inventory = {
            NODE.name: [
                DeviceInfo(id=g.uuid, count=SPLIT, devmem=g.memory_mib, devcore=100, type=g.name, health=True)
                for g in NODE.gpus
            ]
        }
        assert check_no_overcommit(pods, inventory) == {NODE.name: BURST}
        kubelet = stack.gpu_nodes[NODE.name].kubelet
        handed_out: list[str] = []
        on_card: dict[str, int] = {}
        limit_on_card: dict[str, int] = {}
        not_as_chosen: list[str] = []
        for pod in pods:
            name = pod["metadata"]["name"]
            annotations = pod["metadata"]["annotations"]
            assert annotations[names.BIND_PHASE] == "success", name
            [allocation] = kubelet.allocations_of(namespace, name)
            [device_id] = allocation.device_ids
            card = device_id.rsplit("-", 1)[0]
            # What the container really got: the card of the slot kubelet handed out, with a 1000 MiB cap.
            assert allocation.envs["NVIDIA_VISIBLE_DEVICES"] == card, name
            assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m", name
            on_card[card] = on_card.get(card, 0) + 1
            limit_on_card[card] = limit_on_card.get(card, 0) + 1000
            handed_out.append(device_id)
            if [device_id] != list(decode_device_slots(annotations[names.DEVICE_SLOTS])[0]):
                not_as_chosen.append(name)
        assert len(handed_out) == len(set(handed_out)) == BURST
        by_uuid = {g.uuid: g for g in NODE.gpus}
        for card, count in on_card.items():
            assert count <= SPLIT, card
            assert limit_on_card[card] <= by_uuid[card].memory_mib, card
        # Which pending pod kubelet is admitting is the device plugin's inference (GetPreferredAllocation carries
        # no pod): it takes pods in the order they reached the node, kubelet's order, so every pod gets exactly
        # the slot the extender chose, even for pods created in the same second and bound out of order.
        assert not_as_chosen == [], f"pods whose kubelet slot differs from the extender's choice: {not_as_chosen}"

        # HAMi's hami.io/vgpu-node label (HAMi's vGPU monitor selects a node's pods by it), once allocated.
        async def all_labelled() -> bool:
            return all(
                (p["metadata"].get("labels") or {}).get(names.VGPU_NODE) == NODE.name
                for p in await list_pods(api, namespace)
            )

        await wait_for(all_labelled, what=f"{BURST} pods labelled {names.VGPU_NODE}={NODE.name}", within=60)
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
