"""Topology-aware placement, mutex cards, policy chains and scoring weights in the extender's fit, filter,
prioritize and bind decisions: the topology choice against a brute-force reference on the modelled machines
(DGX-style NVSwitch, NVLink ring, PCIe only: the fake NVML's FAKE_GPU_TOPOLOGY shapes), random usage included."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.fit import fit_pod
from hami_scheduler_extender.core.model import FailureReason, Policy
from hami_scheduler_extender.core.policy import (
    GpuPolicy,
    ScoringWeights,
    SortKey,
    parse_gpu_policy,
    parse_scoring_weights,
)
from hami_scheduler_extender.core.preempt import Candidate, fits_without
from hami_scheduler_extender.core.request import placement_options
from hami_scheduler_extender.core.state import ClusterState
from hami_scheduler_extender.core.topology import NodeLinks, scaled_scores
from hami_shared import names
from hami_shared.errors import MalformedInputError
from hami_shared.topology import GpuTopology, Link, NodeTopology, PcieLevel
from hami_shared.topology_codec import encode_node_topology, encode_pair_scores
from hypothesis import given, settings
from hypothesis import strategies as st

TOPOLOGY_AWARE = {names.GPU_SCHEDULER_POLICY: "topology-aware"}


def uuid(node: str, i: int) -> str:
    return f"GPU-{node}-{i}"


def machine(node: str, n: int, shape: str, nvlinks: int = 18) -> NodeTopology:
    """n GPUs shaped like the fake NVML's topologies: halves on two NUMA nodes; pairs 2k, 2k+1 under a switch."""
    half = (n + 1) // 2
    gpus = tuple(GpuTopology(uuid=uuid(node, i), numa=int(i >= half)) for i in range(n))
    links = []
    for i, j in itertools.combinations(range(n), 2):
        same_node = (i >= half) == (j >= half)
        pair = same_node and i // 2 == j // 2
        if shape == "nvswitch":
            level, count = (PcieLevel.SAME_CPU if same_node else PcieLevel.CROSS_CPU), nvlinks
        elif shape == "ring":
            level = PcieLevel.SINGLE_SWITCH if pair else PcieLevel.MULTI_SWITCH if same_node else PcieLevel.CROSS_CPU
            count = nvlinks if (j - i) % n in (1, n - 1) else 0
        else:
            level = PcieLevel.SINGLE_SWITCH if pair else PcieLevel.HOST_BRIDGE if same_node else PcieLevel.CROSS_CPU
            count = 0
        links.append(Link(uuid(node, i), uuid(node, j), level, count))
    return NodeTopology(gpus=gpus, links=tuple(links))


