"""Dynamic MIG decisions (core/mig.py): what the plugin adopts, creates and destroys given the pods' reservations and
the instances NVML lists, and the MIG register record. The properties run over random nodes (instances at legal,
non-overlapping placements of the real A100-40GB profiles; pods live, terminal, elsewhere or unreadable) and check the
safety rules against a direct reading of them: never destroy an instance a live pod reserved, never change MIG mode on
a busy card, touch nothing when pods cannot be read, and a created placement never overlaps an instance kept."""

from __future__ import annotations

import json

from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.mig import (
    Adopt,
    Card,
    Create,
    LivePods,
    Refuse,
    allowed_profiles,
    live_pods,
    matches,
    mig_register_devices,
    mig_register_record,
    overlaps,
    realize,
    reconcile_plan,
    startup_plan,
)
from hami_device_plugin.core.mig_device import MigInstance
from hami_device_plugin.core.pods import PodRecord, pod_record
from hami_shared import names
from hami_shared.mig import GeometryEntry, MigAllocation, ModelGeometries, encode_mig_allocations
from hami_shared.node_register import MigPlacement, encode_node_devices
from hami_shared.pod_devices import ContainerDevice
from hypothesis import given, settings
from hypothesis import strategies as st
from mig_double import A100_40GB
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4000-8000-111111111111"
PROFILE = {p.name: p for p in A100_40GB}


def instance(gpu: str, profile: str, start: int, gi: int) -> MigInstance:
    p = PROFILE[profile]
    size = p.placements[0].size
    return MigInstance(
        parent_uuid=gpu,
        gpu_instance_id=gi,
        compute_instance_id=0,
        profile_id=p.profile_id,
        profile=profile,
        start=start,
        size=size,
        mig_uuid=f"MIG-{gpu[4:8]}-{gi}",
        memory_mib=p.memory_mib,
    )


def reservation(gpu: str, profile: str, start: int, container: int = 0, device: int = 0) -> MigAllocation:
    size = PROFILE[profile].placements[0].size
    return MigAllocation(
        container_index=container, device_index=device, gpu_uuid=gpu, profile=profile, start=start, size=size
    )


def pod(
    uid: str,
    allocations: tuple[MigAllocation, ...] = (),
    *,
    node: str = NODE,
    terminal: bool = False,
    problem: bool = False,
    held: tuple[str, ...] = (),
) -> PodRecord:
    return PodRecord(
        uid=uid,
        namespace="default",
        name=uid,
        created="2026-12-06T10:00:00Z",
        node=node,
        terminal=terminal,
        allocated=(tuple(ContainerDevice(uuid=g, usedmem=9856, usedcores=100) for g in held),),
        mig_allocations=allocations,
        mig_problem="unreadable" if problem else None,
    )


# --- examples -------------------------------------------------------------------------------------------------


def test_startup_adopts_reserved_instances_destroys_leftovers_and_enables_mig_on_idle_cards_only() -> None:
    kept = instance(G0, "2g.10gb", 0, 1)
    leftover = instance(G0, "1g.5gb", 6, 2)
    cards = [Card(uuid=G0, mig_enabled=True, instances=(kept, leftover)), Card(uuid=G1, mig_enabled=False)]
    pods = [
        pod("live", (reservation(G0, "2g.10gb", 0),), held=(G0,)),
        pod("gone", (reservation(G1, "7g.40gb", 0),), terminal=True),
    ]
    plan = startup_plan(cards, pods, NODE)
    assert plan.adopt == ((kept, live_pods(pods, NODE).reservations[0].owner),)
    assert plan.destroy == (leftover,)
    assert plan.enable_mig == (G1,)  # G1's only pod is terminal: idle


def test_startup_touches_nothing_when_pods_cannot_be_read() -> None:
    cards = [Card(uuid=G0, mig_enabled=False, instances=(instance(G0, "1g.5gb", 0, 1),))]
    plan = startup_plan(cards, None, NODE)
    assert plan.enable_mig == ()
    assert plan.destroy == ()
    assert plan.adopt == ()


