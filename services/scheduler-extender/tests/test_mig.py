"""Dynamic MIG placement: geometry choice against a brute-force reference, the seed's scenario, vgpu-mode routing,
reservations written and read back (restart), the vectorised filter on MIG cards."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections import Counter
from collections.abc import Sequence

import pytest
from extender_builders import A100_40GB_PROFILES, container, gpu, mig_gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.app.metrics import AllocationCollector, render_allocations
from hami_scheduler_extender.app.settings import Settings
from hami_scheduler_extender.core import commit, objects, preempt
from hami_scheduler_extender.core.fit import fit_pod
from hami_scheduler_extender.core.mig import MigCard, MigInstance
from hami_scheduler_extender.core.model import FailureReason, NodeView, PodAllocation, Policy
from hami_scheduler_extender.core.request import PlacementOptions, PodRequest, RequestDefaults, resolve_container
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.mig import (
    DEFAULT_KNOWN_GEOMETRIES,
    GeometryEntry,
    decode_mig_allocations,
    encode_mig_allocations,
    geometries_for_type,
)
from hami_shared.node_register import MigPlacement, MigProfile
from hami_shared.pod_devices import decode_pod_devices
from hami_shared.quantity import GpuRequest
from hypothesis import given, settings
from hypothesis import strategies as st

R = FailureReason
A100 = "NVIDIA A100-SXM4-40GB"
A100_GEOMETRIES = geometries_for_type(A100, DEFAULT_KNOWN_GEOMETRIES)


def a100_card() -> MigCard:
    return MigCard.build(A100_GEOMETRIES, A100_40GB_PROFILES)


def view_of(state: ClusterState, name: str) -> NodeView:
    view = state.view(name)
    assert view is not None
    return view


def mig_pod(gpus: int = 1, mem: int = 8000, annotations: dict[str, str] | None = None) -> dict[str, object]:
    return pod_json(containers=[container(gpu=gpus, mem=mem)], annotations=annotations)


def reserve(state: ClusterState, pod: dict[str, object], node: str, uid: str) -> PodAllocation | None:
    allocation, _ = state.reserve_fit(
        uid=uid, namespace="default", name=uid, node=node, request=request_of(pod), now=0.0
    )
    return allocation


# --- brute-force reference -------------------------------------------------------------------


@functools.cache
def packings(profiles: tuple[MigProfile, ...]) -> tuple[frozenset[MigInstance], ...]:
    """Every set of legal instances (any profiles) of which no two share a memory slice: include or exclude each
    legal instance in turn, a slice bit mask ruling out overlaps."""
    legal = [MigInstance(q.start, q.size, p.name) for p in profiles for q in p.placements]
    masks = [((1 << i.size) - 1) << i.start for i in legal]
    out: list[frozenset[MigInstance]] = []

    def walk(k: int, taken: int, chosen: tuple[MigInstance, ...]) -> None:
        if k == len(legal):
            out.append(frozenset(chosen))
            return
        walk(k + 1, taken, chosen)
        if not taken & masks[k]:
            walk(k + 1, taken | masks[k], (*chosen, legal[k]))

    walk(0, 0, ())
    return tuple(out)


def brute_force(
    geometries: Sequence[Sequence[GeometryEntry]],
    profiles: tuple[MigProfile, ...],
    in_use: Sequence[MigInstance],
    memory: int,
) -> tuple[int, int, int, int] | None:
    """The least (instance waste, geometry waste, geometry index, start) over every packing of the card whose
    profile counts are exactly a geometry's and which contains the instances in use; None when no free instance
    has ``memory``."""
    totals: dict[int, int] = {}
    free: list[tuple[int, int, int]] = []  # (geometry index, profile memory, start)
    for index, entries in enumerate(geometries):
        wanted = Counter({e.name: e.count for e in entries})
        memories = {e.name: e.memory_mib for e in entries}
        for packing in packings(profiles):
            if Counter(i.profile for i in packing) != wanted:
                continue
            totals[index] = sum(e.memory_mib * e.count for e in entries)
            if len(set(in_use)) != len(in_use) or not set(in_use) <= packing:
                continue
            free.extend((index, memories[i.profile], i.start) for i in packing - set(in_use))
    full = max(totals.values(), default=0)
    keys = [(mem - memory, full - totals[g], g, start) for g, mem, start in free if mem >= memory]
    return min(keys, default=None)


def overlaps(a: MigInstance, b: MigInstance) -> bool:
    return a.start < b.start + b.size and b.start < a.start + a.size


def check_choice(card: MigCard, in_use: list[MigInstance], memory: int) -> MigInstance | None:
    """choose() against the reference, plus the invariants any answer must keep."""
    choice = card.choose(in_use, memory)
    expected = brute_force(A100_GEOMETRIES, A100_40GB_PROFILES, in_use, memory)
    if choice is None:
        assert expected is None
        return None
    geometry = next(g for g in card.geometries if g.index == choice.geometry)
    key = (choice.memory - memory, card.full_memory - geometry.total_memory, choice.geometry, choice.instance.start)
    assert key == expected
    assert choice.memory >= memory
    profile = next(p for p in A100_40GB_PROFILES if p.name == choice.instance.profile)
    assert (choice.instance.start, choice.instance.size) in {(p.start, p.size) for p in profile.placements}
    assert not any(overlaps(choice.instance, used) for used in in_use)
    # Never a switch: the instances in use and the new one all belong to one layout of the chosen geometry.
    assert any(set(in_use) | {choice.instance} <= layout for layout in geometry.layouts)
    return choice.instance


# --- geometry choice --------------------------------------------------------------------------


def test_seed_example_8000_mib_on_an_idle_a100_takes_a_2g_10gb_of_the_mixed_geometry() -> None:
    card = a100_card()
    choice = card.choose([], 8000)
    assert choice is not None
    assert choice.instance.profile == "2g.10gb"
    assert choice.memory == 10240
    assert A100_GEOMETRIES[choice.geometry] == (
        GeometryEntry("2g.10gb", 10240, 3),
        GeometryEntry("1g.5gb", 5120, 1),
    )


def test_every_default_geometry_of_the_a100_is_realizable_with_its_real_placements() -> None:
    card = a100_card()
    assert [g.index for g in card.geometries] == list(range(len(A100_GEOMETRIES)))
    assert card.total_slices == 8


def test_a_busy_card_keeps_its_geometry() -> None:
    card = a100_card()
    # One 3g.20gb in use: only "3g.20gb x2" holds it, so even a small request gets the other half.
    choice = card.choose([MigInstance(0, 4, "3g.20gb")], 1000)
    assert choice is not None
    assert choice.instance == MigInstance(4, 4, "3g.20gb")
    # A 1g.5gb at slice 6 is in "1g.5gb x7" and in "2g.10gb x3 + 1g.5gb x1": 20 GB fits neither.
    assert card.choose([MigInstance(6, 1, "1g.5gb")], 20000) is None


def test_an_idle_card_takes_any_geometry() -> None:
    card = a100_card()
    whole = card.choose([], 40000)
    assert whole is not None
    assert whole.instance == MigInstance(0, 8, "7g.40gb")


def test_instances_in_use_that_no_layout_holds_offer_nothing() -> None:
    card = a100_card()
    assert card.choose([MigInstance(1, 2, "2g.10gb")], 1000) is None  # not a legal start
    assert card.choose([MigInstance(0, 2, "2g.10gb"), MigInstance(0, 2, "2g.10gb")], 1000) is None
    assert card.max_free_memory([MigInstance(0, 1, "1g.5gb"), MigInstance(0, 4, "3g.20gb")]) == 0


def test_a_model_without_geometries_or_profiles_offers_nothing() -> None:
    assert MigCard.build((), A100_40GB_PROFILES).choose([], 1000) is None
    assert MigCard.build(A100_GEOMETRIES, ()).choose([], 1000) is None
    unknown = geometries_for_type("NVIDIA-Tesla T4", DEFAULT_KNOWN_GEOMETRIES)
    assert unknown == ()


def test_model_matching_is_hamis_first_substring_match() -> None:
    assert geometries_for_type("NVIDIA A100-SXM4-80GB", DEFAULT_KNOWN_GEOMETRIES)[-1][0].name == "7g.80gb"
    assert geometries_for_type("NVIDIA H100 NVL", DEFAULT_KNOWN_GEOMETRIES)[-1][0].name == "7g.94gb"
    assert geometries_for_type("NVIDIA H100 80GB HBM3", DEFAULT_KNOWN_GEOMETRIES)[-1][0].name == "7g.80gb"
    assert geometries_for_type("NVIDIA H200", DEFAULT_KNOWN_GEOMETRIES)[-1][0].name == "7g.141gb"
    assert geometries_for_type("NVIDIA A30", DEFAULT_KNOWN_GEOMETRIES)[0][0].name == "1g.6gb"
    assert geometries_for_type("nvidia a30", DEFAULT_KNOWN_GEOMETRIES) == ()  # case-sensitive, as Go's


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(st.integers(1, 42000), max_size=8),
    memory=st.integers(1, 42000),
)
def test_choice_equals_the_brute_force_reference_on_reachable_states(requests: list[int], memory: int) -> None:
    """Fill a card request by request (every state a real sequence of placements reaches), checking each step."""
    card = a100_card()
    in_use: list[MigInstance] = []
    for asked in requests:
        instance = check_choice(card, in_use, asked)
        if instance is not None:
            in_use.append(instance)
    check_choice(card, in_use, memory)
    assert card.max_free_memory(in_use) == max(
        (
            g.memory_of(i.profile)
            for g in card.geometries
            for layout in g.layouts
            if set(in_use) <= layout
            for i in layout - set(in_use)
        ),
        default=0,
    )


any_instance = st.sampled_from([MigInstance(q.start, q.size, p.name) for p in A100_40GB_PROFILES for q in p.placements])


@settings(max_examples=300, deadline=None)
@given(in_use=st.lists(any_instance, max_size=4), memory=st.integers(1, 42000))
def test_choice_equals_the_brute_force_reference_on_any_state(in_use: list[MigInstance], memory: int) -> None:
    """Arbitrary (often inconsistent) instances in use: the answer still matches the reference."""
    check_choice(a100_card(), in_use, memory)


# --- the seed's scenario through the usage cache ----------------------------------------------


def two_a100_state() -> ClusterState:
    return state_with(
        node_json("mig", [mig_gpu("GPU-m0", index=0), mig_gpu("GPU-m1", index=1)]),
        node_json("core", [gpu("GPU-c0", devmem=40960)]),
    )


def test_seed_scenario_two_gpus_of_8000_then_20_gb_does_not_fit() -> None:
    state = two_a100_state()
    allocation = reserve(state, mig_pod(2, 8000), "mig", "seed")
    assert allocation is not None
    grants = allocation.grants[0]
    assert sorted(g.uuid for g in grants) == ["GPU-m0", "GPU-m1"]
    assert all(g.mig is not None and g.mig.profile == "2g.10gb" and g.usedmem == 10240 for g in grants)
    assert all(g.usedcores == 100 for g in grants)
    result = fit_pod(view_of(state, "mig"), request_of(mig_pod(1, 20000)))
    assert not result.fits
    assert dict(result.reasons) == {R.CARD_MIG_TOPOLOGY_INFEASIBLE: 2}
    assert result.message == "2/2 CardMigTopologyInfeasible"
    # What is left in the geometry still serves: two more 2g.10gb and the 1g.5gb on each card.
    assert reserve(state, mig_pod(2, 9000), "mig", "second") is not None
    assert reserve(state, mig_pod(2, 9000), "mig", "third") is not None
    assert reserve(state, mig_pod(2, 4000), "mig", "small") is not None
    assert reserve(state, mig_pod(1, 1000), "mig", "full") is None


def test_a_mutex_pod_on_a_mig_card_holds_the_whole_card_and_is_charged_for_it() -> None:
    state = two_a100_state()
    mutex = {names.GPU_SCHEDULER_POLICY: "mutex"}
    held = reserve(state, mig_pod(1, 4000, mutex), "mig", "m")
    assert held is not None
    assert held.exclusive
    (grant,) = held.grants[0]
    card = next(d for d in view_of(state, "mig").devices if d.uuid == grant.uuid)
    # the instance created is still the least-waste one; the charge (quota, metrics) is the whole card
    assert grant.mig is not None
    assert grant.mig.profile == "1g.5gb"
    assert grant.usedmem == card.total_mem == 40960
    assert grant.usedcores == 100
    # no other pod on that card, however small; the other card still serves
    other = reserve(state, mig_pod(1, 1000), "mig", "o")
    assert other is not None
    assert other.grants[0][0].uuid != grant.uuid
    assert reserve(state, mig_pod(2, 1000), "mig", "two") is None
    result = fit_pod(view_of(state, "mig"), request_of(mig_pod(2, 1000)))
    assert result.reasons[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] == 1
    # a second mutex pod needs a card without tenant: none is left
    assert reserve(state, mig_pod(1, 1000, mutex), "mig", "m2") is None
    state.unreserve("m")
    assert reserve(state, mig_pod(2, 1000), "mig", "two") is not None


def test_deleting_pods_frees_instances_and_the_geometry_switches() -> None:
    state = two_a100_state()
    assert reserve(state, mig_pod(2, 8000), "mig", "a") is not None
    assert reserve(state, mig_pod(1, 20000), "mig", "b") is None
    state.unreserve("a")
    allocation = reserve(state, mig_pod(1, 20000), "mig", "b")
    assert allocation is not None
    mig = allocation.grants[0][0].mig
    assert mig is not None
    assert mig.profile == "3g.20gb"


def test_spread_and_binpack_over_mig_cards() -> None:
    state = two_a100_state()
    first = reserve(state, mig_pod(1, 4000), "mig", "first")
    assert first is not None
    used = first.grants[0][0].uuid
    spread = fit_pod(view_of(state, "mig"), request_of(mig_pod(1, 4000)))
    assert spread.grants is not None
    assert spread.grants[0][0].uuid != used
    binpack = fit_pod(
        view_of(state, "mig"),
        request_of(mig_pod(1, 4000, {names.GPU_SCHEDULER_POLICY: "binpack"})),
    )
    assert binpack.grants is not None
    assert binpack.grants[0][0].uuid == used


# --- vgpu-mode routing ------------------------------------------------------------------------


def test_vgpu_mode_mig_takes_only_mig_cards_and_hami_core_only_sharing_cards() -> None:
    state = two_a100_state()
    mig = request_of(mig_pod(1, 8000, {names.VGPU_MODE: "mig"}))
    core = request_of(mig_pod(1, 8000, {names.VGPU_MODE: "hami-core"}))
    assert fit_pod(view_of(state, "mig"), mig).fits
    assert dict(fit_pod(view_of(state, "core"), mig).reasons) == {R.CARD_TYPE_MISMATCH: 1}
    assert fit_pod(view_of(state, "core"), core).fits
    assert dict(fit_pod(view_of(state, "mig"), core).reasons) == {R.CARD_TYPE_MISMATCH: 2}
    either = request_of(mig_pod(1, 8000))
    assert fit_pod(view_of(state, "mig"), either).fits
    assert fit_pod(view_of(state, "core"), either).fits
    fits, failed, _ = state.screen(["mig", "core"], mig) or ([], {}, None)
    assert fits == ["mig"]
    assert failed["core"] == "1/1 CardTypeMismatch"


# --- reservations on the wire and a restart ---------------------------------------------------


def bound_pod(allocation: PodAllocation, annotations: dict[str, str], node: str) -> dict[str, object]:
    pod = mig_pod(2, 8000)
    pod["metadata"] = {**pod["metadata"], "uid": allocation.uid, "annotations": annotations}  # type: ignore[dict-item]
    pod["spec"] = {**pod["spec"], "nodeName": node}  # type: ignore[dict-item]
    return pod


def test_bind_writes_hamis_reservations_and_a_restart_rebuilds_the_geometry() -> None:
    state = two_a100_state()
    allocation = reserve(state, mig_pod(2, 8000), "mig", "seed")
    assert allocation is not None
    annotations = commit.placement_annotations(allocation, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    devices = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])
    assert [(d.uuid, d.usedmem, d.usedcores) for d in devices[0]] == [
        (g.uuid, 10240, 100) for g in allocation.grants[0]
    ]
    reserved = decode_mig_allocations(annotations[names.MIG_ALLOCATIONS])
    assert [(a.container_index, a.device_index, a.gpu_uuid, a.profile, a.size) for a in reserved] == [
        (0, k, g.uuid, "2g.10gb", 2) for k, g in enumerate(allocation.grants[0])
    ]
    assert annotations[names.MIG_ALLOCATIONS] == encode_mig_allocations(reserved)
    # A fresh extender (restart) reads the bound pod back: same instances, same refusal of 20 GB.
    pod = bound_pod(allocation, annotations, "mig")
    restarted = two_a100_state()
    read, ignored = objects.trusted_allocation(pod)
    assert ignored is None
    assert read is not None
    restarted.apply_pod(allocation.uid, read)
    assert view_of(restarted, "mig").devices == view_of(state, "mig").devices
    assert not fit_pod(view_of(restarted, "mig"), request_of(mig_pod(1, 20000))).fits
    # The device plugin adds the runtime identity: the hold stays, the identity is kept for the metric.
    realized = [a.with_identity(f"MIG-{a.device_index}", 3 + a.device_index, 0) for a in reserved]
    annotations[names.MIG_ALLOCATIONS] = encode_mig_allocations(realized)
    again, _ = objects.trusted_allocation(bound_pod(allocation, annotations, "mig"))
    assert again is not None
    restarted.apply_pod(allocation.uid, again)
    held = restarted.allocation(allocation.uid)
    assert held is not None
    assert [a.mig_uuid for a in held.mig_realized] == ["MIG-0", "MIG-1"]
    assert view_of(restarted, "mig").devices == view_of(state, "mig").devices


def test_a_reservation_naming_another_device_counts_no_instance() -> None:
    state = two_a100_state()
    allocation = reserve(state, mig_pod(1, 8000), "mig", "one")
    assert allocation is not None
    annotations = commit.placement_annotations(allocation, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    reserved = decode_mig_allocations(annotations[names.MIG_ALLOCATIONS])
    annotations[names.MIG_ALLOCATIONS] = encode_mig_allocations(
        [type(a)(**{**{f: getattr(a, f) for f in a.__slots__}, "gpu_uuid": "GPU-else"}) for a in reserved]
    )
    read, _ = objects.trusted_allocation(bound_pod(allocation, annotations, "mig"))
    assert read is not None
    assert all(g.mig is None for g in read.grants[0])
    # The card is held without a known instance: no geometry is known to be safe, it offers nothing.
    fresh = two_a100_state()
    fresh.apply_pod(allocation.uid, read)
    card = next(d for d in view_of(fresh, "mig").devices if d.uuid == allocation.grants[0][0].uuid)
    assert card.mig_foreign
    assert card.mig_free_memory == 0


# --- the vectorised filter answers as fit_pod on MIG cards ------------------------------------

mixed_cards = st.lists(st.sampled_from(["mig", "mig", "core", "other-mig"]), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    nodes=st.lists(mixed_cards, min_size=1, max_size=3),
    held=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 42000)), max_size=10),
    count=st.integers(1, 3),
    memory=st.one_of(st.none(), st.integers(1, 42000)),
    percent=st.one_of(st.none(), st.integers(1, 100)),
    mode=st.sampled_from([None, "mig", "hami-core"]),
    policy=st.sampled_from(list(Policy)),
)
def test_vectorised_screen_equals_fit_pod_with_mig_cards(
    nodes: list[list[str]],
    held: list[tuple[int, int]],
    count: int,
    memory: int | None,
    percent: int | None,
    mode: str | None,
    policy: Policy,
) -> None:
    objects_ = []
    for n, kinds in enumerate(nodes):
        devices = []
        for i, kind in enumerate(kinds):
            uuid = f"GPU-{n}-{i}"
            if kind == "core":
                devices.append(gpu(uuid, index=i, devmem=40960))
            else:
                devices.append(mig_gpu(uuid, index=i, type=A100 if kind == "mig" else "NVIDIA A100-SXM4-80GB"))
        objects_.append(node_json(f"n{n}", devices))
    state = state_with(*objects_)
    for number, (gpus, mem) in enumerate(held):
        node = f"n{number % len(nodes)}"
        state.reserve_fit(
            uid=f"h{number}", namespace="d", name="h", node=node, request=request_of(mig_pod(gpus, mem)), now=0.0
        )
    request = PodRequest(
        needs=(
            resolve_container(GpuRequest(count=count, memory=memory, memory_percentage=percent), RequestDefaults()),
        ),
        init_containers=0,
        options=PlacementOptions(vgpu_mode=mode, gpu_policy=policy),
    )
    names_ = [f"n{n}" for n in range(len(nodes))]
    screened = state.screen(names_, request)
    assert screened is not None
    fits, failed, _ = screened
    for name in names_:
        expected = fit_pod(view_of(state, name), request)
        assert (name in fits) == expected.fits
        if not expected.fits:
            assert failed[name] == expected.message


# --- the MIG instance metric and the geometries setting -------------------------------------------


def test_realized_instances_are_exported_with_hamis_labels() -> None:
    state = two_a100_state()
    allocation = reserve(state, mig_pod(2, 8000), "mig", "seed")
    assert allocation is not None
    text = render_allocations(AllocationCollector(state)).decode()
    assert "hami_node_gpu_mig_instance_info{" not in text  # reserved, not yet created by the device plugin
    annotations = commit.placement_annotations(allocation, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    reserved = decode_mig_allocations(annotations[names.MIG_ALLOCATIONS])
    annotations[names.MIG_ALLOCATIONS] = encode_mig_allocations(
        [a.with_identity(f"MIG-{a.gpu_uuid}", 5, 0) for a in reserved]
    )
    read, _ = objects.trusted_allocation(bound_pod(allocation, annotations, "mig"))
    state.apply_pod(allocation.uid, read)
    text = render_allocations(AllocationCollector(state)).decode()
    first = allocation.grants[0][0]
    assert first.mig is not None
    index = next(d.index for d in view_of(state, "mig").devices if d.uuid == first.uuid)
    assert (
        f'hami_node_gpu_mig_instance_info{{compute_instance_id="0",device_index="{index}",device_uuid="{first.uuid}",'
        f'gpu_instance_id="5",mig_uuid="MIG-{first.uuid}",node="mig",placement_size="{first.mig.size}",'
        f'placement_start="{first.mig.start}",profile="2g.10gb"}} 1.0'
    ) in text
    assert text.count("hami_node_gpu_mig_instance_info{") == 2


def test_geometries_setting_defaults_parses_and_refuses_with_the_key_path() -> None:
    assert Settings().allowed_mig_geometries() == DEFAULT_KNOWN_GEOMETRIES
    custom = Settings(
        mig_geometries="knownMigGeometries:\n- models: [A100-SXM4-40GB]\n  allowedGeometries:\n"
        "  - [{name: 2g.10gb, memory: 10240, count: 2}, {name: 3g.20gb, memory: 20480, count: 1}]\n"
    ).allowed_mig_geometries()
    assert custom[0].geometries == ((GeometryEntry("2g.10gb", 10240, 2), GeometryEntry("3g.20gb", 20480, 1)),)
    with pytest.raises(ValueError, match=r"knownMigGeometries\[0\]\.allowedGeometries\[0\]\[0\]\.memory"):
        Settings(
            mig_geometries='[{"models": ["A30"], "allowedGeometries": [[{"name": "x", "memory": "6G", "count": 1}]]}]'
        )
    with pytest.raises(ValueError, match="not YAML"):
        Settings(mig_geometries="[{")


def real_profiles(names_: set[str], compute_slices: int) -> tuple[MigProfile, ...]:
    """The driver's placements of a model's profiles (NVIDIA's MIG user guide; the fake NVML's tables): on a
    7-slice card (GA100, GH100: 8 memory slices) 1g at 0..6 (the 1g with twice the memory at 0, 2, 4, 6 over 2
    slices), 2g at 0, 2, 4, 3g at 0 and 4 (4 slices), 4g at 0 (4), 7g at 0 (8); on the 4-slice A30, 1g at 0..3,
    2g at 0 and 2, 4g at 0."""
    ones = sorted((n for n in names_ if n.startswith("1g.")), key=lambda n: int(n.split(".")[1].removesuffix("gb")))
    seven: dict[str, tuple[int, tuple[int, ...]]] = {
        "2g": (2, (0, 2, 4)),
        "3g": (4, (0, 4)),
        "4g": (4, (0,)),
        "7g": (8, (0,)),
    }
    four: dict[str, tuple[int, tuple[int, ...]]] = {"1g": (1, (0, 1, 2, 3)), "2g": (2, (0, 2)), "4g": (4, (0,))}
    out = []
    for name in sorted(names_):
        slices = name.split(".")[0]
        if compute_slices == 4:
            size, starts = four[slices]
        elif slices == "1g":
            size, starts = (2, (0, 2, 4, 6)) if len(ones) > 1 and name == ones[-1] else (1, tuple(range(7)))
        else:
            size, starts = seven[slices]
        out.append(
            MigProfile(name=name, memory_mb=1, placements=tuple(MigPlacement(start=s, size=size) for s in starts))
        )
    return tuple(out)


def test_every_default_geometry_is_realizable_on_its_models_real_placements() -> None:
    for entry in DEFAULT_KNOWN_GEOMETRIES:
        profiles = {e.name for geometry in entry.geometries for e in geometry}
        compute = 4 if entry.models == ("A30",) else 7
        card = MigCard.build(entry.geometries, real_profiles(profiles, compute))
        assert len(card.geometries) == len(entry.geometries), entry.models
        # The whole card is one instance of a default geometry, as large as the card: `nvidia.com/gpu: 1` alone
        # (100 % of the registered memory) can be served.
        whole = max(e.memory_mib for geometry in entry.geometries for e in geometry)
        choice = card.choose([], whole)
        assert choice is not None, entry.models
        assert choice.instance.profile.startswith(("7g.", "4g.24gb")), choice


def test_preemption_on_a_mig_card_frees_the_victims_instances() -> None:
    """A low-priority pod holds each card's whole 7g.40gb; a 20 GB pod needs one card freed. The view without the
    victim must have lost its instance (not only its memory), or no geometry would fit and the node be dropped."""
    state = state_with(node_json("mig", [mig_gpu("GPU-m0", index=0), mig_gpu("GPU-m1", index=1)]))
    for uid in ("low-0", "low-1"):
        allocation = reserve(state, mig_pod(1, 40000), "mig", uid)
        assert allocation is not None
        assert allocation.grants[0][0].mig is not None
        assert allocation.grants[0][0].mig.profile == "7g.40gb"
        state.apply_pod(uid, dataclasses.replace(allocation, priority=1, assumed=False))
    request = request_of(mig_pod(1, 20000))
    assert not fit_pod(view_of(state, "mig"), request).fits
    held = [
        preempt.Candidate(uid=a.uid, priority=a.priority, usage=u, mig=a.mig_instances())
        for a, u in state.holds_on("mig")
    ]
    decision = preempt.select_victims(
        view=view_of(state, "mig"), request=request, preemptor_priority=100, proposed=(), held=held
    )
    assert decision.victims is not None
    assert len(decision.victims) == 1
    assert preempt.fits_without(view_of(state, "mig"), request, [c for c in held if c.uid in decision.victims])
