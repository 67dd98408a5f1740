"""GPU health as a small state machine, fed by NVML events and probes (no I/O here).

An XID critical error makes the GPU unhealthy, unless it is one that application faults cause
(:data:`DEFAULT_IGNORED_XIDS`, ignored by NVIDIA's and HAMi's plugins too; configurable); so does a failed probe.
An unhealthy GPU becomes healthy again once probes succeed and no error was seen for ``recovery_seconds``
(HAMi's plugin never marks a GPU healthy again; we do).
"""

from __future__ import annotations

import dataclasses
from typing import Final

# graphics engine exception, memory page fault, stopped processing, preemptive cleanup, video processor
# exception, context switch timeout: application faults, not a failing GPU
DEFAULT_IGNORED_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})


@dataclasses.dataclass(frozen=True, slots=True)
class GpuHealth:
    """Health of one GPU. ``last_error`` is a monotonic time in seconds (None = never failed)."""

    healthy: bool = True
    last_error: float | None = None
    reason: str = ""


def on_xid(current: GpuHealth, code: int, now: float, *, ignored: frozenset[int] = DEFAULT_IGNORED_XIDS) -> GpuHealth:
    """After an XID critical error event with ``code``."""
    if code in ignored:
        return current
    return GpuHealth(healthy=False, last_error=now, reason=f"XID {code} critical error")


def on_probe(current: GpuHealth, answered: bool, now: float, *, recovery_seconds: float) -> GpuHealth:
    """After a probe query: ``answered`` is False when NVML reports the GPU lost or failing."""
    if not answered:
        return GpuHealth(healthy=False, last_error=now, reason="GPU does not answer NVML queries")
    if current.healthy:
        return current
    if current.last_error is None or now - current.last_error >= recovery_seconds:
        return GpuHealth(healthy=True, last_error=current.last_error, reason="")
    return current