def test_a_busy_card_keeps_its_mig_mode_and_an_unreadable_pod_protects_its_cards() -> None:
    cards = [
        Card(uuid=G0, mig_enabled=False),
        Card(uuid=G1, mig_enabled=True, instances=(instance(G1, "3g.20gb", 4, 3),)),
    ]
    plan = startup_plan(cards, [pod("hami-core", held=(G0,)), pod("broken", problem=True, held=(G1,))], NODE)
    assert plan.enable_mig == ()  # G0 is in use by a pod: never switched under it
    assert plan.destroy == ()  # G1's instance may be the unreadable pod's
    everything = startup_plan(cards, [pod("broken", problem=True)], NODE)  # no device list: every card protected
    assert everything.enable_mig == ()
    assert everything.destroy == ()


def test_reconcile_destroys_managed_instances_of_pods_gone_and_leaves_others() -> None:
    mine_live = instance(G0, "2g.10gb", 0, 1)
    mine_gone = instance(G0, "2g.10gb", 2, 2)
    by_hand = instance(G0, "1g.5gb", 6, 3)
    managed = frozenset({(G0, 1), (G0, 2)})
    pods = [pod("a", (reservation(G0, "2g.10gb", 0),)), pod("b", (reservation(G0, "2g.10gb", 2),), terminal=True)]
    assert reconcile_plan([mine_live, mine_gone, by_hand], pods, NODE, managed) == (mine_gone,)
    deleting_but_running = [*pods[:1], pod("b", (reservation(G0, "2g.10gb", 2),))]
    assert reconcile_plan([mine_live, mine_gone], deleting_but_running, NODE, managed) == ()


def test_realize_adopts_an_existing_instance_creates_otherwise_and_clears_only_leftovers() -> None:
    wanted = reservation(G0, "2g.10gb", 2)
    existing = instance(G0, "2g.10gb", 2, 5)
    assert realize(wanted, A100_40GB, [existing], LivePods()) == Adopt(existing)
    leftover = instance(G0, "1g.5gb", 3, 6)
    other = instance(G0, "2g.10gb", 0, 7)
    live = live_pods([pod("other", (reservation(G0, "2g.10gb", 0),))], NODE)
    assert realize(wanted, A100_40GB, [other, leftover], live) == Create(PROFILE["2g.10gb"], 2, (leftover,))
    clash = realize(reservation(G0, "3g.20gb", 0), A100_40GB, [other], live)
    assert isinstance(clash, Refuse)
    assert "default/other" in clash.reason


def test_realize_refuses_an_unknown_profile_or_an_illegal_placement_with_what_is_legal() -> None:
    unknown = realize(
        reservation(G0, "2g.10gb", 0).__class__(
            container_index=0, device_index=0, gpu_uuid=G0, profile="9g.99gb", start=0, size=1
        ),
        A100_40GB,
        [],
        LivePods(),
    )
    assert isinstance(unknown, Refuse)
    assert "1g.5gb" in unknown.reason
    illegal = realize(
        MigAllocation(container_index=0, device_index=0, gpu_uuid=G0, profile="2g.10gb", start=1, size=2),
        A100_40GB,
        [],
        LivePods(),
    )
    assert isinstance(illegal, Refuse)
    assert "0+2, 2+2, 4+2" in illegal.reason


