"""The monitor's decisions: per-container utilisation, the limiter's contention and priority signals,
and which per-container directories are garbage. Pure functions over values read by the adapters.

Signals (written into each container's region, read by hamicore's compute limiter): ``contended``, another
container is active on the same physical GPU (under the ``default`` core policy the limiter only throttles then,
as in HAMi); ``priority_hold``, another active container on the same GPU has a higher priority (a lower
``CUDA_TASK_PRIORITY``, 0 the highest); the limiter then holds launches.

The GPUs and priorities are the plugin's record of each container (core/records.py), never what a container wrote
into its region. A container is active on a GPU when NVML's samples since the previous scan show its processes
using it (the region's ``last_kernel_ns`` is no signal: a container could keep it fresh to look busy forever).

NVML (:class:`UtilizationTracker`): each scan asks for the samples newer than the newest one it saw
(``lastSeenTimeStamp``), so activity ends with the scan after the last kernel. NVML publishes a sample period every
1/6 s to 1 s depending on the product; a scan that finds no new process sample while the GPU's own utilisation is
not 0 has no news and keeps the previous view, so containers do not flicker between active and idle.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Mapping
from typing import Final

from hami_device_plugin.core import region as region_core

# A view kept for lack of news is dropped after this long (twice NVML's longest sample period).
NO_NEWS_MAX_AGE_NS: Final = 2_000_000_000


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


def is_active(utilization_pct: int) -> bool:
    """Whether a container counts as running work on a GPU right now: NVML saw its processes use it."""
    return utilization_pct > 0


def layout_problem(snap: region_core.RegionSnapshot) -> str | None:
    """Why a parsed region does not have hamicore's fixed layout (None: it does). The monitor writes fields at
    offsets computed from the header; a header that moved them (the container can write it) is refused."""
    if (snap.devices_offset, snap.slots_offset, snap.slot_size) != (
        region_core.DEVICES_OFFSET,
        region_core.SLOTS_OFFSET,
        region_core.SLOT_SIZE,
    ):
        return (
            f"header places devices at {snap.devices_offset} and slots at {snap.slots_offset} (size "
            f"{snap.slot_size}); the layout has them at {region_core.DEVICES_OFFSET} and {region_core.SLOTS_OFFSET} "
            f"({region_core.SLOT_SIZE})"
        )
    return None


class UtilizationTracker:
    """Per GPU: where the next NVML query starts, and the per-process view the monitor decides on."""

    def __init__(self, *, max_age_ns: int = NO_NEWS_MAX_AGE_NS) -> None:
        self._max_age_ns = max_age_ns
        self._since: dict[str, int] = {}
        self._views: dict[str, tuple[Mapping[int, int], int]] = {}

    def since(self, uuid: str) -> int:
        """``lastSeenTimeStamp`` for the next query of this GPU (0 at first: NVML's whole buffer)."""
        return self._since.get(uuid, 0)

    def update(
        self, uuid: str, per_pid: Mapping[int, int], newest_us: int, device_pct: int | None, now_ns: int
    ) -> Mapping[int, int]:
        """The view after a query that returned ``per_pid`` (samples newer than :meth:`since`, the newest at
        ``newest_us``) while the GPU's utilisation over NVML's latest period was ``device_pct``."""
        self._since[uuid] = max(newest_us, self.since(uuid))
        previous = self._views.get(uuid)
        if per_pid:
            self._views[uuid] = (dict(per_pid), now_ns)
        elif not (device_pct and previous is not None and now_ns - previous[1] <= self._max_age_ns):
            self._views[uuid] = ({}, now_ns)
        return self._views[uuid][0]


def container_utilization(pids: Iterable[int], samples: Mapping[int, int]) -> int:
    """Sum of the per-process SM utilisation samples (percent) of a container's processes, capped at 100."""
    return min(100, sum(samples.get(pid, 0) for pid in set(pids)))


def limiter_signals(entries: Iterable[DeviceActivity]) -> dict[tuple[str, str], LimiterSignal]:
    """Signals per (container, uuid) for every entry; linear in the entries (a node's 110 containers with 8
    GPUs each are 880 of them, every scan)."""
    by_gpu: dict[str, list[DeviceActivity]] = {}
    for entry in entries:
        by_gpu.setdefault(entry.uuid, []).append(entry)
    out: dict[tuple[str, str], LimiterSignal] = {}
    for uuid, group in by_gpu.items():
        active: dict[str, int] = {}  # active container -> its highest priority (lowest number)
        for entry in group:
            if entry.active:
                active[entry.container] = min(entry.priority, active.get(entry.container, entry.priority))
        # the two highest-priority active containers: the best "other" of any container is one of them
        best = heapq.nsmallest(2, ((priority, container) for container, priority in active.items()))
        for entry in group:
            other = next((priority for priority, container in best if container != entry.container), None)
            out[(entry.container, uuid)] = LimiterSignal(
                contended=len(active) - (entry.container in active) > 0,
                priority_hold=other is not None and other < entry.priority,
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