def topo_node(name: str, n: int, shape: str, *, hami_table: bool = False, nvlinks: int = 18) -> dict[str, object]:
    node = node_json(name, [gpu(uuid(name, i), index=i, numa=int(i >= (n + 1) // 2)) for i in range(n)])
    topology = machine(name, n, shape, nvlinks)
    annotations = node["metadata"]["annotations"]  # type: ignore[index]
    if hami_table:
        annotations[names.NODE_SCORE] = encode_pair_scores(topology)
    else:
        annotations[names.NODE_TOPOLOGY] = encode_node_topology(topology)
    return node


def reference(scores: dict[str, dict[str, int]], free: Sequence[str], k: int) -> tuple[set[str], int]:
    """HAMi's device.go literally: every combination in order, the first with the highest total (k > 1); the
    first card with the lowest total to the other free ones (k == 1)."""
    if k == 1:
        totals = [sum(scores[a].get(b, 0) for b in free if b != a) for a in free]
        return {free[totals.index(min(totals))]}, 0
    best: tuple[str, ...] = ()
    best_score = -1
    for combo in itertools.combinations(free, k):
        total = sum(scores[a].get(b, 0) for a, b in itertools.combinations(combo, 2))
        if total > best_score:
            best, best_score = combo, total
    return set(best), best_score


def chosen(state: ClusterState, node: str, pod: dict[str, object], policy: Policy = Policy.SPREAD) -> list[str]:
    view = state.view(node)
    assert view is not None
    result = fit_pod(view, request_of(pod, gpu_policy=policy), best_sets=state.best_sets)
    assert result.grants is not None, result.message
    return [g.uuid for c in result.grants for g in c]


# --- the choice the policy prescribes ---------------------------------------------------------------------


def test_four_gpus_on_an_nvswitch_node_stay_on_one_numa_node() -> None:
    state = state_with(topo_node("dgx", 8, "nvswitch"))
    got = chosen(state, "dgx", pod_json(containers=[container(gpu=4)], annotations=TOPOLOGY_AWARE))
    # every pair has 18 NVLinks; the PCIe term decides: four GPUs of one NUMA node (NODE 20, not SYSTEM 10)
    assert got == [uuid("dgx", i) for i in range(4)]


def test_four_gpus_on_a_pcie_node_take_two_switch_pairs_of_one_numa_node() -> None:
    state = state_with(topo_node("pcie", 8, "pcie"))
    # GPUs 0 and 2 are taken whole: the best four are then the other NUMA node's two switch pairs
    for card in (0, 2):
        whole = pod_json(containers=[container(gpu=1, cores=100)], annotations={names.USE_GPUUUID: uuid("pcie", card)})
        allocation, _ = state.reserve_fit(
            uid=f"u{card}", namespace="d", name=f"p{card}", node="pcie", request=request_of(whole), now=0.0
        )
        assert allocation is not None
    got = chosen(state, "pcie", pod_json(containers=[container(gpu=4, mem=1000)], annotations=TOPOLOGY_AWARE))
    scores = machine("pcie", 8, "pcie").pair_scores()
    free = [uuid("pcie", i) for i in (1, 3, 4, 5, 6, 7)]
    want, want_score = reference(scores, free, 4)
    assert set(got) == want == {uuid("pcie", i) for i in (4, 5, 6, 7)}
    assert want_score == 2 * 50 + 4 * 30  # two switch pairs under one host bridge
    # spread alone takes the emptiest four in index order
    assert chosen(state, "pcie", pod_json(containers=[container(gpu=4, mem=1000)])) == [
        uuid("pcie", i) for i in (1, 3, 4, 5)
    ]


def test_without_the_policy_the_usage_order_decides() -> None:
    state = state_with(topo_node("dgx", 8, "nvswitch"))
    # spread on an idle node: the lowest indices, whatever the links
    assert chosen(state, "dgx", pod_json(containers=[container(gpu=4)])) == [uuid("dgx", i) for i in range(4)]


def test_a_hami_score_table_is_read_like_ours() -> None:
    ours = state_with(topo_node("n", 8, "ring", nvlinks=4))
    hamis = state_with(topo_node("n", 8, "ring", nvlinks=4, hami_table=True))
    pod = pod_json(containers=[container(gpu=3)], annotations=TOPOLOGY_AWARE)
    assert chosen(ours, "n", pod) == chosen(hamis, "n", pod)


@pytest.mark.parametrize(("shape", "n"), [("nvswitch", 8), ("ring", 8), ("pcie", 8), ("ring", 4), ("pcie", 16)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_choice_is_the_brute_force_optimum_with_random_usage(shape: str, n: int, data: st.DataObject) -> None:
    state = state_with(topo_node("m", n, shape, nvlinks=4 if shape == "ring" else 18))
    # some cards are full (a 100-core pod on each), the others take the pod
    full = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for i in sorted(full):
        pod = pod_json(containers=[container(gpu=1, cores=100)], annotations={names.USE_GPUUUID: uuid("m", i)})
        allocation, _ = state.reserve_fit(
            uid=f"full-{i}", namespace="d", name=f"f{i}", node="m", request=request_of(pod), now=0.0
        )
        assert allocation is not None
    free = [uuid("m", i) for i in range(n) if i not in full]
    k = data.draw(st.integers(1, len(free)))
    policy = data.draw(st.sampled_from([Policy.SPREAD, Policy.BINPACK]))
    got = chosen(state, "m", pod_json(containers=[container(gpu=k, mem=100)], annotations=TOPOLOGY_AWARE), policy)
    scores = machine("m", n, shape).pair_scores() if shape != "ring" else machine("m", n, shape, 4).pair_scores()
    _want, want_score = reference(scores, free, k)
    assert not set(got) & {uuid("m", i) for i in full}
    if k == 1:
        totals = {a: sum(scores[a].get(b, 0) for b in free if b != a) for a in free}
        assert totals[got[0]] == min(totals.values())
    else:
        got_score = sum(scores[a].get(b, 0) for a, b in itertools.combinations(got, 2))
        assert got_score == want_score
    assert len(set(got)) == k


def test_numa_bind_takes_the_best_connected_group() -> None:
    state = state_with(topo_node("r", 8, "ring", nvlinks=4))
    pod = pod_json(containers=[container(gpu=2)], annotations={**TOPOLOGY_AWARE, names.NUMA_BIND: "true"})
    got = chosen(state, "r", pod)
    view = state.view("r")
    assert view is not None
    numa = {d.uuid: d.numa for d in view.devices}
    assert len({numa[u] for u in got}) == 1
    scores = machine("r", 8, "ring", 4).pair_scores()
    assert scores[got[0]][got[1]] == 4 * 100 + 50  # ring neighbours under one switch


# --- node score (prioritize) ----------------------------------------------------------------------------------


def test_prioritize_prefers_the_node_whose_free_set_is_best_connected() -> None:
    state = state_with(topo_node("dgx", 8, "nvswitch"), topo_node("pcie", 8, "pcie"), node_json("plain"))
    request = request_of(pod_json(containers=[container(gpu=4)], annotations=TOPOLOGY_AWARE))
    scores = state.topology_priorities(["pcie", "dgx", "plain"], request)
    assert scores is not None
    # four of one NUMA node: NVSwitch 6 x (18 x 100 + 20), PCIe two switch pairs under one host bridge 2 x 50 + 4 x 30
    assert scores == [round(10 * 220 / (6 * 1820)), 10, 0]
    ring = state_with(topo_node("ring", 8, "ring", nvlinks=4), topo_node("pcie", 8, "pcie"))
    # ring: four consecutive GPUs, three NVLink hops: 3 x 400 + 2 x 50 + 4 x 40
    assert ring.topology_priorities(["ring", "pcie"], request) == [10, round(10 * 220 / 1460)]
    one_gpu = request_of(pod_json(containers=[container(gpu=1)], annotations=TOPOLOGY_AWARE))
    assert state.topology_priorities(["dgx"], one_gpu) is None  # one card: the usage score decides
    assert state.topology_priorities(["dgx"], request_of(pod_json(containers=[container(gpu=4)]))) is None


def test_scaled_scores() -> None:
    assert scaled_scores([None, 0, 50, 100]) == [0, 0, 5, 10]
    assert scaled_scores([None, None]) == [0, 0]


def test_the_cache_serves_identical_machines() -> None:
    nodes = [topo_node(f"n{i}", 8, "nvswitch") for i in range(20)]
    state = state_with(*nodes)
    request = request_of(pod_json(containers=[container(gpu=4)], annotations=TOPOLOGY_AWARE))
    state.topology_priorities([f"n{i}" for i in range(20)], request)
    # one search for the 20 identical machines: they share one links object, and the score is kept by it
    assert state.best_sets.misses == 1
    views = [state.view(f"n{i}") for i in range(20)]
    assert len({id(v.topology) for v in views if v is not None}) == 1
    state.topology_priorities(["n0"], request_of(pod_json(containers=[container(gpu=3)], annotations=TOPOLOGY_AWARE)))
    assert state.best_sets.misses == 2


def test_links_matrix_is_positional() -> None:
    links = NodeLinks.of(["a", "b"], {"a": {"b": 7}, "b": {"a": 7}})
    assert links.matrix == ((0, 7), (7, 0))
    assert NodeLinks.of(["x", "y"], {"x": {"y": 7}}) == NodeLinks.of(["a", "b"], {"a": {"b": 7}})


# --- untrusted topology annotations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "{", "[]", '{"version":1,"gpus":[{"uuid":1}]}', "[" * 10_000, '{"version":1}' + " " * 70_000]
)
def test_a_malformed_topology_is_ignored_and_counted(value: str) -> None:
    node = topo_node("bad", 8, "nvswitch")
    node["metadata"]["annotations"][names.NODE_TOPOLOGY] = value  # type: ignore[index]
    inventory = objects.node_inventory(node)
    assert inventory.registered
    assert inventory.topology is None
    assert inventory.topology_error
    state = state_with(node)
    assert state.topology_ignored() == 1
    # still placed, by the usage order
    assert chosen(state, "bad", pod_json(containers=[container(gpu=4)], annotations=TOPOLOGY_AWARE)) == [
        uuid("bad", i) for i in range(4)
    ]
    state.upsert_node(objects.node_inventory(topo_node("bad", 8, "nvswitch")))
    assert state.topology_ignored() == 0


# --- mutex --------------------------------------------------------------------------------------------------


MUTEX = {names.GPU_SCHEDULER_POLICY: "mutex"}


def test_a_mutex_pod_takes_only_a_card_without_tenant_and_blocks_sharing() -> None:
    state = state_with(node_json("n", [gpu("A", index=0), gpu("B", index=1)]))
    small = request_of(pod_json(containers=[container(gpu=1, mem=100)]), gpu_policy=Policy.BINPACK)
    first, _ = state.reserve_fit(uid="s", namespace="d", name="s", node="n", request=small, now=0.0)
    assert first is not None
    assert first.grants[0][0].uuid == "A"
    mutex = request_of(pod_json(containers=[container(gpu=1, mem=100)], annotations=MUTEX))
    held, _ = state.reserve_fit(uid="m", namespace="d", name="m", node="n", request=mutex, now=0.0)
    assert held is not None
    assert held.grants[0][0].uuid == "B"
    assert held.exclusive
    # nobody else may share B (nor A with a second mutex pod), however small and whatever the policy
    for policy in (Policy.BINPACK, Policy.SPREAD):
        other, result = state.reserve_fit(
            uid="o", namespace="d", name="o", node="n", request=request_of(pod_json(), gpu_policy=policy), now=0.0
        )
        assert other is not None
        assert other.grants[0][0].uuid == "A"
        state.unreserve("o")
    again, result = state.reserve_fit(uid="m2", namespace="d", name="m2", node="n", request=mutex, now=0.0)
    assert again is None
    assert result is not None
    assert result.reasons == {FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: 2}
    fits, failed, _ = state.screen(["n"], request_of(pod_json(containers=[container(gpu=2, mem=10)])))  # type: ignore[misc]
    assert fits == []
    assert "ExclusiveDeviceAllocateConflict" in failed["n"]
    # when the mutex pod ends, B is shared again
    state.unreserve("m")
    assert state.screen(["n"], request_of(pod_json(containers=[container(gpu=2, mem=10)])))[0] == ["n"]  # type: ignore[index]


def test_a_bound_mutex_pod_is_exclusive_after_a_restart() -> None:
    # What a mutex bind wrote (fit.py charges the whole card, 16000 MiB and 100 cores) in the protected annotation.
    pod = pod_json(annotations={**MUTEX, names.VGPU_NODE: "n"}, node_name="n")
    pod["metadata"]["annotations"][names.DEVICES_ALLOCATED] = "A,NVIDIA,16000,100:;"  # type: ignore[index]
    allocation = objects.pod_allocation(pod)
    assert allocation is not None
    state = state_with(node_json("n", [gpu("A", index=0)]))
    state.apply_pod(allocation.uid, allocation)
    view = state.view("n")
    assert view is not None
    assert view.devices[0].exclusive
    assert fit_pod(view, request_of(pod_json())).reasons == {FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: 1}


def test_exclusivity_comes_from_the_charge_not_from_the_tenant_writable_policy_annotation() -> None:
    # A tenant adds `mutex` to a running 1000 MiB pod (the annotation is not protected after creation): after a
    # restart its card must still be shared, since the pod was never charged the whole card.
    patched = pod_json(annotations={**MUTEX, names.VGPU_NODE: "n"}, node_name="n")
    patched["metadata"]["annotations"][names.DEVICES_ALLOCATED] = "A,NVIDIA,1000,0:;"  # type: ignore[index]
    # And a mutex pod placed under the operator's default chain (no annotation on the pod) stays exclusive.
    defaulted = pod_json("d", uid="uid-d", annotations={names.VGPU_NODE: "n"}, node_name="n")
    defaulted["metadata"]["annotations"][names.DEVICES_ALLOCATED] = "B,NVIDIA,16000,100:;"  # type: ignore[index]
    state = state_with(node_json("n", [gpu("A", index=0), gpu("B", index=1)]))
    for pod in (patched, defaulted):
        allocation = objects.pod_allocation(pod)
        assert allocation is not None
        state.apply_pod(allocation.uid, allocation)
    view = state.view("n")
    assert view is not None
    assert [d.exclusive for d in view.devices] == [False, True]
    result = fit_pod(view, request_of(pod_json(containers=[container(gpu=1, mem=100)])))
    assert result.grants is not None
    assert result.grants[0][0].uuid == "A"


# --- chains and weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("binpack", GpuPolicy(keys=(SortKey.BINPACK,))),
        (" Binpack , numa ", GpuPolicy(keys=(SortKey.BINPACK, SortKey.NUMA))),
        ("numa,spread,numa", GpuPolicy(keys=(SortKey.NUMA, SortKey.SPREAD))),
        ("mutex", GpuPolicy(keys=(SortKey.SPREAD,), mutex=True)),
        ("mutex,topology-aware", GpuPolicy(keys=(SortKey.SPREAD,), mutex=True, topology_aware=True)),
        ("binpack,whatever", GpuPolicy(keys=(SortKey.BINPACK,))),
    ],
)
def test_policy_chains_parse_as_hami(value: str, want: GpuPolicy) -> None:
    assert parse_gpu_policy(value) == want


@pytest.mark.parametrize("value", ["binpak", ",", "x" * 300])
def test_a_chain_naming_no_policy_is_refused(value: str) -> None:
    with pytest.raises(MalformedInputError, match="gpu-scheduler-policy"):
        parse_gpu_policy(value)


def test_the_numa_key_orders_before_the_usage_when_written_first() -> None:
    devices = [gpu("A", index=0, numa=1), gpu("B", index=1, numa=0)]
    state = state_with(node_json("n", devices))
    assert chosen(state, "n", pod_json(annotations={names.GPU_SCHEDULER_POLICY: "spread"})) == ["A"]
    assert chosen(state, "n", pod_json(annotations={names.GPU_SCHEDULER_POLICY: "numa,spread"})) == ["B"]


@pytest.mark.parametrize(
    ("value", "want"),
    [("slot=1,core=1,memory=3", ScoringWeights(1, 1, 3)), (" memory = 0 , slot=2,core=0", ScoringWeights(2, 0, 0))],
)
def test_scoring_weights_parse(value: str, want: ScoringWeights) -> None:
    assert parse_scoring_weights(value) == want


@pytest.mark.parametrize(
    "value",
    [
        "",
        "slot=1,core=1",
        "slot=1,core=1,memory=1,slot=1",
        "slot=0,core=0,memory=0",
        "slot=-1,core=1,memory=1",
        "slot=1,core=1,mem=1",
        "slot=1.5,core=1,memory=1",
        "slot=99999999,core=1,memory=1",
        "slot=١,core=1,memory=1",
    ],
)
def test_malformed_weights_are_refused_with_what_to_write(value: str) -> None:
    with pytest.raises(MalformedInputError, match="slot=<int>,core=<int>,memory=<int>"):
        parse_scoring_weights(value)
    pod = pod_json(annotations={"hami.io/device-scoring-weights": value})
    with pytest.raises(MalformedInputError):
        request_of(pod)


def test_weights_change_which_card_binpack_fills() -> None:
    # A: one slot of four taken with little memory; B: no slot taken, most memory taken (one pod of 10 slots).
    state = state_with(node_json("n", [gpu("A", index=0, count=2), gpu("B", index=1, count=10)]))
    for uid, uuid_, mem in (("a", "A", 100), ("b", "B", 12000)):
        pod = pod_json(containers=[container(gpu=1, mem=mem)], annotations={names.USE_GPUUUID: uuid_})
        assert state.reserve_fit(uid=uid, namespace="d", name=uid, node="n", request=request_of(pod), now=0.0)[0]
    by_slot = {names.GPU_SCHEDULER_POLICY: "binpack", "hami.io/device-scoring-weights": "slot=1,core=0,memory=0"}
    by_mem = {names.GPU_SCHEDULER_POLICY: "binpack", "hami.io/device-scoring-weights": "slot=0,core=0,memory=1"}
    assert chosen(state, "n", pod_json(containers=[container(gpu=1, mem=100)], annotations=by_slot)) == ["A"]
    assert chosen(state, "n", pod_json(containers=[container(gpu=1, mem=100)], annotations=by_mem)) == ["B"]


@settings(max_examples=30, deadline=None)
@given(
    holds=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.sampled_from([0, 50, 100])), max_size=25),
    k=st.integers(1, 6),
    mutex=st.booleans(),
)
def test_the_vectorised_node_score_equals_the_fit_per_node(
    holds: list[tuple[int, int, int]], k: int, mutex: bool
) -> None:
    nodes = [topo_node(f"t{i}", 8, ("nvswitch", "ring", "pcie")[i % 3], nvlinks=4) for i in range(5)]
    state = state_with(*nodes, node_json("plain"))
    for number, (n, card, cores) in enumerate(holds):
        if n == 5:
            continue
        pod = pod_json(
            containers=[container(gpu=1, mem=4000, cores=cores)], annotations={names.USE_GPUUUID: uuid(f"t{n}", card)}
        )
        state.reserve_fit(uid=f"h{number}", namespace="d", name="h", node=f"t{n}", request=request_of(pod), now=0.0)
    policy = "topology-aware,mutex" if mutex else "topology-aware"
    request = request_of(
        pod_json(containers=[container(gpu=k, mem=2000)], annotations={names.GPU_SCHEDULER_POLICY: policy})
    )
    names_ = [f"t{i}" for i in range(5)] + ["plain", "ghost"]
    fast = state.topology_priorities(names_, request) if k > 1 else None
    if k == 1:
        assert state.topology_priorities(names_, request) is None
        return
    per_node = []
    for name in names_:
        view = state.view(name)
        result = fit_pod(view, request) if view is not None and view.topology is not None else None
        per_node.append(result.topology_score if result is not None and result.fits else None)
    assert fast == scaled_scores(per_node)


def test_preempting_a_mutex_pod_frees_its_card() -> None:
    state = state_with(node_json("n", [gpu("A", index=0)]))
    mutex = request_of(pod_json(containers=[container(gpu=1, mem=100)], annotations=MUTEX))
    held, _ = state.reserve_fit(uid="m", namespace="d", name="m", node="n", request=mutex, now=0.0)
    assert held is not None
    view = state.view("n")
    assert view is not None
    assert view.devices[0].exclusive
    small = request_of(pod_json())
    assert not fit_pod(view, small).fits
    (victim,) = [Candidate(uid=a.uid, priority=0, usage=usage) for a, usage in state.holds_on("n")]
    assert fits_without(view, small, [victim])


def test_the_operator_default_chain_applies_without_the_annotation() -> None:
    default = parse_gpu_policy("binpack,topology-aware")
    options = placement_options({}, node_policy=Policy.BINPACK, gpu_policy=Policy.BINPACK, gpu_chain=default)
    assert options.topology_aware
    assert options.gpu_policy is Policy.BINPACK
    # the pod's own annotation replaces it
    mine = placement_options(
        {names.GPU_SCHEDULER_POLICY: "spread"}, node_policy=Policy.BINPACK, gpu_policy=Policy.BINPACK, gpu_chain=default
    )
    assert not mine.topology_aware
    assert mine.gpu_policy is Policy.SPREAD
