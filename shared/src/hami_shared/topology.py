"""GPU interconnect of a node and HAMi's ``topology-aware`` choice of GPUs over it: pure values and decisions,
shared by the device plugin (GetPreferredAllocation) and the scheduler extender (filter and score), so both
choose the same set.

Scores follow HAMi (``pkg/device/nvidia/calculate_score.go``, ``links.go``, ``device.go``):

* the pair score of two GPUs is their PCIe relation (NVML's common ancestor: cross-CPU 10, same CPU 20, host
  bridge 30, multiple switches 40, single switch 50, same board 60) plus 100 per NVLink between them (direct
  links, or through NVSwitches the fewer of the two GPUs' switch links), up to HAMi's 18 links;
* the score of a set is the sum of its pairs' scores; a request of ``k > 1`` GPUs takes the free set of size
  ``k`` with the highest score, a request of one GPU the free GPU with the lowest summed score to the other free
  GPUs (it keeps the well-connected ones together for later multi-GPU pods). Ties go to the first candidate in
  the caller's order (HAMi: the first combination in its device order).

The search (:func:`best_set`) is exact: a depth-first search over combinations in order with a branch-and-bound
on the score the remaining picks can still add; past :data:`SEARCH_BUDGET` visited nodes (only reachable well
beyond 16 free GPUs) it returns the best set found so far, seeded by a greedy choice, and says so.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Mapping, Sequence
from typing import Final

NVLINK_SCORE: Final = 100
"""HAMi's score per NVLink between two GPUs."""
MAX_SCORED_NVLINKS: Final = 18
"""HAMi's table ends at 18 links (``EighteenNVLINKLinks``); more count as 18 here."""
SEARCH_BUDGET: Final = 200_000
"""Depth-first nodes :func:`best_set` visits at most; 16 free GPUs need far fewer (tests/test_topology.py)."""


class PcieLevel(enum.IntEnum):
    """How two GPUs meet on PCIe (NVML's ``nvmlGpuTopologyLevel_t``), valued as HAMi's ``P2PLinkType``
    (x10 is the score). Higher is closer."""

    CROSS_CPU = 1  # NVML_TOPOLOGY_SYSTEM: across the CPUs' interconnect (different NUMA nodes)
    SAME_CPU = 2  # NVML_TOPOLOGY_NODE: same NUMA node, different host bridges
    HOST_BRIDGE = 3  # NVML_TOPOLOGY_HOSTBRIDGE
    MULTI_SWITCH = 4  # NVML_TOPOLOGY_MULTIPLE: through several PCIe switches
    SINGLE_SWITCH = 5  # NVML_TOPOLOGY_SINGLE: one PCIe switch
    SAME_BOARD = 6  # NVML_TOPOLOGY_INTERNAL: two GPUs of one board


NVML_LEVELS: Final[Mapping[int, PcieLevel]] = {
    0: PcieLevel.SAME_BOARD,
    10: PcieLevel.SINGLE_SWITCH,
    20: PcieLevel.MULTI_SWITCH,
    30: PcieLevel.HOST_BRIDGE,
    40: PcieLevel.SAME_CPU,
    50: PcieLevel.CROSS_CPU,
}
"""NVML's ``NVML_TOPOLOGY_*`` values to levels."""


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """How two GPUs (``a`` before ``b`` in the node's GPU order) are connected: their PCIe relation and the
    NVLinks between them (0: none; through NVSwitches, the fewer of the two GPUs' switch links)."""

    a: str
    b: str
    pcie: PcieLevel
    nvlinks: int = 0

    @property
    def score(self) -> int:
        return pair_score(self.pcie, self.nvlinks)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GpuTopology:
    """One GPU's place: its NUMA node, its NVLink generation (0: no NVLink) and how many of its NVLink ports
    are up, and whether they go to NVSwitches."""

    uuid: str
    numa: int = 0
    nvlink_version: int = 0
    nvlink_ports: int = 0
    nvswitch: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class NodeTopology:
    """The GPUs of a node (index order) and the link of every pair of them that NVML could tell."""

    gpus: tuple[GpuTopology, ...]
    links: tuple[Link, ...]

    def pair_scores(self) -> dict[str, dict[str, int]]:
        """HAMi's pair-score table (``hami.io/node-nvidia-score``): every GPU to every other one."""
        table: dict[str, dict[str, int]] = {g.uuid: {} for g in self.gpus}
        for link in self.links:
            if link.a in table and link.b in table and link.a != link.b:
                table[link.a][link.b] = link.score
                table[link.b][link.a] = link.score
        return table


def pair_score(pcie: PcieLevel, nvlinks: int) -> int:
    """HAMi's score of one pair of GPUs."""
    return 10 * int(pcie) + NVLINK_SCORE * max(0, min(nvlinks, MAX_SCORED_NVLINKS))


PairScores = Mapping[str, Mapping[str, int]]
"""Pair scores by GPU UUID and peer UUID (HAMi's table); a missing pair scores 0, as in HAMi."""


def _score(scores: PairScores, a: str, b: str) -> int:
    row = scores.get(a)
    return 0 if row is None else row.get(b, 0)


