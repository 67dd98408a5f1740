"""The monitor's decisions: per-container utilisation, the limiter's contention and priority signals,
and which per-container directories are garbage. Pure functions over values read by the adapters.

Signals (written into each container's region, read by hamicore's compute limiter):

* ``contended``: another container is active on the same physical GPU. Under the ``default`` core
  policy the limiter only throttles when this is set (HAMi semantics: a container alone on a card
  is not held back).
* ``priority_hold``: another active container on the same GPU has a higher priority (a lower
  ``CUDA_TASK_PRIORITY``, 0 being the highest, as in HAMi); the limiter then holds launches.

A container is active on a GPU when NVML saw its processes use the GPU in the last sample, or its
limiter recorded a kernel launch within the activity window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Final

DEFAULT_ACTIVITY_WINDOW_NS: Final = 5_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceActivity:
    """One container on one physical GPU."""

    container: str
    uuid: str
    priority: int
    active: bool


@dataclasses.dataclass(frozen=True, slots=True)
class LimiterSignal:
    contended: bool
    priority_hold: bool


def is_active(
    utilization_pct: int, last_kernel_ns: int, now_ns: int, window_ns: int = DEFAULT_ACTIVITY_WINDOW_NS
) -> bool:
    """Whether a container counts as running work on a GPU right now."""
    if utilization_pct > 0:
        return True
    return last_kernel_ns > 0 and 0 <= now_ns - last_kernel_ns <= window_ns


def container_utilization(pids: Iterable[int], samples: Mapping[int, int]) -> int:
    """Sum of the per-process SM utilisation samples (percent) of a container's processes, capped at 100."""
    return min(100, sum(samples.get(pid, 0) for pid in set(pids)))


def limiter_signals(entries: Iterable[DeviceActivity]) -> dict[tuple[str, str], LimiterSignal]:
    """Signals per (container, uuid) for every entry."""
    by_gpu: dict[str, list[DeviceActivity]] = {}
    for entry in entries:
        by_gpu.setdefault(entry.uuid, []).append(entry)
    out: dict[tuple[str, str], LimiterSignal] = {}
    for uuid, group in by_gpu.items():
        for entry in group:
            others = [o for o in group if o.container != entry.container and o.active]
            out[(entry.container, uuid)] = LimiterSignal(
                contended=bool(others),
                priority_hold=any(o.priority < entry.priority for o in others),
            )
    return out


def split_container_dir(name: str) -> tuple[str, str] | None:
    """``<podUID>_<container>`` into its parts (container names cannot contain '_'; UIDs neither)."""
    uid, sep, container = name.partition("_")
    if not sep or not uid or not container:
        return None
    return uid, container


def stale_container_dirs(
    dirs: Mapping[str, float], live_pod_uids: frozenset[str], now: float, *, grace_seconds: float
) -> tuple[str, ...]:
    """Directories (name -> last modification, seconds) whose pod is gone for longer than the grace.

    The grace covers a pod admitted moments before the watch cache saw it; directories whose name is
    not ours are never touched.
    """
    out = []
    for name, mtime in sorted(dirs.items()):
        parts = split_container_dir(name)
        if parts is None or parts[0] in live_pod_uids:
            continue
        if now - mtime >= grace_seconds:
            out.append(name)
    return tuple(out)
