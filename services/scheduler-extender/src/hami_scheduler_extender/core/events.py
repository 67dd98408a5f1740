"""The pod Events of the extender: HAMi's four reasons and messages, and the gate that keeps a burst from
flooding the API server.

HAMi's scheduler (``pkg/scheduler/events.go``, ``scheduler.go``) records ``FilteringSucceed`` / ``FilteringFailed``
from filter and ``BindingSucceed`` / ``BindingFailed`` from bind, success and failure alike, through client-go's
EventRecorder, whose correlator lets at most 25 Events per object through and then one per 5 minutes. We keep
HAMi's reasons and message shapes (operators grep for them) and add, to a failure, what to change. The gate
(:class:`EventGate`) bounds the writes: one Event per pod and reason per ``pod_interval`` (kube-scheduler
retries an unschedulable pod every few seconds; the first Event says it all), and per reason a token bucket
(``rate`` per second after ``burst``), so N failing pods cost at most ``burst + rate x seconds`` writes whatever N.
Pure: the caller passes the time.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

from hami_scheduler_extender.core.model import FailureReason

FILTERING_FAILED: Final = "FilteringFailed"
FILTERING_SUCCEED: Final = "FilteringSucceed"
BINDING_FAILED: Final = "BindingFailed"
BINDING_SUCCEED: Final = "BindingSucceed"
REASONS: Final = (FILTERING_FAILED, FILTERING_SUCCEED, BINDING_FAILED, BINDING_SUCCEED)

MAX_NODES_NAMED: Final = 10
"""Nodes listed in a FilteringSucceed message (HAMi lists all; at 5,000 nodes that is a 100 KB Event)."""

# What a pod author can change when most nodes refuse for this reason (the message says it after HAMi's text).
_HINTS: Final[Mapping[str, str]] = {
    FailureReason.CARD_TYPE_MISMATCH: "check the nvidia.com/use-gputype, nouse-gputype and vgpu-mode annotations",
    FailureReason.CARD_UUID_MISMATCH: "check the nvidia.com/use-gpuuuid and nouse-gpuuuid annotations",
    FailureReason.CARD_TIME_SLICING_EXHAUSTED: "every card holds its split count of containers; wait or add GPUs",
    FailureReason.CARD_COMPUTE_UNITS_EXHAUSTED: "the cards' cores are all allocated; lower nvidia.com/gpucores",
    FailureReason.CARD_INSUFFICIENT_MEMORY: "lower nvidia.com/gpumem (or gpumem-percentage) or wait for memory",
    FailureReason.CARD_INSUFFICIENT_CORE: "lower nvidia.com/gpucores or wait for cores to free up",
    FailureReason.CARD_NOT_HEALTH: "the cards are unhealthy; see the device plugin's log on those nodes",
    FailureReason.CARD_CORDONED: "the cards are cordoned (hami.io/device-cordon)",
    FailureReason.NUMA_NOT_FIT: "drop the nvidia.com/numa-bind annotation or ask for fewer GPUs",
    FailureReason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: "a whole card (gpucores 100) needs an idle card; lower "
    "nvidia.com/gpucores to share one",
    FailureReason.NODE_INSUFFICIENT_DEVICE: "ask for fewer nvidia.com/gpu than the nodes have cards",
    FailureReason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST: "ask for fewer nvidia.com/gpu or less per GPU",
    FailureReason.NODE_UNREGISTERED: "no device plugin reports GPUs on those nodes; check the hami-device-plugin "
    "DaemonSet",
    "ResourceQuotaNotFit": "the namespace's ResourceQuota on nvidia.com/gpumem or gpucores is used up; lower the "
    "request or raise the quota",
}


def filtering_failed(candidates: int, tally: Mapping[str, int]) -> str:
    """HAMi's ``no available node, N nodes do not meet`` with the reasons by count and what to change."""
    ranked = sorted(tally.items(), key=lambda item: (-item[1], item[0]))
    summary = ", ".join(f"{n} nodes {reason}" for reason, n in ranked)
    text = f"no available node, {candidates} nodes do not meet"
    if summary:
        text += f": {summary}"
    hint = _HINTS.get(ranked[0][0]) if ranked else None
    return f"{text}; {hint}" if hint else text


def filtering_succeed(candidates: int, fits: Sequence[str], scores: Sequence[float]) -> str:
    """HAMi's ``find fit node(<best>), N nodes not fit, M nodes fit(<node>:<score>,...)``, the best first;
    ``scores`` are those of ``fits`` (at least the first MAX_NODES_NAMED)."""
    ranked = sorted(zip(fits, scores, strict=False), key=lambda item: -item[1])
    shown = ",".join(f"{node}:{score:.2f}" for node, score in ranked[:MAX_NODES_NAMED])
    if len(fits) > MAX_NODES_NAMED:
        shown += f",... {len(fits) - MAX_NODES_NAMED} more"
    best = ranked[0][0] if ranked else ""
    return f"find fit node({best}), {candidates - len(fits)} nodes not fit, {len(fits)} nodes fit({shown})"


def binding_succeed(node: str, namespace: str, name: str, gpus: Sequence[str] = ()) -> str:
    """HAMi's ``Successfully binding node [<node>] to <ns>/<pod>``, plus the GPUs taken."""
    text = f"Successfully binding node [{node}] to {namespace}/{name}"
    return f"{text} (GPUs {', '.join(gpus)})" if gpus else text


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventLimits:
    """How many Events the extender may write (module docstring)."""

    pod_interval: float = 60.0
    rate: float = 10.0
    burst: int = 100
    max_pods: int = 16_384
    """Pods remembered for ``pod_interval`` (oldest forgotten first: a bound on memory, not on writes)."""

    def __post_init__(self) -> None:
        if self.pod_interval < 0 or not self.rate > 0 or self.burst < 1 or self.max_pods < 1:
            raise ValueError(
                "event limits: pod interval must be >= 0, rate > 0, burst >= 1 and max pods >= 1 "
                f"(got {self.pod_interval}, {self.rate}, {self.burst}, {self.max_pods})"
            )


class EventGate:
    """Says whether an Event may be written now (module docstring); counts what it holds back."""

    def __init__(self, limits: EventLimits, *, now: float) -> None:
        self._limits = limits
        self._tokens: dict[str, float] = {}
        self._refilled: dict[str, float] = {}
        self._start = now
        self._last_of: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self.suppressed: collections.Counter[str] = collections.Counter()
        """Events held back, by reason."""

    def admit(self, pod: str, reason: str, now: float) -> bool:
        """Whether the Event ``reason`` about ``pod`` (its namespace/name) may be written at ``now``."""
        limits = self._limits
        key = (pod, reason)
        last = self._last_of.get(key)
        if last is not None and now - last < limits.pod_interval:
            self.suppressed[reason] += 1
            return False
        tokens = min(
            float(limits.burst),
            self._tokens.get(reason, float(limits.burst))
            + (now - self._refilled.get(reason, self._start)) * limits.rate,
        )
        self._refilled[reason] = now
        if tokens < 1.0:
            self._tokens[reason] = tokens
            self.suppressed[reason] += 1
            return False
        self._tokens[reason] = tokens - 1.0
        self._last_of[key] = now
        self._last_of.move_to_end(key)
        while len(self._last_of) > limits.max_pods:
            self._last_of.popitem(last=False)
        return True
