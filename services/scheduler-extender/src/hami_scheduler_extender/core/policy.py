"""GPU policy chains and device-scoring weights, read from pod annotations as HAMi (v2.10+) reads them.

``hami.io/gpu-scheduler-policy`` is a comma-separated chain (``binpack``, ``spread``, ``numa``, ``mutex``,
``topology-aware``): entries are trimmed and lower-cased, repeats dropped, unknown names ignored. ``mutex`` and
``topology-aware`` are filters, applied before any ordering: ``mutex`` admits only cards with no tenant (and we
keep the card to the pod while it runs, see ``fit.py``), ``topology-aware`` picks, among the cards that fit, the set
with the best interconnect (``hami_shared.topology``). ``binpack``, ``spread`` and ``numa`` are sort keys in the
order written (the first decides, the next break ties, then the device index); a chain of filters only sorts by
``spread``, as HAMi. A value naming no known policy at all is refused (HAMi would silently fall back to
``spread``; a typo such as ``binpak`` is better told than ignored).

``hami.io/device-scoring-weights`` is ``slot=<int>,core=<int>,memory=<int>``: exactly those three keys, each a
non-negative integer, at least one positive (HAMi's ``GetDeviceScoringWeightsByPod``); the device score is
``slot x slot ratio + core x core ratio + memory x memory ratio`` after placing (default 1/1/1).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

from hami_shared.errors import MalformedInputError
from hami_shared.names import GPU_SCHEDULER_POLICY

DEVICE_SCORING_WEIGHTS: Final = "hami.io/device-scoring-weights"
MAX_POLICY_CHARS: Final = 256
MAX_WEIGHTS_CHARS: Final = 128
MAX_WEIGHT: Final = 1_000_000
"""A weight above this is refused: it says nothing a smaller ratio would not, and keeps the score arithmetic small."""


class SortKey(enum.StrEnum):
    """Card orderings of a chain: fullest first, emptiest first, lowest NUMA node first."""

    BINPACK = "binpack"
    SPREAD = "spread"
    NUMA = "numa"


MUTEX: Final = "mutex"
TOPOLOGY_AWARE: Final = "topology-aware"
_SORT_NAMES: Final = frozenset(k.value for k in SortKey)
KNOWN: Final = frozenset({*_SORT_NAMES, MUTEX, TOPOLOGY_AWARE})


@dataclasses.dataclass(frozen=True, slots=True)
class GpuPolicy:
    """A parsed chain: the sort keys in order (never empty) and the two filters."""

    keys: tuple[SortKey, ...] = (SortKey.SPREAD,)
    mutex: bool = False
    topology_aware: bool = False

    @property
    def primary(self) -> SortKey:
        """The first of ``binpack``/``spread`` in the chain (``spread`` when the chain names neither)."""
        return next((k for k in self.keys if k is not SortKey.NUMA), SortKey.SPREAD)


@dataclasses.dataclass(frozen=True, slots=True)
class ScoringWeights:
    """HAMi's per-pod device-scoring weights (slot, core, memory ratios)."""

    slot: int = 1
    core: int = 1
    memory: int = 1


DEFAULT_WEIGHTS: Final = ScoringWeights()


def parse_gpu_policy(value: str, *, key: str = GPU_SCHEDULER_POLICY) -> GpuPolicy:
    """The chain in ``value`` (see the module docstring); :class:`MalformedInputError` when it names no policy."""
    if len(value) > MAX_POLICY_CHARS:
        raise MalformedInputError(key, value[:64], f"longer than {MAX_POLICY_CHARS} characters")
    names = list(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    known = [n for n in names if n in KNOWN]
    if not known:
        raise MalformedInputError(
            key, value, "supported policies are 'binpack', 'spread', 'numa', 'mutex' and 'topology-aware' (comma chain)"
        )
    keys = tuple(SortKey(n) for n in known if n in _SORT_NAMES)
    return GpuPolicy(keys=keys or (SortKey.SPREAD,), mutex=MUTEX in known, topology_aware=TOPOLOGY_AWARE in known)


def parse_scoring_weights(value: str) -> ScoringWeights:
    """HAMi's weights annotation; :class:`MalformedInputError` saying what to write when it is not that."""
    what = "expected 'slot=<int>,core=<int>,memory=<int>' with non-negative integers, at least one above 0"
    if len(value) > MAX_WEIGHTS_CHARS:
        raise MalformedInputError(DEVICE_SCORING_WEIGHTS, value[:64], what)
    found: dict[str, int] = {}
    for part in value.split(","):
        name, sep, number = part.partition("=")
        name, number = name.strip().lower(), number.strip()
        if not sep or name not in ("slot", "core", "memory") or name in found:
            raise MalformedInputError(DEVICE_SCORING_WEIGHTS, value, what)
        if not number.isascii() or not number.isdigit() or len(number) > 7 or int(number) > MAX_WEIGHT:
            raise MalformedInputError(DEVICE_SCORING_WEIGHTS, value, f"{what} (each at most {MAX_WEIGHT})")
        found[name] = int(number)
    if len(found) != 3 or not any(found.values()):
        raise MalformedInputError(DEVICE_SCORING_WEIGHTS, value, what)
    return ScoringWeights(slot=found["slot"], core=found["core"], memory=found["memory"])


def is_mutex(annotations_value: str | None) -> bool:
    """Whether a pod's policy annotation asks for exclusive cards (lenient: a bound pod's hold is read with it)."""
    if not annotations_value or len(annotations_value) > MAX_POLICY_CHARS:
        return False
    return MUTEX in (part.strip().lower() for part in annotations_value.split(","))
