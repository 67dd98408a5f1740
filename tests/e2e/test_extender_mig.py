"""Dynamic MIG placement by hami-scheduler-extender behind the real kube-scheduler on the local control plane.

A node registers two A100-SXM4-40GB cards in ``mig`` mode (its device plugin's annotation: ``migProfiles`` with
the real placements), another a sharing (``hami-core``) card. The seed's scenario: a 2-GPU x 8000 MiB pod gets
one ``2g.10gb`` on each MIG card (geometry ``2g.10gb x3 + 1g.5gb x1``), recorded in HAMi HEAD's
``hami.io/vgpu-mig-allocations``; a following 20 GB MIG request fits neither card (``CardMigTopologyInfeasible``)
and stays Pending; ``nvidia.com/vgpu-mode`` routes pods to one kind of card or the other; the instance metric
shows what the device plugin created, also after the extender is killed and restarted; deleting the pod frees
the instances and a new 20 GB pod then gets a ``3g.20gb``: the card's geometry switched. No device plugin runs
here (nodes without a kubelet): the test writes what it would (the register annotation, the instances' runtime
identity)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.waiting import wait_for, wait_for_pod
from extender_support import ExtenderProcess, create_gpu_node, gpu_pod, gpus, scheduling_through
from hami_shared import names
from hami_shared.mig import decode_mig_allocations, encode_mig_allocations
from hami_shared.node_register import DeviceInfo, MigPlacement, MigProfile
from hami_shared.pod_devices import decode_pod_devices
from kubernetes_asyncio import client as k8s


def _profile(name: str, memory: int, core: int, size: int, starts: tuple[int, ...]) -> MigProfile:
    return MigProfile(
        name=name,
        memory_mb=memory,
        core=core,
        slice_count=int(name.split("g.")[0]),
        placements=tuple(MigPlacement(start=s, size=size) for s in starts),
    )


# An A100-SXM4-40GB's GPU-instance profiles and placements (nvidia-smi mig -lgipp), as its device plugin registers.
A100_40GB_PROFILES = (
    _profile("1g.5gb", 4864, 14, 1, (0, 1, 2, 3, 4, 5, 6)),
    _profile("1g.10gb", 9856, 14, 2, (0, 2, 4, 6)),
    _profile("2g.10gb", 9856, 28, 2, (0, 2, 4)),
    _profile("3g.20gb", 19968, 42, 4, (0, 4)),
    _profile("4g.20gb", 19968, 56, 4, (0,)),
    _profile("7g.40gb", 40192, 98, 8, (0,)),
)


def mig_cards(prefix: str, count: int) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=f"GPU-{prefix}-{i}",
            index=i,
            count=7,
            devmem=40960,
            devcore=100,
            type="NVIDIA A100-SXM4-40GB",
            mode="mig",
            mig_profiles=A100_40GB_PROFILES,
            health=True,
        )
        for i in range(count)
    ]


@pytest.fixture
async def extender(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[ExtenderProcess]:
    async with scheduling_through(local_cluster, tmp_path / "extender.log") as process:
        yield process


async def test_mig_geometries_routing_and_switching(
    extender: ExtenderProcess, k8s_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:6]
    mig_node, core_node = f"mig-{suffix}", f"core-{suffix}"
    await create_gpu_node(k8s_api, mig_node, mig_cards(mig_node, 2))
    await create_gpu_node(k8s_api, core_node, gpus(core_node, 1, devmem=40960, type="NVIDIA A100-SXM4-40GB"))
    nodes = [mig_node, core_node]
    mig = {names.VGPU_MODE: "mig"}

    async def bound(name: str) -> dict[str, Any]:
        return await wait_for_pod(
            k8s_api, namespace, name, lambda p: bool(p["spec"].get("nodeName")), what="bound", within=120
        )

    try:
        # The seed's scenario: two GPUs of 8000 MiB -> one 2g.10gb on each MIG card.
        await core.create_namespaced_pod(namespace, gpu_pod("seed", nodes, gpus=2, mem=8000, annotations=mig))
        seed = await bound("seed")
        assert seed["spec"]["nodeName"] == mig_node
        annotations = seed["metadata"]["annotations"]
        devices = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])[0]
        assert sorted(d.uuid for d in devices) == [f"GPU-{mig_node}-0", f"GPU-{mig_node}-1"]
        assert all((d.usedmem, d.usedcores) == (10240, 100) for d in devices)
        reserved = decode_mig_allocations(annotations[names.MIG_ALLOCATIONS])
        assert [(a.container_index, a.device_index, a.gpu_uuid, a.profile, a.size) for a in reserved] == [
            (0, k, d.uuid, "2g.10gb", 2) for k, d in enumerate(devices)
        ]
        assert not any(a.realized for a in reserved)

        # vgpu-mode routes both ways; a MIG-only 20 GB pod fits neither MIG card now.
        await core.create_namespaced_pod(
            namespace, gpu_pod("sharing", nodes, mem=4000, annotations={names.VGPU_MODE: "hami-core"})
        )
        await core.create_namespaced_pod(namespace, gpu_pod("twenty", nodes, mem=20000, annotations=mig))
        sharing = await bound("sharing")
        assert sharing["spec"]["nodeName"] == core_node
        assert names.MIG_ALLOCATIONS not in sharing["metadata"]["annotations"]

        async def refused() -> str | None:
            events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=twenty")
            messages = [e.message or "" for e in events.items if e.reason == "FailedScheduling"]
            return next((m for m in messages if "CardMigTopologyInfeasible" in m), None)

        message = await wait_for(refused, what="FailedScheduling with CardMigTopologyInfeasible", within=120)
        assert "2/2 CardMigTopologyInfeasible" in message
        assert "1/1 CardTypeMismatch" in message
        pending = await core.read_namespaced_pod("twenty", namespace)
        assert not pending.spec.node_name

        # The device plugin records the instances it created: the scheduler's metric shows them.
        realized = [a.with_identity(f"MIG-{a.gpu_uuid}-{a.start}", 3 + a.start, 0) for a in reserved]
        await core.patch_namespaced_pod(
            "seed", namespace, {"metadata": {"annotations": {names.MIG_ALLOCATIONS: encode_mig_allocations(realized)}}}
        )

        async def exported() -> list[str] | None:
            lines = [
                line
                for line in (await extender.metrics()).splitlines()
                if line.startswith("hami_node_gpu_mig_instance_info{") and f'node="{mig_node}"' in line
            ]
            return lines if len(lines) == 2 else None

        lines = await wait_for(exported, what="hami_node_gpu_mig_instance_info for the seed pod", within=60)
        for a in realized:
            assert any(
                f'device_uuid="{a.gpu_uuid}"' in line
                and f'mig_uuid="{a.mig_uuid}"' in line
                and 'profile="2g.10gb"' in line
                and f'placement_start="{a.start}"' in line
                and 'placement_size="2"' in line
                and f'gpu_instance_id="{a.gpu_instance_id}"' in line
                for line in lines
            ), a

        # A crash and restart: the extender rebuilds the instances in use from the pods' annotations.
        await extender.kill()
        await extender.start()
        lines_after = await wait_for(exported, what="the instance metric after a restart", within=60)
        assert sorted(lines_after) == sorted(lines)
        still = await core.read_namespaced_pod("twenty", namespace)
        assert not still.spec.node_name

        # Deleting the pod frees both instances (once the extender has seen it go, its instances leave the
        # metric); a new 20 GB request then switches an idle card to 3g.20gb x2.
        await core.delete_namespaced_pod("twenty", namespace, grace_period_seconds=0)
        await core.delete_namespaced_pod("seed", namespace, grace_period_seconds=0)

        async def released() -> bool:
            return not [
                line
                for line in (await extender.metrics()).splitlines()
                if line.startswith("hami_node_gpu_mig_instance_info{") and f'node="{mig_node}"' in line
            ]

        await wait_for(released, what="the seed pod's instances released", within=60)
        await core.create_namespaced_pod(namespace, gpu_pod("after", nodes, mem=20000, annotations=mig))
        after = await bound("after")
        assert after["spec"]["nodeName"] == mig_node
        after_annotations = after["metadata"]["annotations"]
        switched = decode_mig_allocations(after_annotations[names.MIG_ALLOCATIONS])
        assert [(a.profile, a.size) for a in switched] == [("3g.20gb", 4)]
        assert decode_pod_devices(after_annotations[names.DEVICES_ALLOCATED])[0][0].usedmem == 20480

        # A pod without vgpu-mode may use either kind: the MIG cards still have room, the sharing card too.
        await core.create_namespaced_pod(namespace, gpu_pod("either", nodes, mem=4000))
        assert (await bound("either"))["spec"]["nodeName"] in nodes
    finally:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        for node in nodes:
            await core.delete_node(node)