def test_register_record_is_hami_s_mig_form() -> None:
    gpu = Gpu(uuid=G0, index=1, name="NVIDIA A100-SXM4-40GB", memory_mib=40960, numa=0)
    geometries = (
        ModelGeometries(
            models=("A100-SXM4-40GB",),
            geometries=(
                (GeometryEntry("2g.10gb", 10240, 3), GeometryEntry("1g.5gb", 5120, 1)),
                (GeometryEntry("7g.40gb", 40960, 1),),
            ),
        ),
    )
    allowed = allowed_profiles(gpu.name, A100_40GB, geometries)
    assert [p.name for p in allowed] == ["1g.5gb", "2g.10gb", "7g.40gb"]
    assert allowed_profiles("NVIDIA H100 80GB HBM3", A100_40GB, geometries) == A100_40GB  # no entry: all
    record = mig_register_record(gpu, allowed)
    doc = json.loads(encode_node_devices([record]))[0]
    assert doc["mode"] == "mig"
    assert doc["count"] == 7
    assert doc["devmem"] == 40960
    assert doc["devcore"] == 100
    assert doc["migProfiles"][1] == {
        "name": "2g.10gb",
        "memoryMB": 9856,
        "core": 28,
        "sliceCount": 2,
        "placements": [{"start": 0, "size": 2}, {"start": 2, "size": 2}, {"start": 4, "size": 2}],  # start always
    }
    # memory scaling is not applied in MIG mode; a card without known profiles takes nothing
    config = DeviceConfig(memory_scaling=2.0)
    records = mig_register_devices(
        [gpu, Gpu(uuid=G1, index=0, name="NVIDIA T4", memory_mib=15360)], config, {G0: allowed}
    )
    assert [(r.id, r.count, r.devmem, r.mode) for r in records] == [(G1, 0, 15360, "mig"), (G0, 7, 40960, "mig")]


def test_pod_record_reads_the_reservations_and_an_unreadable_value_is_a_problem_not_a_crash() -> None:
    allocations = (reservation(G0, "2g.10gb", 2),)
    raw = pod_json(
        "p",
        uid="u",
        node=NODE,
        containers=[Ctr("main", [(G0, 0, 9856, 100)])],
        extra_annotations={names.MIG_ALLOCATIONS: encode_mig_allocations(allocations)},
    )
    assert pod_record(raw).mig_allocations == allocations
    raw["metadata"]["annotations"][names.MIG_ALLOCATIONS] = '[{"containerIndex": -1}]'
    broken = pod_record(raw)
    assert broken.mig_allocations == ()
    assert broken.mig_problem
    assert broken.problem is None


# --- properties -------------------------------------------------------------------------------------------------


@st.composite
def node_state(draw: st.DrawFn) -> tuple[list[Card], list[PodRecord]]:
    """Two cards with random instances at legal, non-overlapping placements, and pods reserving some of them (or
    free placements), some terminal, some on another node, some unreadable."""
    cards = []
    reservations_pool: list[MigAllocation] = []
    gi = 1
    for uuid in (G0, G1):
        instances: list[MigInstance] = []
        for _ in range(draw(st.integers(0, 5))):
            p = draw(st.sampled_from(A100_40GB))
            place = draw(st.sampled_from(p.placements))
            if any(overlaps(place.start, place.size, i.start, i.size) for i in instances):
                continue
            instances.append(instance(uuid, p.name, place.start, gi))
            gi += 1
        cards.append(Card(uuid=uuid, mig_enabled=draw(st.booleans()) or bool(instances), instances=tuple(instances)))
        for i in instances:
            reservations_pool.append(reservation(uuid, i.profile, i.start))
        p = draw(st.sampled_from(A100_40GB))
        reservations_pool.append(reservation(uuid, p.name, draw(st.sampled_from(p.placements)).start))
    pods = []
    for n in range(draw(st.integers(0, 4))):
        mine = draw(st.lists(st.sampled_from(reservations_pool), max_size=2, unique=True)) if reservations_pool else []
        pods.append(
            pod(
                f"p{n}",
                tuple(MigAllocation(**{**_fields(a), "device_index": k}) for k, a in enumerate(mine)),
                node=draw(st.sampled_from([NODE, NODE, "node-b"])),
                terminal=draw(st.booleans()),
                problem=draw(st.integers(0, 9)) == 0,
                held=tuple(a.gpu_uuid for a in mine) if draw(st.booleans()) else (),
            )
        )
    return cards, pods


