"""HAMi's ``topology-aware`` score and choice (hami_shared.topology) against a brute-force reference on the
modelled machines (DGX-style NVSwitch, NVLink ring, PCIe only: the same shapes as the fake NVML's
FAKE_GPU_TOPOLOGY) and on random score tables, and the two topology annotations' codecs."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Sequence

import pytest
from fuzzing import FUZZ, decode_or_refuse, fuzz_batch, seeds
from hami_shared import names
from hami_shared.errors import MalformedInputError
from hami_shared.topology import (
    BestSetCache,
    GpuTopology,
    Link,
    NodeTopology,
    PairScores,
    PcieLevel,
    best_set,
    pair_score,
    set_score,
)
from hami_shared.topology_codec import (
    MAX_TOPOLOGY_GPUS,
    decode_node_topology,
    decode_pair_scores,
    encode_node_topology,
    encode_pair_scores,
    node_pair_scores,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-000000000000"


def machine(n: int, shape: str, nvlinks: int = 18) -> NodeTopology:
    """A node of n GPUs shaped like the fake NVML's topologies: halves on two NUMA nodes; pairs 2k, 2k+1."""
    half = (n + 1) // 2
    gpus = tuple(
        GpuTopology(uuid=uuid(i), numa=int(i >= half), nvlink_version=4 if shape != "pcie" else 0) for i in range(n)
    )
    links = []
    for i, j in itertools.combinations(range(n), 2):
        same_node, pair = (i >= half) == (j >= half), (i >= half) == (j >= half) and i // 2 == j // 2
        if shape == "nvswitch":
            level, links_ij = (PcieLevel.SAME_CPU if same_node else PcieLevel.CROSS_CPU), nvlinks
        elif shape == "ring":
            level = PcieLevel.SINGLE_SWITCH if pair else PcieLevel.MULTI_SWITCH if same_node else PcieLevel.CROSS_CPU
            neighbours = (j - i) % n in (1, n - 1)
            links_ij = (2 * nvlinks if n == 2 else nvlinks) if neighbours else 0
        else:
            level = PcieLevel.SINGLE_SWITCH if pair else PcieLevel.HOST_BRIDGE if same_node else PcieLevel.CROSS_CPU
            links_ij = 0
        links.append(Link(uuid(i), uuid(j), level, links_ij))
    return NodeTopology(gpus=gpus, links=tuple(links))


def reference(scores: PairScores, free: Sequence[str], k: int) -> tuple[tuple[str, ...], int]:
    """HAMi's device.go, literally: every combination in order, the first with the highest total (k > 1); the
    first GPU with the lowest total to the other free ones (k == 1)."""
    if k == 1:
        totals = [sum(scores[a].get(b, 0) for b in free if b != a) for a in free]
        return (free[totals.index(min(totals))],), 0
    best: tuple[str, ...] = ()
    best_score = -1
    for combo in itertools.combinations(free, k):
        score = set_score(scores, combo)
        if score > best_score:
            best, best_score = combo, score
    return best, best_score


SHAPES = [("nvswitch", 8), ("ring", 8), ("ring", 4), ("pcie", 8), ("pcie", 4), ("ring", 16), ("pcie", 16)]


def test_pair_scores_follow_hamis_table() -> None:
    assert pair_score(PcieLevel.CROSS_CPU, 0) == 10
    assert pair_score(PcieLevel.SAME_CPU, 0) == 20
    assert pair_score(PcieLevel.HOST_BRIDGE, 0) == 30
    assert pair_score(PcieLevel.MULTI_SWITCH, 0) == 40
    assert pair_score(PcieLevel.SINGLE_SWITCH, 0) == 50
    assert pair_score(PcieLevel.SAME_BOARD, 0) == 60
    assert pair_score(PcieLevel.SAME_CPU, 18) == 1820  # DGX H100 pair: NODE + NV18
    assert pair_score(PcieLevel.CROSS_CPU, 36) == 1810  # HAMi's table ends at 18 links
    table = machine(8, "nvswitch").pair_scores()
    assert table[uuid(0)][uuid(1)] == 1820
    assert table[uuid(0)][uuid(7)] == 1810
    assert table[uuid(0)][uuid(1)] == table[uuid(1)][uuid(0)]


@pytest.mark.parametrize(
    ("shape", "n", "k"), [(shape, n, k) for shape, n in SHAPES for k in (1, 2, 3, 4, 5, 8, n - 1) if k <= n]
)
def test_best_set_matches_brute_force_on_the_modelled_machines(shape: str, n: int, k: int) -> None:
    scores = machine(n, shape).pair_scores()
    free = [uuid(i) for i in range(n)]
    choice = best_set(scores, free, k)
    assert choice is not None
    assert choice.exact
    expected, expected_score = reference(scores, free, k)
    assert (choice.uuids, choice.score) == (expected, expected_score)


