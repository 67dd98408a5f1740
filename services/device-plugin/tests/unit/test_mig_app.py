"""Dynamic MIG wired into the plugin (app/mig.py through app/plugin.py's Allocate), over the in-memory MIG driver
double (tests/mig_double.py, NVML's constraints on A100-40GB cards) and a pod API double that applies the plugin's
patches: the seed's pod (2 GPUs x 2g.10gb) gets its two instances and only their MIG UUIDs, the reservation is patched
with the runtime identity, a retried Allocate adopts instead of creating, a partial creation is rolled back, a restart
adopts what live pods hold and reclaims the rest, the reconciler destroys the instances of pods gone, and nothing is
touched while the pods cannot be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hami_device_plugin.app.plugin import AllocateError
from hami_device_plugin.core.inventory import Gpu
from hami_shared import names
from hami_shared.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami_shared.node_register import encode_node_devices
from mig_double import MigDriverDouble
from mig_node import MIG, NODE, MigNode
from podspecs import Ctr, pod_json

G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4000-8000-111111111111"
GPUS = (
    Gpu(uuid=G0, index=0, name="NVIDIA A100-SXM4-40GB", memory_mib=40960),
    Gpu(uuid=G1, index=1, name="NVIDIA A100-SXM4-40GB", memory_mib=40960),
)


def mig_pod(name: str, reservations: list[tuple[str, str, int, int]], *, uid: str | None = None) -> dict[str, Any]:
    """A pod of one container holding one MIG device per (GPU, profile, start, size), as the extender leaves it:
    the parent GPU with the profile's memory and 100 cores, and the reservations."""
    allocations = [
        MigAllocation(container_index=0, device_index=k, gpu_uuid=g, profile=p, start=s, size=z)
        for k, (g, p, s, z) in enumerate(reservations)
    ]
    return pod_json(
        name,
        uid=uid or f"uid-{name}",
        node=NODE,
        containers=[Ctr("main", [(g, k, 9856, 100) for k, (g, _, _, _) in enumerate(reservations)])],
        extra_annotations={names.MIG_ALLOCATIONS: encode_mig_allocations(allocations)},
    )


def Node(tmp: Path, driver: MigDriverDouble, pods: list[dict[str, Any]], *, hamicore: bool = False) -> Any:
    """The plugin of a MIG-mode node over the driver double (the node's parts are the test's to inspect)."""
    return MigNode(tmp, driver, pods, gpus=GPUS, hamicore=hamicore)


def mig_cards(*uuids: str) -> MigDriverDouble:
    driver = MigDriverDouble({G0: True, G1: True})
    for uuid in uuids:
        driver.cards[uuid].mig = True
    return driver


SEED = [(G0, "2g.10gb", 0, 2), (G1, "2g.10gb", 0, 2)]


async def test_the_seed_pod_gets_two_2g_10gb_instances_and_only_their_uuids(tmp_path: Path) -> None:
    node = Node(tmp_path, mig_cards(), [mig_pod("seed", SEED)])
    node.list_pods()
    await node.mig.adopt()
    assert node.driver.cards[G0].mig  # idle cards: MIG mode turned on at start
    assert node.driver.cards[G1].mig
    register = json.loads(encode_node_devices(node.mig.register_devices(GPUS, MIG)))
    assert [(d["id"], d["mode"], d["count"], d["devmem"]) for d in register] == [
        (G0, "mig", 7, 40960),
        (G1, "mig", 7, 40960),
    ]

    # kubelet sees the register's count of slots per card (the extender picks slots below it)
    assert [d.id for d in node.state.health.devices()] == [f"{g}-{n}" for g in (G0, G1) for n in range(7)]

    answer = await node.state.allocate([f"{G0}-0", f"{G1}-1"])

    assert node.driver.instances() == [(G0, "2g.10gb", 0), (G1, "2g.10gb", 0)]
    given = [i.mig_uuid for c in (G0, G1) for i in node.driver.mig_instances(c)]
    assert dict(answer.envs) == {names.ENV_VISIBLE_DEVICES: ",".join(given)}  # no limits, no hamicore
    assert answer.mounts == ()
    assert answer.region is None
    await node.flush()
    reserved = decode_mig_allocations(node.api.pods["seed"]["metadata"]["annotations"][names.MIG_ALLOCATIONS])
    assert [(a.gpu_uuid, a.start, a.mig_uuid, a.compute_instance_id) for a in reserved] == [
        (G0, 0, given[0], 0),
        (G1, 0, given[1], 0),
    ]
    assert node.api.pods["seed"]["metadata"]["annotations"][names.BIND_PHASE] == "success"
    assert sorted((s["pod"], s["container"], s["vdevice_index"], s["mig_uuid"]) for s in node.info_samples()) == [
        ("seed", "main", "0", given[0]),
        ("seed", "main", "1", given[1]),
    ]
    assert {s["profile"] for s in node.info_samples()} == {"2g.10gb"}
    assert {s["device_uuid"] for s in node.info_samples()} == {G0, G1}