def set_score(scores: PairScores, uuids: Sequence[str]) -> int:
    """The summed pair scores of a set of GPUs (HAMi's ``computeBestCombination`` total)."""
    return sum(_score(scores, uuids[i], uuids[j]) for i in range(len(uuids)) for j in range(i + 1, len(uuids)))


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The GPUs chosen (in the caller's order), their set score, and whether the search was exhaustive."""

    uuids: tuple[str, ...]
    score: int
    exact: bool = True


def best_set(scores: PairScores, free: Sequence[str], k: int, *, budget: int = SEARCH_BUDGET) -> Choice | None:
    """HAMi's ``topology-aware`` choice of ``k`` GPUs among ``free`` (distinct UUIDs, in preference order):
    for ``k == 1`` the GPU least connected to the other free ones, else the set with the highest score. None
    when fewer than ``k`` are free or ``k < 1``."""
    candidates = list(dict.fromkeys(free))
    n = len(candidates)
    if k < 1 or k > n:
        return None
    weights = [[_score(scores, a, b) if a != b else 0 for b in candidates] for a in candidates]
    if k == 1:
        totals = [sum(row) for row in weights]
        pick = min(range(n), key=lambda i: totals[i])  # first of the lowest, like HAMi
        return Choice((candidates[pick],), 0)
    if k == n:
        return Choice(tuple(candidates), _total(weights, list(range(n))))
    picked, score, exact = _search(weights, k, budget)
    return Choice(tuple(candidates[i] for i in picked), score, exact)


class BestSetCache:
    """:func:`best_set` answers kept by (topology key, free GPUs, k), for callers that ask for many nodes of few
    shapes (the extender's filter across a cluster of identical machines): ``key`` identifies the pair scores,
    e.g. the node's annotation value. Bounded (least recently used out); one per caller, not thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: dict[tuple[Hashable, tuple[str, ...], int], Choice | None] = {}
        self.hits = 0
        self.misses = 0

    def best_set(self, key: Hashable, scores: PairScores, free: Sequence[str], k: int) -> Choice | None:
        entry = (key, tuple(free), k)
        if entry in self._entries:
            self.hits += 1
            choice = self._entries.pop(entry)
            self._entries[entry] = choice  # most recently used last
            return choice
        self.misses += 1
        choice = best_set(scores, free, k)
        self._entries[entry] = choice
        if len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]
        return choice


def _total(weights: list[list[int]], picked: list[int]) -> int:
    return sum(weights[picked[i]][picked[j]] for i in range(len(picked)) for j in range(i + 1, len(picked)))


def _greedy(weights: list[list[int]], k: int) -> list[int]:
    """The best pair, then the GPU adding the most, until ``k``: the search's first bound."""
    n = len(weights)
    first = max(((i, j) for i in range(n) for j in range(i + 1, n)), key=lambda p: weights[p[0]][p[1]])
    picked = list(first)
    while len(picked) < k:
        rest = (c for c in range(n) if c not in picked)
        picked.append(max(rest, key=lambda c: sum(weights[c][p] for p in picked)))
    return sorted(picked)


def _search(weights: list[list[int]], k: int, budget: int) -> tuple[list[int], int, bool]:
    """The lexicographically first index set of size ``k`` with the highest total (exact within ``budget``)."""
    n = len(weights)
    seed = _greedy(weights, k)
    best: list[int] = seed
    best_score = _total(weights, seed)
    found = False  # best came from the ordered search (so an equal score later is not better)
    # per candidate, its pair weights to later candidates, high to low: a pair of picks is counted at its
    # earlier end, so a pick adds at most its weight to the set so far plus its r-1 best weights to later ones
    later_sorted = [sorted(weights[c][c + 1 :], reverse=True) for c in range(n)]
    # or at most its weight to the set so far, the new pairs each at most the heaviest pair left (tight when the
    # weights are nearly equal, as over NVSwitches)
    heaviest_from = [0] * (n + 1)
    for c in range(n - 1, -1, -1):
        heaviest_from[c] = max([heaviest_from[c + 1], *weights[c][c + 1 :]])
    visited = 0
    exhausted = False
    stack: list[int] = []
    to_set = [0] * n  # to_set[c]: summed weight from c to the current partial set

    def bound_ok(start: int, current: int) -> bool:
        r = k - len(stack)
        gains = sorted((to_set[c] + sum(later_sorted[c][: r - 1]) for c in range(start, n)), reverse=True)
        to_set_only = sorted((to_set[c] for c in range(start, n)), reverse=True)
        new_pairs = r * (r - 1) // 2 * heaviest_from[start]
        upper = current + min(sum(gains[:r]), sum(to_set_only[:r]) + new_pairs)
        return upper > best_score or (upper == best_score and not found)

    def visit(start: int, current: int) -> None:
        nonlocal best, best_score, found, visited, exhausted
        visited += 1
        if visited > budget:
            exhausted = True
            return
        if len(stack) == k:
            if current > best_score or (current == best_score and not found):
                best, best_score, found = list(stack), current, True
            return
        r = k - len(stack)
        if n - start < r or not bound_ok(start, current):
            return
        for c in range(start, n - r + 1):
            gain = to_set[c]
            stack.append(c)
            for d in range(n):
                to_set[d] += weights[c][d]
            visit(c + 1, current + gain)
            for d in range(n):
                to_set[d] -= weights[c][d]
            stack.pop()
            if exhausted:
                return

    visit(0, 0)
    return best, best_score, not exhausted