@pytest.mark.parametrize(("shape", "n"), SHAPES)
def test_best_set_with_some_gpus_taken(shape: str, n: int) -> None:
    scores = machine(n, shape).pair_scores()
    for taken in ({0}, {1, 2}, {0, 3, 5}, set(range(0, n, 3))):
        free = [uuid(i) for i in range(n) if i not in taken]
        for k in (2, 3, 4):
            choice = best_set(scores, free, k)
            if k > len(free):
                assert choice is None
                continue
            assert choice is not None
            assert (choice.uuids, choice.score) == reference(scores, free, k)


def test_what_the_policy_prescribes_for_four_gpus() -> None:
    # PCIe node: two switch pairs under one host bridge beat anything across the CPUs
    pcie = best_set(machine(8, "pcie").pair_scores(), [uuid(i) for i in range(8)], 4)
    assert pcie is not None
    assert pcie.uuids == tuple(uuid(i) for i in range(4))
    # PCIe node with GPU 1 busy: the remaining intact half (4-7)
    busy = best_set(machine(8, "pcie").pair_scores(), [uuid(i) for i in range(8) if i != 1], 4)
    assert busy is not None
    assert busy.uuids == tuple(uuid(i) for i in range(4, 8))
    # ring: four consecutive GPUs (three NVLink hops) on one NUMA node
    ring = best_set(machine(8, "ring", nvlinks=2).pair_scores(), [uuid(i) for i in range(8)], 4)
    assert ring is not None
    assert ring.uuids == tuple(uuid(i) for i in range(4))
    # NVSwitch: all equal over NVLink; the PCIe side keeps the set on one CPU
    dgx = best_set(machine(8, "nvswitch").pair_scores(), [uuid(i) for i in (0, 4, 5, 2, 6, 7)], 4)
    assert dgx is not None
    assert set(dgx.uuids) == {uuid(i) for i in (4, 5, 6, 7)}


def test_one_gpu_takes_the_least_connected() -> None:
    scores = machine(8, "ring", nvlinks=2).pair_scores()
    free = [uuid(i) for i in (0, 1, 2, 5)]  # 5 has no free ring neighbour
    choice = best_set(scores, free, 1)
    assert choice is not None
    assert choice.uuids == (uuid(5),)


def test_impossible_requests() -> None:
    scores = machine(4, "pcie").pair_scores()
    assert best_set(scores, [uuid(0), uuid(1)], 3) is None
    assert best_set(scores, [uuid(0)], 0) is None
    whole = best_set(scores, [uuid(0), uuid(1)], 2)
    assert whole is not None
    assert whole.score == 50


def test_a_budget_ends_the_search_with_the_best_found() -> None:
    scores = machine(16, "pcie").pair_scores()
    free = [uuid(i) for i in range(16)]
    choice = best_set(scores, free, 8, budget=5)
    assert choice is not None
    assert not choice.exact
    assert choice.score == set_score(scores, choice.uuids)
    assert len(choice.uuids) == 8


@pytest.mark.parametrize("shape", ["ring", "pcie", "nvswitch"])
def test_sixteen_gpus_are_searched_exactly_and_fast(shape: str) -> None:
    scores = machine(16, shape).pair_scores()
    free = [uuid(i) for i in range(16)]
    started = time.perf_counter()
    for k in range(2, 16):
        choice = best_set(scores, free, k)
        assert choice is not None
        assert choice.exact
    per_call = (time.perf_counter() - started) / 14
    assert per_call < 0.05, f"{per_call * 1000:.1f} ms per 16-GPU search"


scores_strategy = st.integers(min_value=2, max_value=9).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.sampled_from([0, 10, 20, 30, 50, 60, 110, 220, 1820]), min_size=n * n, max_size=n * n),
    )
)


@settings(max_examples=150, deadline=None)
@given(scores_strategy, st.data())
def test_best_set_is_the_brute_force_optimum_on_random_tables(
    table: tuple[int, list[int]], data: st.DataObject
) -> None:
    n, values = table
    uuids = [uuid(i) for i in range(n)]
    scores = {uuids[i]: {uuids[j]: values[min(i, j) * n + max(i, j)] for j in range(n) if j != i} for i in range(n)}
    free = data.draw(st.permutations(uuids))
    free = free[: data.draw(st.integers(min_value=1, max_value=n))]
    k = data.draw(st.integers(min_value=1, max_value=len(free)))
    choice = best_set(scores, free, k)
    assert choice is not None
    assert choice.exact
    assert (choice.uuids, choice.score) == reference(scores, free, k)


# ---------------------------------------------------------------- codecs


@pytest.mark.parametrize(("shape", "n"), SHAPES)
def test_topology_annotation_round_trips(shape: str, n: int) -> None:
    topology = machine(n, shape)
    assert decode_node_topology(encode_node_topology(topology)) == topology