async def test_an_allocate_retried_after_a_restart_adopts_the_instances_created_before(tmp_path: Path) -> None:
    driver = mig_cards(G0, G1)
    node = Node(tmp_path, driver, [mig_pod("seed", SEED)])
    node.list_pods()
    await node.mig.adopt()
    first = await node.state.allocate([f"{G0}-0", f"{G1}-1"])
    creates = [c for c in driver.calls if c[0] == "create"]
    # the plugin dies before its patches are written: kubelet retries Allocate with a new plugin
    restarted = Node(tmp_path, driver, list(node.api.pods.values()))
    restarted.list_pods()
    await restarted.mig.adopt()
    assert len(restarted.mig.managed()) == 2  # the unpatched reservations still own the instances
    again = await restarted.state.allocate([f"{G0}-0", f"{G1}-1"])
    assert again.envs == first.envs
    assert [c for c in driver.calls if c[0] == "create"] == creates


async def test_a_partial_creation_is_rolled_back_and_the_pod_marked_failed(tmp_path: Path) -> None:
    driver = mig_cards(G0, G1)
    driver.fail_create_at = 1  # the second instance: NVML runs out of resources
    node = Node(tmp_path, driver, [mig_pod("seed", SEED)])
    node.list_pods()
    await node.mig.adopt()
    with pytest.raises(AllocateError, match="Insufficient Resources"):
        await node.state.allocate([f"{G0}-0", f"{G1}-1"])
    assert driver.instances() == []
    assert node.mig.managed() == frozenset()
    await node.flush()
    assert node.api.pods["seed"]["metadata"]["annotations"][names.BIND_PHASE] == "failed"


async def test_a_reservation_overlapping_another_pods_instance_is_refused_with_the_pod(tmp_path: Path) -> None:
    node = Node(
        tmp_path,
        mig_cards(G0, G1),
        [mig_pod("first", [(G0, "3g.20gb", 0, 4)]), mig_pod("second", [(G0, "2g.10gb", 2, 2)])],
    )
    node.list_pods()
    await node.mig.adopt()
    await node.state.allocate([f"{G0}-0"])
    with pytest.raises(AllocateError, match="pod default/first"):
        await node.state.allocate([f"{G0}-0"])
    assert node.driver.instances() == [(G0, "3g.20gb", 0)]


async def test_a_sibling_container_s_instance_is_never_taken_for_a_leftover(tmp_path: Path) -> None:
    allocations = [
        MigAllocation(container_index=0, device_index=0, gpu_uuid=G0, profile="1g.5gb", start=0, size=1),
        MigAllocation(container_index=1, device_index=0, gpu_uuid=G0, profile="2g.10gb", start=0, size=2),  # overlaps
    ]
    two = pod_json(
        "two",
        uid="uid-two",
        node=NODE,
        containers=[Ctr("a", [(G0, 0, 4864, 100)]), Ctr("b", [(G0, 1, 9856, 100)])],
        extra_annotations={names.MIG_ALLOCATIONS: encode_mig_allocations(allocations)},
    )
    node = Node(tmp_path, mig_cards(G0), [two])
    node.list_pods()
    await node.mig.adopt()
    await node.state.allocate([f"{G0}-0"])
    with pytest.raises(AllocateError, match="pod default/two"):
        await node.state.allocate([f"{G0}-1"])
    assert node.driver.instances() == [(G0, "1g.5gb", 0)]


async def test_a_restart_adopts_live_instances_reclaims_leftovers_and_the_reconciler_frees_pods_gone(
    tmp_path: Path,
) -> None:
    driver = mig_cards(G0, G1)
    node = Node(tmp_path, driver, [mig_pod("seed", SEED), mig_pod("other", [(G1, "1g.5gb", 6, 1)])])
    node.list_pods()
    await node.mig.adopt()
    await node.state.allocate([f"{G0}-0", f"{G1}-1"])
    await node.state.allocate([f"{G1}-2"])
    await node.flush()
    leftover = driver.create_mig_instance(G0, 19, 6)  # a crash between create and patch of a pod since deleted
    del node.api.pods["other"]  # deleted while the plugin was down

    restarted = Node(tmp_path, driver, list(node.api.pods.values()))
    restarted.list_pods()
    await restarted.mig.adopt()
    assert driver.instances() == [(G0, "2g.10gb", 0), (G1, "2g.10gb", 0)]
    assert ("destroy", G0, str(leftover.gpu_instance_id)) in driver.calls
    assert len(restarted.mig.managed()) == 2
    assert {s["pod"] for s in restarted.info_samples()} == {"seed"}

    await restarted.mig.reconcile()  # the pod still runs: nothing changes
    assert len(driver.instances()) == 2
    restarted.cache.apply("DELETED", restarted.api.pods["seed"])
    await restarted.mig.reconcile()
    assert driver.instances() == []
    assert restarted.info_samples() == []