def _fields(a: MigAllocation) -> dict[str, object]:
    return {f: getattr(a, f) for f in ("container_index", "device_index", "gpu_uuid", "profile", "start", "size")}


def _live(pods: list[PodRecord]) -> list[PodRecord]:
    return [p for p in pods if p.node == NODE and not p.terminal]


@settings(max_examples=300)
@given(node_state())
def test_startup_never_destroys_a_live_reservation_nor_switches_a_busy_card(
    state: tuple[list[Card], list[PodRecord]],
) -> None:
    cards, pods = state
    plan = startup_plan(cards, pods, NODE)
    live = _live(pods)
    reserved = [a for p in live if p.mig_problem is None for a in p.mig_allocations]
    for destroyed in plan.destroy:
        assert not any(matches(destroyed, a) for a in reserved)
        assert not any(
            p.mig_problem
            for p in live
            if not p.allocated[0] or destroyed.parent_uuid in {d.uuid for d in p.allocated[0]}
        )
    # busy: used by a live pod other than through its MIG reservations (or by a pod that cannot be read)
    used = {
        d.uuid
        for p in live
        for d in p.allocated[0]
        if p.mig_problem or d.uuid not in {a.gpu_uuid for a in p.mig_allocations}
    }
    for uuid in plan.enable_mig:
        assert uuid not in used
        assert not any(p.mig_problem and not p.allocated[0] for p in live)
    every = [i for c in cards for i in c.instances]
    assert {i.gpu_instance_id for i in plan.destroy}.isdisjoint({i.gpu_instance_id for i, _ in plan.adopt})
    assert {i.gpu_instance_id for i, _ in plan.adopt} == {
        i.gpu_instance_id for i in every if any(matches(i, a) for a in reserved)
    }


@settings(max_examples=300)
@given(node_state(), st.data())
def test_reconcile_destroys_only_managed_unreserved_instances(
    state: tuple[list[Card], list[PodRecord]], data: st.DataObject
) -> None:
    cards, pods = state
    every = [i for c in cards for i in c.instances]
    managed = (
        frozenset(data.draw(st.sets(st.sampled_from([(i.parent_uuid, i.gpu_instance_id) for i in every]))))
        if every
        else frozenset()
    )
    destroyed = reconcile_plan(every, pods, NODE, managed)
    reserved = [a for p in _live(pods) if p.mig_problem is None for a in p.mig_allocations]
    for i in destroyed:
        assert (i.parent_uuid, i.gpu_instance_id) in managed
        assert not any(matches(i, a) for a in reserved)


@settings(max_examples=300)
@given(node_state(), st.data())
def test_realize_keeps_every_reserved_instance_and_creates_without_overlap(
    state: tuple[list[Card], list[PodRecord]], data: st.DataObject
) -> None:
    cards, pods = state
    card = data.draw(st.sampled_from(cards))
    p = data.draw(st.sampled_from(A100_40GB))
    place: MigPlacement = data.draw(st.sampled_from(p.placements))
    wanted = reservation(card.uuid, p.name, place.start)
    live = live_pods(pods, NODE)
    decision = realize(wanted, A100_40GB, card.instances, live)
    if isinstance(decision, Adopt):
        assert matches(decision.instance, wanted)
    elif isinstance(decision, Create):
        kept = [i for i in card.instances if i not in decision.clear]
        assert not any(overlaps(i.start, i.size, place.start, place.size) for i in kept)
        assert not any(live.owner_of(i) for i in decision.clear)
        assert not live.is_protected(card.uuid) or not decision.clear
    else:
        # refused only for a real conflict: an overlapping instance a live pod holds or may hold
        assert any(
            overlaps(i.start, i.size, place.start, place.size)
            and (live.owner_of(i) is not None or live.is_protected(card.uuid))
            for i in card.instances
        )
