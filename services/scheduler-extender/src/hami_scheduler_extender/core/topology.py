"""A node's GPU interconnect as the extender uses it: HAMi's ``topology-aware`` choice of cards and the node score.

The pair scores (``hami_shared.topology_codec.node_pair_scores``) are turned into a matrix over the node's cards in
inventory order, keyed by position rather than UUID: identical machines then share one matrix value, so
:class:`~hami_shared.topology.BestSetCache` answers a cluster of them from a handful of entries (a UUID key would
never repeat across nodes). The choice and the score are ``hami_shared.topology``'s, the same code the device
plugin's GetPreferredAllocation runs, so both pick the same set.

Node score (prioritize) for a ``topology-aware`` pod asking for ``k > 1`` cards: HAMi adds the set score of the
chosen cards to the node's score, so the better-connected free set wins. Ours: the chosen set's score per node,
scaled to 0..10 against the best of the candidates (kube-scheduler weighs extender scores 0..10); a node without
topology data, or where the pod does not fit, scores 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

from hami_shared.topology import BestSetCache

Matrix = tuple[tuple[int, ...], ...]
CACHE_ENTRIES: Final = 4096
MAX_PRIORITY: Final = 10
"""kube-scheduler's MaxExtenderPriority (as ``fit.MAX_PRIORITY``; fit imports this module)."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeLinks:
    """Pair scores by card position (``matrix[i][j]``); ``scores`` the same keyed by position strings, for
    ``hami_shared.topology`` (built once per node inventory, not per request)."""

    matrix: Matrix
    scores: Mapping[str, Mapping[str, int]] = dataclasses.field(compare=False, hash=False, repr=False)

    @staticmethod
    def of(uuids: Sequence[str], pair_scores: Mapping[str, Mapping[str, int]]) -> NodeLinks:
        """The matrix of the cards ``uuids`` (inventory order); a pair the table does not list scores 0 (HAMi)."""
        rows = tuple(tuple(0 if a == b else pair_scores.get(a, {}).get(b, 0) for b in uuids) for a in uuids)
        return NodeLinks.from_matrix(rows)

    @staticmethod
    def from_matrix(matrix: Matrix) -> NodeLinks:
        scores = {str(i): {str(j): v for j, v in enumerate(row) if j != i} for i, row in enumerate(matrix)}
        return NodeLinks(matrix, scores)


class BestSets:
    """The best card set per (matrix, candidate positions, k), cached (LRU, bounded): one per usage cache."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self._cache = BestSetCache(max_entries)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def choose(self, links: NodeLinks, candidates: Sequence[int], k: int) -> tuple[tuple[int, ...], int] | None:
        """HAMi's choice of ``k`` among ``candidates`` (positions, in preference order: ties go to the first):
        the positions chosen (in that order) and their set score; None when fewer than ``k``."""
        choice = self._cache.best_set(links.matrix, links.scores, [str(c) for c in candidates], k)
        if choice is None:
            return None
        return tuple(int(u) for u in choice.uuids), choice.score


def scaled_scores(set_scores: Sequence[int | None]) -> list[int]:
    """Per node, its chosen set's score scaled to 0..10 against the best of them (None: 0)."""
    best = max((s for s in set_scores if s is not None), default=0)
    if best <= 0:
        return [0] * len(set_scores)
    return [0 if s is None else min(MAX_PRIORITY, max(0, round(s * MAX_PRIORITY / best))) for s in set_scores]