async def test_nothing_is_touched_while_the_pods_cannot_be_read(tmp_path: Path) -> None:
    driver = mig_cards(G1)
    driver.create_mig_instance(G1, 0, 0)
    node = Node(tmp_path, driver, [])
    await node.mig.adopt()  # the pod list is not in
    assert not node.mig.adopted
    assert driver.calls == [("create", G1, "7g.40gb", "0")]
    node.list_pods()
    await node.mig.adopt()
    assert node.mig.adopted
    assert driver.instances() == []
    assert driver.cards[G0].mig


async def test_the_operator_can_ask_for_hamicore_inside_mig_instances(tmp_path: Path) -> None:
    node = Node(tmp_path, mig_cards(G0), [mig_pod("one", [(G0, "1g.10gb", 2, 2)])], hamicore=True)
    node.list_pods()
    await node.mig.adopt()
    answer = await node.state.allocate([f"{G0}-0"])
    (instance,) = node.driver.mig_instances(G0)
    assert answer.envs[names.ENV_VISIBLE_DEVICES] == instance.mig_uuid
    assert answer.envs[f"{names.ENV_MEMORY_LIMIT}_0"] == "9856m"
    assert answer.region is not None


async def test_a_pod_scheduled_for_sharing_is_refused_on_a_mig_node_with_what_to_change(tmp_path: Path) -> None:
    shared = pod_json("shared", uid="uid-shared", node=NODE, containers=[Ctr("main", [(G0, 0, 1000, 10)])])
    node = Node(tmp_path, mig_cards(G0), [shared])
    node.list_pods()
    await node.mig.adopt()
    with pytest.raises(AllocateError, match="operatingmode to hami-core"):
        await node.state.allocate([f"{G0}-0"])


async def test_a_card_whose_mig_mode_waits_for_a_reset_is_asked_once_and_registered_empty(tmp_path: Path) -> None:
    driver = MigDriverDouble({G0: True, G1: True}, reset_needed=True)
    node = Node(tmp_path, driver, [])
    node.list_pods()
    await node.mig.adopt()
    await node.mig.reconcile()
    await node.mig.reconcile()
    assert sorted(c for c in driver.calls if c[0] == "set_mig_mode") == [
        ("set_mig_mode", G0, "True"),
        ("set_mig_mode", G1, "True"),
    ]
    assert [r.count for r in node.mig.register_devices(GPUS, MIG)] == [0, 0]
    assert node.state.health.devices() == ()  # no slot where no instance can be made yet
    samples = {
        s.labels["outcome"]: s.value
        for m in node.metrics.registry.collect()
        if m.name == "hami_device_plugin_mig_operations"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["operation"] == "enable_mig"
    }
    assert samples == {"pending_reset": 2}


async def test_an_instance_an_unreadable_pod_may_hold_is_kept_then_reclaimed_once_the_pod_is_gone(
    tmp_path: Path,
) -> None:
    driver = mig_cards(G0)
    kept = driver.create_mig_instance(G0, 14, 2)
    broken = pod_json(
        "broken",
        uid="uid-broken",
        node=NODE,
        containers=[Ctr("main", [(G0, 0, 9856, 100)])],
        extra_annotations={names.MIG_ALLOCATIONS: "not json"},
    )
    node = Node(tmp_path, driver, [broken])
    node.list_pods()
    await node.mig.adopt()
    await node.mig.reconcile()
    assert driver.instances() == [(G0, "2g.10gb", 2)]
    assert (G0, kept.gpu_instance_id) in node.mig.managed()
    node.cache.apply("DELETED", node.api.pods["broken"])
    await node.mig.reconcile()
    assert driver.instances() == []


async def test_with_the_pod_watch_down_allocate_clears_no_leftover_and_the_reconciler_waits(tmp_path: Path) -> None:
    driver = mig_cards(G0)
    node = Node(tmp_path, driver, [mig_pod("seed", [(G0, "2g.10gb", 0, 2)]), mig_pod("done", [(G0, "3g.20gb", 4, 4)])])
    node.list_pods()
    await node.mig.adopt()
    await node.state.allocate([f"{G0}-1"])  # first in admission order (same creation time: by name): "done"
    unknown = driver.create_mig_instance(G0, 19, 1)  # overlaps seed's placement; nothing says whose it is
    node.cache.apply("DELETED", node.api.pods["done"])
    node.cache.mark_stale()  # the watch fails: the list may miss pods
    with pytest.raises(AllocateError, match="may hold"):
        await node.state.allocate([f"{G0}-0"])
    await node.mig.reconcile()
    assert driver.instances() == [(G0, "1g.5gb", 1), (G0, "3g.20gb", 4)]  # neither cleared nor reclaimed
    assert unknown.gpu_instance_id not in {gi for _, gi in node.mig.managed()}
