"""Which host process is a region's process slot: the ``host_pid`` the monitor writes for hamicore.

hamicore records each process of a container as ``(pid, start_time)`` as the container sees them (the pid in its
PID namespace, the start time in clock ticks after boot). NVML names processes by their host pid, so hamicore's
limiter finds its container's processes in NVML's samples only through the ``host_pid`` the monitor fills in
(otherwise it measures the whole GPU and under-gives on a shared one).

From the host PID namespace, ``/proc/<host pid>/status`` shows a process's innermost pid (``NSpid:``) and
``/proc/<host pid>/stat`` the same start time: a slot is the host process whose innermost pid and start time both
match. Two such processes (same tick, same namespace pid) are told apart by the pod UID in ``/proc/<pid>/cgroup``;
if that does not settle it the slot stays unknown (0), which never gives a container more than its share.

The slots are the container's to write: it could name another container's process there. For a region of a
container the plugin allocated (``RegionProcesses.verify_pod``) a process is accepted only when its cgroup names
that pod, so a container can never claim a neighbour's process (and look busy whenever it runs).

Cost: a slot mapped before costs nothing (a process keeps its host pid for life); a non-zero ``host_pid`` found in
a slot is checked with two reads; only slots still unknown make the monitor index ``/proc``, at most once per
``min_index_interval_ns``, and a slot the index could not place is retried only after ``retry_ns``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from hami_device_plugin.core.region import ProcessUsage

DEFAULT_RETRY_NS: Final = 30_000_000_000
DEFAULT_MIN_INDEX_INTERVAL_NS: Final = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class ProcIdentity:
    """A host process as ``/proc`` shows it."""

    host_pid: int
    ns_pid: int  # pid in its own (innermost) PID namespace
    start_time: int  # clock ticks after boot


class ProcSource(Protocol):
    """Read access to the host's ``/proc`` (adapters/procfs.py; tests use a tree of files, a double)."""

    def identity(self, host_pid: int) -> ProcIdentity | None:
        """The process now at ``host_pid``, or None when there is none."""
        ...

    def index(self, start_times: frozenset[int]) -> list[ProcIdentity]:
        """Every process started in one of these ticks."""
        ...

    def cgroup(self, host_pid: int) -> str:
        """``/proc/<pid>/cgroup`` ("" when unreadable)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class RegionProcesses:
    """The live slots of one region; ``key`` names the region, ``pod_uid`` its pod ("" when unknown)."""

    key: str
    pod_uid: str
    processes: Sequence[ProcessUsage]
    verify_pod: bool = False
    """Accept only processes whose cgroup names ``pod_uid`` (a region of a container the plugin allocated)."""


SlotKey = tuple[str, int]


def parse_start_time(stat: str) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (the command name, field 2, may hold spaces and parentheses)."""
    _, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def parse_ns_pid(status: str) -> int | None:
    """The innermost pid of ``/proc/<pid>/status``: the last ``NSpid:`` field (``Pid:`` on kernels without it)."""
    pid = None
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "NSpid":
            fields = value.split()
            return int(fields[-1]) if fields else None
        if key == "Pid":
            pid = int(value)
    return pid


def in_pod(cgroup: str, pod_uid: str) -> bool:
    """Whether a ``/proc/<pid>/cgroup`` text names the pod (cgroupfs: ``pod<uid>``; systemd: ``-`` as ``_``)."""
    return bool(pod_uid) and (pod_uid in cgroup or pod_uid.replace("-", "_") in cgroup)


class HostPidMap:
    """The host pid of every live slot, remembered between scans (see the module docstring)."""

    def __init__(
        self, *, retry_ns: int = DEFAULT_RETRY_NS, min_index_interval_ns: int = DEFAULT_MIN_INDEX_INTERVAL_NS
    ) -> None:
        self._retry_ns = retry_ns
        self._min_index_interval_ns = min_index_interval_ns
        self._known: dict[SlotKey, tuple[int, int, int]] = {}  # -> (pid, start_time, host_pid)
        self._unknown: dict[SlotKey, tuple[int, int, int]] = {}  # -> (pid, start_time, when tried)
        self._last_index_ns: int | None = None
        self.indexes = 0  # /proc index passes so far
        self.last_unresolved = 0  # slots the latest index pass could not place

    def resolve(self, regions: Iterable[RegionProcesses], source: ProcSource, now_ns: int) -> dict[SlotKey, int]:
        """The host pid every live slot should hold (0 = unknown), keyed by (region key, slot)."""
        out: dict[SlotKey, int] = {}
        todo: list[tuple[SlotKey, RegionProcesses, ProcessUsage]] = []
        for region in regions:
            for p in region.processes:
                key = (region.key, p.slot)
                known = self._known.get(key)
                if known is not None and known[:2] == (p.pid, p.start_time):
                    out[key] = known[2]
                elif (
                    p.host_pid > 0
                    and self._matches(source.identity(p.host_pid), p)
                    and self._owned(source, region, p.host_pid)
                ):
                    self._remember(key, p, p.host_pid)
                    out[key] = p.host_pid
                else:
                    out[key] = 0
                    unknown = self._unknown.get(key)
                    if unknown is None or unknown[:2] != (p.pid, p.start_time) or now_ns - unknown[2] >= self._retry_ns:
                        todo.append((key, region, p))
        for gone in (self._known.keys() | self._unknown.keys()) - out.keys():
            self._known.pop(gone, None)
            self._unknown.pop(gone, None)
        if todo and (self._last_index_ns is None or now_ns - self._last_index_ns >= self._min_index_interval_ns):
            self._last_index_ns = now_ns
            self.indexes += 1
            self.last_unresolved = 0
            candidates: dict[tuple[int, int], list[int]] = {}
            for ident in source.index(frozenset(p.start_time for _, _, p in todo)):
                candidates.setdefault((ident.ns_pid, ident.start_time), []).append(ident.host_pid)
            for key, region, p in todo:
                found = candidates.get((p.pid, p.start_time), [])
                if len(found) > 1 or region.verify_pod:
                    found = [h for h in found if in_pod(source.cgroup(h), region.pod_uid)]
                if len(found) == 1:
                    self._remember(key, p, found[0])
                    out[key] = found[0]
                else:
                    self._unknown[key] = (p.pid, p.start_time, now_ns)
                    self.last_unresolved += 1
        return out

    @staticmethod
    def _owned(source: ProcSource, region: RegionProcesses, host_pid: int) -> bool:
        return not region.verify_pod or in_pod(source.cgroup(host_pid), region.pod_uid)

    @staticmethod
    def _matches(ident: ProcIdentity | None, p: ProcessUsage) -> bool:
        return ident is not None and (ident.ns_pid, ident.start_time) == (p.pid, p.start_time)

    def _remember(self, key: SlotKey, p: ProcessUsage, host_pid: int) -> None:
        self._known[key] = (p.pid, p.start_time, host_pid)
        self._unknown.pop(key, None)