def test_pair_scores_annotation_is_hamis_json() -> None:
    topology = machine(2, "nvswitch")
    value = encode_pair_scores(topology)
    assert json.loads(value) == [
        {"uuid": uuid(0), "score": {uuid(1): 1810}},  # two GPUs: one per NUMA node
        {"uuid": uuid(1), "score": {uuid(0): 1810}},
    ]
    assert decode_pair_scores(value) == topology.pair_scores()


VALID = encode_node_topology(machine(2, "ring", nvlinks=4))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "[]",
        '{"version": 2, "gpus": [], "links": []}',
        '{"version": 1, "gpus": {}, "links": []}',
        VALID.replace('"pcie":"', '"pcie":"x'),
        VALID.replace('"b":1', '"b":0'),
        VALID.replace('"b":1', '"b":7'),
        VALID.replace('"nvlinks":8', '"nvlinks":37'),
        VALID.replace('"nvlinks":8', '"nvlinks":' + "9" * 30),
        VALID.replace(uuid(1), uuid(0)),
        VALID.replace('"links":[', '"links":[{"a":0,"b":1,"pcie":"node"},'),
        '{"version": 1, "gpus": [' + ",".join(f'{{"uuid":"{uuid(i)}"}}' for i in range(MAX_TOPOLOGY_GPUS + 1)) + "]}",
        "[" * 10000,
        "x" * (65 * 1024),
    ],
)
def test_topology_decoder_refuses_malformed_values(value: str) -> None:
    with pytest.raises(MalformedInputError):
        decode_node_topology(value)


@pytest.mark.parametrize(
    "value",
    [
        "{}",
        '[{"uuid": 1, "score": {}}]',
        '[{"uuid": "GPU-a", "score": {"GPU-b": -1}}]',
        '[{"uuid": "GPU-a", "score": {"GPU-b": "100"}}]',
        '[{"uuid": "GPU-a", "score": {"GPU-b": true}}]',
        '[{"uuid": "GPU-a"}, {"uuid": "GPU-a"}]',
        "[" + ",".join('{"uuid": "GPU-a"}' for _ in range(200)) + "]",
    ],
)
def test_score_decoder_refuses_malformed_values(value: str) -> None:
    with pytest.raises(MalformedInputError):
        decode_pair_scores(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_decoders_are_total(text: str) -> None:
    for decode in (decode_node_topology, decode_pair_scores):
        with contextlib.suppress(MalformedInputError):
            decode(text)


@FUZZ
@given(st.sampled_from([machine(n, shape, 3) for shape, n in SHAPES[:5]]), seeds)
def test_topology_decoders_fuzz(topology: NodeTopology, seed: int) -> None:
    """Near-valid mutations of real values (fuzzing.py): a value or our error, within the bounds, and what
    decodes encodes back to itself."""
    for value in [encode_node_topology(topology), *fuzz_batch(encode_node_topology(topology), seed)]:
        decoded = decode_or_refuse(decode_node_topology, value)
        if decoded is not None:
            assert len(decoded.gpus) <= MAX_TOPOLOGY_GPUS
            assert all(0 <= link.nvlinks <= 36 for link in decoded.links)
            assert decode_node_topology(encode_node_topology(decoded)) == decoded
    for value in [encode_pair_scores(topology), *fuzz_batch(encode_pair_scores(topology), seed)]:
        table = decode_or_refuse(decode_pair_scores, value)
        if table is not None:
            assert all(0 <= score <= 2**31 - 1 for row in table.values() for score in row.values())


def test_the_cache_answers_like_the_search_and_stays_bounded() -> None:
    cache = BestSetCache(max_entries=3)
    shapes = {shape: machine(8, shape).pair_scores() for shape in ("pcie", "ring", "nvswitch")}
    free = [uuid(i) for i in range(8)]
    for _ in range(2):
        for shape, scores in shapes.items():
            assert cache.best_set(shape, scores, free, 4) == best_set(scores, free, 4)
    assert (cache.hits, cache.misses) == (3, 3)
    cache.best_set("pcie", shapes["pcie"], free[1:], 4)  # a fourth entry: the least recently used (pcie) goes
    cache.best_set("ring", shapes["ring"], free, 4)
    assert (cache.hits, cache.misses) == (4, 4)
    cache.best_set("pcie", shapes["pcie"], free, 4)
    assert (cache.hits, cache.misses) == (4, 5)


def test_node_pair_scores_prefer_ours_then_hamis() -> None:
    ours, hamis = machine(4, "ring", 2), machine(4, "pcie")
    both = {names.NODE_TOPOLOGY: encode_node_topology(ours), names.NODE_SCORE: encode_pair_scores(hamis)}
    assert node_pair_scores(both) == ours.pair_scores()
    assert node_pair_scores({names.NODE_SCORE: encode_pair_scores(hamis)}) == hamis.pair_scores()
    assert node_pair_scores({names.NODE_REGISTER: "[]"}) is None
    with pytest.raises(MalformedInputError):
        node_pair_scores({names.NODE_TOPOLOGY: "{}", names.NODE_SCORE: encode_pair_scores(hamis)})
