"""Preemption decisions (core/preempt.py): per node, the minimal set of lower-priority pods whose removal really
frees a fitting GPU slice; against a brute-force reference (hypothesis) and on hand-made nodes."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.core import preempt
from hami_scheduler_extender.core.fit import fit_pod
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation
from hami_scheduler_extender.core.preempt import Candidate, Outcome, select_victims
from hami_scheduler_extender.core.request import PodRequest
from hami_scheduler_extender.core.state import ClusterState
from hypothesis import event, given, settings
from hypothesis import strategies as st

NODE = "n"


def place(
    state: ClusterState,
    uid: str,
    cards: Mapping[str, int],
    *,
    priority: int | None,
    cores: int = 0,
    node: str = NODE,
) -> None:
    """A pod bound on ``node`` holding ``cards`` ({uuid: MiB}) in one container, as the pod watch shows it."""
    grants = tuple(DeviceGrant(uuid=uuid, usedmem=mem, usedcores=cores) for uuid, mem in cards.items())
    state.apply_pod(
        uid, PodAllocation(uid=uid, namespace="default", name=uid, node=node, grants=(grants,), priority=priority)
    )


def held(state: ClusterState, node: str = NODE) -> list[Candidate]:
    return [Candidate(uid=a.uid, priority=a.priority, usage=u) for a, u in state.holds_on(node)]


def decide(
    state: ClusterState,
    request: PodRequest,
    *,
    priority: int = 100,
    proposed: Sequence[str],
    budget: int = preempt.DEFAULT_BUDGET,
) -> preempt.NodeDecision:
    view = state.view(NODE)
    assert view is not None
    return select_victims(
        view=view, request=request, preemptor_priority=priority, proposed=proposed, held=held(state), budget=budget
    )


def wants(mem: int | None = None, gpus: int = 1, cores: int | None = None) -> PodRequest:
    resources: dict[str, int] = {"gpu": gpus}
    if mem is not None:
        resources["mem"] = mem
    if cores is not None:
        resources["cores"] = cores
    return request_of(pod_json(containers=[container(**resources)]))


def two_cards(split: int = 4, **priorities: int) -> ClusterState:
    """Card A: L1, L2 (8,000 MiB each); card B: L3 (8,000), L4, L5 (4,000 each): both full. Priority 10 unless
    given."""
    state = state_with(node_json(NODE, [gpu("GPU-A", count=split), gpu("GPU-B", count=split, index=1)]))
    for uid, card, mem in (
        ("L1", "A", 8000),
        ("L2", "A", 8000),
        ("L3", "B", 8000),
        ("L4", "B", 4000),
        ("L5", "B", 4000),
    ):
        place(state, uid, {f"GPU-{card}": mem}, priority=priorities.get(uid, 10))
    return state


def fits_after_deleting(state: ClusterState, request: PodRequest, victims: Sequence[str]) -> bool:
    """Delete the victims as the pod watch would and ask the real fit: an answer independent of preempt.without."""
    trial = ClusterState()
    for name in state.node_names():
        # a fresh cache with the same node and holds, less the victims
        inventory = state._inventories[name]
        trial.upsert_node(inventory)
    for allocation in state.allocations():
        trial.apply_pod(allocation.uid, allocation)
    for uid in victims:
        trial.delete_pod(uid)
    view = trial.view(NODE)
    assert view is not None
    return fit_pod(view, request).grants is not None


def test_two_pods_on_one_card_rather_than_three_on_the_other() -> None:
    state = two_cards()
    request = wants(mem=16000)
    decision = decide(state, request, proposed=["L1", "L2", "L3", "L4", "L5"])
    assert decision.outcome is Outcome.NARROWED
    assert set(decision.victims or ()) == {"L1", "L2"}
    assert fits_after_deleting(state, request, decision.victims or ())
    assert not fits_after_deleting(state, request, ["L1"])


def test_kube_scheduler_list_too_short_for_the_gpus_is_widened_to_the_nodes_lower_priority_pods() -> None:
    # kube-scheduler's dry run cannot see GPU slices: its victim (chosen for an in-tree resource) frees too little.
    state = two_cards()
    decision = decide(state, wants(mem=16000), proposed=["L4"])
    assert decision.outcome is Outcome.WIDENED
    assert set(decision.victims or ()) == {"L1", "L2"}
    # and with no victim at all (kube-scheduler releases that pass candidates without victims)
    assert set(decide(state, wants(mem=16000), proposed=[]).victims or ()) == {"L1", "L2"}


def test_never_a_victim_of_equal_or_higher_priority_even_if_kube_scheduler_names_it() -> None:
    state = two_cards(L2=100)  # as important as the preemptor
    decision = decide(state, wants(mem=16000), priority=100, proposed=["L1", "L2", "L3", "L4", "L5"])
    assert set(decision.victims or ()) == {"L3", "L4", "L5"}
    state = two_cards(L2=100, L4=1000)
    dropped = decide(state, wants(mem=16000), priority=100, proposed=["L1", "L2", "L3", "L4", "L5"])
    assert dropped.victims is None
    assert dropped.outcome is Outcome.NO_FIT


def test_pods_of_unknown_priority_and_unknown_uids_are_never_victims_for_the_gpus() -> None:
    state = state_with(node_json(NODE, [gpu("GPU-A", count=4)]))
    place(state, "known", {"GPU-A": 8000}, priority=1)
    place(state, "reserved", {"GPU-A": 8000}, priority=None)  # our reservation, not yet confirmed by the watch
    decision = decide(state, wants(mem=16000), proposed=["known", "reserved", "not-on-this-node"])
    assert decision.victims is None
    assert decision.outcome is Outcome.NO_FIT
    assert decide(state, wants(mem=8000), proposed=["reserved", "not-on-this-node"]).victims == ("known",)


def test_gpus_that_fit_already_pass_kube_schedulers_own_victims_through_less_higher_priority_ones() -> None:
    state = state_with(node_json(NODE, [gpu("GPU-A", count=4), gpu("GPU-B", count=4, index=1)]))
    place(state, "gpu-high", {"GPU-A": 8000}, priority=500)
    place(state, "gpu-low", {"GPU-A": 8000}, priority=1)
    decision = decide(state, wants(mem=8000), proposed=["cpu-hog", "gpu-high", "gpu-low"])
    assert decision.outcome is Outcome.PASSED_THROUGH
    assert set(decision.victims or ()) == {"cpu-hog", "gpu-low"}
    nothing = decide(state, wants(mem=8000), proposed=["gpu-high"])
    assert nothing.victims is None
    assert nothing.outcome is Outcome.NO_VICTIM


def test_among_equally_many_victims_the_lowest_priority_then_the_least_memory() -> None:
    state = state_with(node_json(NODE, [gpu("GPU-A", count=4), gpu("GPU-B", count=4, index=1)]))
    place(state, "a-important", {"GPU-A": 16000}, priority=50)
    place(state, "b-cheap", {"GPU-B": 16000}, priority=5)
    assert decide(state, wants(mem=16000), proposed=[]).victims == ("b-cheap",)
    state = state_with(
        node_json(NODE, [gpu("GPU-A", count=4), gpu("GPU-B", count=4, index=1), gpu("GPU-C", count=4, index=2)])
    )
    place(state, "a", {"GPU-A": 12000}, priority=5)  # frees 12,000 + 4,000 free
    place(state, "b", {"GPU-B": 10000}, priority=5)  # frees 10,000 + 6,000 free: less memory taken
    place(state, "c", {"GPU-C": 14000}, priority=5)
    assert decide(state, wants(mem=8000), proposed=[]).victims == ("b",)


def test_answer_lists_victims_highest_priority_first() -> None:
    state = state_with(node_json(NODE, [gpu("GPU-A", count=4)]))
    for uid, priority in (("p3", 3), ("p9", 9), ("p1", 1), ("p5", 5)):
        place(state, uid, {"GPU-A": 4000}, priority=priority)
    assert decide(state, wants(mem=16000), proposed=[]).victims == ("p9", "p5", "p3", "p1")


def test_slots_exclusive_cards_and_multi_card_pods() -> None:
    # split 2, both slots taken by small pods: one victim frees a slot.
    state = state_with(node_json(NODE, [gpu("GPU-A", count=2)]))
    place(state, "s1", {"GPU-A": 1000}, priority=1)
    place(state, "s2", {"GPU-A": 1000}, priority=2)
    assert decide(state, wants(mem=1000), proposed=[]).victims == ("s1",)
    # an exclusive card (100 cores) needs every tenant of one card gone
    assert decide(state, wants(mem=1000, cores=100), proposed=[]).victims == ("s2", "s1")
    # two cards wanted: the pod spanning both is one victim instead of two
    state = state_with(node_json(NODE, [gpu("GPU-A", count=4), gpu("GPU-B", count=4, index=1)]))
    place(state, "span", {"GPU-A": 8000, "GPU-B": 8000}, priority=1)
    place(state, "a", {"GPU-A": 8000}, priority=1)
    place(state, "b", {"GPU-B": 8000}, priority=1)
    request = wants(mem=8000, gpus=2)
    decision = decide(state, request, proposed=[])
    assert decision.victims == ("span",)
    assert fits_after_deleting(state, request, ["span"])


def test_spent_budget_falls_back_to_an_irreducible_set_that_fits() -> None:
    state = two_cards()
    request = wants(mem=16000)
    decision = decide(state, request, proposed=[], budget=0)
    assert decision.outcome is Outcome.GREEDY
    victims = decision.victims or ()
    assert fits_after_deleting(state, request, victims)
    for spared in victims:
        assert not fits_after_deleting(state, request, [v for v in victims if v != spared])


def test_a_deleted_victim_frees_its_hold_through_the_pod_watch() -> None:
    from hami_scheduler_extender.adapters.watch import apply_pod_event

    state = two_cards()
    request = wants(mem=16000)
    view = state.view(NODE)
    assert view is not None
    assert fit_pod(view, request).grants is None
    for uid in decide(state, request, proposed=[]).victims or ():
        apply_pod_event(state, "DELETED", pod_json(uid, uid=uid, node_name=NODE))
    view = state.view(NODE)
    assert view is not None
    assert fit_pod(view, request).grants is not None


# --- brute-force reference ----------------------------------------------------------------------------------
cards = st.lists(st.tuples(st.integers(2, 4), st.sampled_from([8000, 16000])), min_size=1, max_size=3)
pods = st.lists(
    st.tuples(
        st.lists(st.integers(0, 2), min_size=1, max_size=2, unique=True),  # card indices
        st.sampled_from([2000, 4000, 6000, 8000]),
        st.sampled_from([0, 0, 30]),
        st.sampled_from([None, 0, 1, 1, 2, 3, 5]),  # priority (None: not known yet)
    ),
    min_size=1,
    max_size=7,
)
requests = st.tuples(
    st.sampled_from([1, 1, 2]), st.sampled_from([None, 4000, 8000, 12000, 16000]), st.sampled_from([None, 0, 50, 100])
)


def reference(
    state: ClusterState, request: PodRequest, priority: int, proposed: Sequence[str]
) -> tuple[Outcome, set[frozenset[str]]]:
    """What the answer must be, by trying every subset: the outcome and the acceptable victim sets."""
    holds = {c.uid: c for c in held(state)}
    if fits_after_deleting(state, request, []):
        kept = frozenset(
            u for u in proposed if u not in holds or holds[u].priority is None or (holds[u].priority or 0) < priority
        )
        return (Outcome.PASSED_THROUGH if kept else Outcome.NO_VICTIM), {kept}
    eligible = [c for c in holds.values() if c.priority is not None and c.priority < priority]
    narrow = [c for c in eligible if c.uid in set(proposed)]
    if narrow and fits_after_deleting(state, request, [c.uid for c in narrow]):
        pool, outcome = narrow, Outcome.NARROWED
    elif eligible and fits_after_deleting(state, request, [c.uid for c in eligible]):
        pool, outcome = eligible, Outcome.WIDENED
    else:
        return Outcome.NO_FIT, set()
    fitting = [
        combo
        for size in range(1, len(pool) + 1)
        for combo in itertools.combinations(pool, size)
        if fits_after_deleting(state, request, [c.uid for c in combo])
    ]
    best = min(preempt.preference(c) for c in fitting)
    return outcome, {frozenset(c.uid for c in combo) for combo in fitting if preempt.preference(combo) == best}


@settings(max_examples=400, deadline=None)
@given(cards, pods, requests, st.integers(2, 6), st.lists(st.integers(0, 7), max_size=6))
def test_matches_the_brute_force_reference(
    node_cards: list[tuple[int, int]],
    placed: list[tuple[list[int], int, int, int | None]],
    wanted: tuple[int, int | None, int | None],
    priority: int,
    proposed_indices: list[int],
) -> None:
    devices = [gpu(f"GPU-{i}", count=count, devmem=mem, index=i) for i, (count, mem) in enumerate(node_cards)]
    state = state_with(node_json(NODE, devices))
    for n, (indices, mem, cores, pod_priority) in enumerate(placed):
        on = [i for i in indices if i < len(devices)] or [0]
        place(state, f"p{n}", {f"GPU-{i}": mem for i in on}, priority=pod_priority, cores=cores)
    gpus_wanted, mem_wanted, cores_wanted = wanted
    request = wants(mem=mem_wanted, gpus=gpus_wanted, cores=cores_wanted)
    proposed = [f"p{i}" if i < len(placed) else "not-here" for i in proposed_indices]
    decision = decide(state, request, priority=priority, proposed=proposed)
    outcome, acceptable = reference(state, request, priority, proposed)
    event(f"{outcome.value}, {len(decision.victims or ())} victim(s)")
    assert decision.outcome is outcome
    if outcome in (Outcome.NO_FIT, Outcome.NO_VICTIM):
        assert decision.victims is None
        return
    victims = decision.victims or ()
    assert frozenset(victims) in acceptable
    holds = {c.uid: c for c in held(state)}
    for uid in victims:  # never a pod we know to be as important as the preemptor
        assert uid not in holds or holds[uid].priority is None or (holds[uid].priority or 0) < priority
    if outcome is not Outcome.PASSED_THROUGH:
        assert fits_after_deleting(state, request, victims)
        assert all(holds[u].priority is not None for u in victims)
    ranks = [holds[u].priority or 0 if u in holds else 0 for u in victims]
    if outcome is not Outcome.PASSED_THROUGH:
        assert ranks == sorted(ranks, reverse=True)


def test_pod_priority_is_read_from_the_spec_only_when_it_is_an_int32() -> None:
    from hami_scheduler_extender.core import objects

    for value, expected in ((1000, 1000), (-5, -5), (0, 0), (2**31, None), (True, None), ("9", None), (None, None)):
        assert objects.pod_priority({"priority": value}) == expected, value
    placed = pod_json(
        "p",
        uid="u-p",
        node_name="n",
        annotations={"hami.io/vgpu-node": "n", "hami.io/vgpu-devices-allocated": "GPU-A,NVIDIA,1000,0:;"},
    )
    placed["spec"]["priority"] = 7
    allocation = objects.pod_allocation(placed)
    assert allocation is not None
    assert allocation.priority == 7
