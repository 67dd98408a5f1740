"""GPU health as a small state machine, fed by NVML events and probes (no I/O here).

* An XID critical error makes the GPU unhealthy, unless the XID is one that application faults
  cause (13 graphics engine exception, 31 memory page fault, 43 stopped processing, 45 preemptive
  cleanup, 68 video processor exception, 109 context switch timeout), which NVIDIA's and HAMi's plugins
  ignore too; the ignore list is configurable.
* A failed probe (the GPU no longer answers NVML queries) makes it unhealthy.
* An unhealthy GPU becomes healthy again once probes succeed and no error was seen for
  ``recovery_seconds`` (HAMi's plugin never marks a GPU healthy again; we do).
"""

from __future__ import annotations

import dataclasses
from typing import Final

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
