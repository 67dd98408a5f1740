"""The node backstop's decisions: a container's real GPU memory (NVML's per-process used memory of its host
processes) against its accounting (its region, which the container can rewrite) and its limit (the plugin's own
record, core/records.py, never the region). Pure functions and a small episode tracker; the monitor does the I/O.

Which processes are a container's (:func:`attribute`): a process NVML lists on the GPU whose ``/proc/<pid>/cgroup``
names the container's runtime ID (the kubelet's pod status), or names its pod when exactly one allocated container
of that pod holds that GPU (:func:`cgroup_owner`: the kernel's word, so a container that rewrites its region and
frees its slots hides nothing); for a process whose cgroup names none of them, the container one of whose process
slots names it (the monitor's host pid mapping, core/hostpid.py, or a process of the host's PID namespace).

Over the limit (:func:`reconcile`): real use above the limit by more than the tolerance (``max(min, percent of the
limit)``; by default 64 MiB or 5 %: what NVML counts and hamicore does not, such as a driver's per-process
bookkeeping, stays below it). An episode (:class:`Episodes`) starts when a container goes over and ends when it
is back within; it gets one Event, not one per scan. Under ``enforce`` the victims (:func:`victims`) are the
container's processes on that GPU, largest first, until what is left fits the limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from hami_device_plugin.core.hostpid import in_pod

OBSERVE: Final = "observe"
ENFORCE: Final = "enforce"
POLICIES: Final = (OBSERVE, ENFORCE)
DEFAULT_TOLERANCE_MIB: Final = 64
DEFAULT_TOLERANCE_PERCENT: Final = 5.0
MIB: Final = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Tolerance:
    """How far real use may exceed the limit before it counts: ``max(min_bytes, percent of the limit)``."""

    min_bytes: int = DEFAULT_TOLERANCE_MIB * MIB
    percent: float = DEFAULT_TOLERANCE_PERCENT

    def __post_init__(self) -> None:
        if self.min_bytes < 0 or not 0 <= self.percent <= 100:
            raise ValueError(f"tolerance {self.min_bytes} bytes / {self.percent} % is out of range")

    def bytes_for(self, limit_bytes: int) -> int:
        return max(self.min_bytes, int(limit_bytes * self.percent / 100))


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessUse:
    """One host process on one GPU: its identity at the scan (pid and start time) and NVML's used memory."""

    host_pid: int
    start_time: int
    used_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerGpu:
    """One allocated container on one of its GPUs, as the scan found it."""

    container: str  # <podUID>_<container>
    pod_uid: str
    uuid: str
    vdevice_index: int
    limit_bytes: int  # the plugin's record
    accounted_bytes: int  # the region's used_bytes (the container's word)
    slot_pids: frozenset[tuple[int, int]]  # (host pid, start time) of the container's process slots
    container_id: str = ""  # the runtime's ID (pod status; "" unknown)

    def owns(self, cgroup: str) -> bool:
        """Whether a ``/proc/<pid>/cgroup`` text is this container's (its ID) or its pod's."""
        return bool(self.container_id and self.container_id in cgroup) or in_pod(cgroup, self.pod_uid)


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceUse:
    gpu: ContainerGpu
    processes: tuple[ProcessUse, ...]

    @property
    def real_bytes(self) -> int:
        return sum(p.used_bytes for p in self.processes)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    use: DeviceUse
    tolerance_bytes: int
    over_limit: bool
    victims: tuple[ProcessUse, ...]  # to kill (enforce only)

    @property
    def gap_bytes(self) -> int:
        """Real minus accounted: what the container's accounting does not show."""
        return self.use.real_bytes - self.use.gpu.accounted_bytes


def cgroup_owner(cgroup: str, candidates: Iterable[ContainerGpu]) -> str | None:
    """The one container among ``candidates`` (those on one GPU) that a ``/proc/<pid>/cgroup`` text names: by
    its runtime ID, else by its pod's UID when that pod has only this container among them (None: no one, or
    several)."""
    gpus = list(candidates)
    by_id = {g.container for g in gpus if g.container_id and g.container_id in cgroup}
    if by_id:
        return by_id.pop() if len(by_id) == 1 else None
    by_pod = {g.container for g in gpus if in_pod(cgroup, g.pod_uid)}
    return by_pod.pop() if len(by_pod) == 1 else None


def attribute(
    gpus: Sequence[ContainerGpu],
    nvml: Mapping[str, Mapping[int, int]],
    start_times: Mapping[int, int],
    owner_of: Mapping[int, str],
) -> tuple[DeviceUse, ...]:
    """Each container GPU with its processes in NVML's list of that GPU (``nvml``: uuid -> host pid -> bytes).

    A pid is the container ``owner_of`` names (pid -> container, :func:`cgroup_owner`: the kernel's word) when that
    container is on the GPU; for a pid whose cgroup names no one, the container one of whose slots names it with
    its start time at the scan (a slot naming a pid since reused names another process). A pid that the slots of
    two containers claim belongs to neither (a slot is the container's to write). ``start_times``: each pid's
    start time at the scan; a pid without one is left out (it is gone, nothing to count or kill)."""
    by_slot: dict[tuple[str, int, int], set[str]] = {}
    on_gpu = {(g.uuid, g.container) for g in gpus}
    for g in gpus:
        for pid, start in g.slot_pids:
            by_slot.setdefault((g.uuid, pid, start), set()).add(g.container)
    owned: dict[tuple[str, str], list[ProcessUse]] = {}
    for uuid, per_pid in nvml.items():
        for pid, used in per_pid.items():
            if pid not in start_times:
                continue
            start = start_times[pid]
            owner = owner_of.get(pid)
            claims = {owner} if owner is not None else by_slot.get((uuid, pid, start), set())
            if len(claims) == 1 and (uuid, (container := next(iter(claims)))) in on_gpu:
                owned.setdefault((container, uuid), []).append(ProcessUse(pid, start, used))
    return tuple(
        DeviceUse(g, tuple(sorted(owned.get((g.container, g.uuid), ()), key=lambda p: p.host_pid))) for g in gpus
    )


def victims(processes: Sequence[ProcessUse], limit_bytes: int) -> tuple[ProcessUse, ...]:
    """The processes to kill so that what is left fits the limit: largest first (the fewest kills)."""
    left = sum(p.used_bytes for p in processes)
    out = []
    for p in sorted(processes, key=lambda p: (-p.used_bytes, p.host_pid)):
        if left <= limit_bytes:
            break
        if p.used_bytes > 0:
            out.append(p)
            left -= p.used_bytes
    return tuple(out)


def reconcile(use: DeviceUse, tolerance: Tolerance, policy: str) -> Verdict:
    """The verdict on one container GPU under ``policy``."""
    allowed = tolerance.bytes_for(use.gpu.limit_bytes)
    over = use.real_bytes > use.gpu.limit_bytes + allowed
    kill = victims(use.processes, use.gpu.limit_bytes) if over and policy == ENFORCE else ()
    return Verdict(use, allowed, over, kill)


class Episodes:
    """Which container GPUs are over their limit now; :meth:`update` says which episodes started this scan."""

    def __init__(self) -> None:
        self._open: set[tuple[str, str]] = set()

    def update(self, verdicts: Iterable[Verdict]) -> tuple[Verdict, ...]:
        """The verdicts that open an episode (over now, not over at the previous scan). A container GPU that
        is within its limit, or not in this scan (gone), ends its episode."""
        seen: set[tuple[str, str]] = set()
        started = []
        for v in verdicts:
            key = (v.use.gpu.container, v.use.gpu.uuid)
            if v.over_limit:
                seen.add(key)
                if key not in self._open:
                    started.append(v)
        self._open = seen
        return tuple(started)


def event_message(verdict: Verdict, policy: str, killed: Sequence[int], not_killed: Sequence[str] = ()) -> str:
    """The Event's text: what happened, real use, accounted use and limit (MiB), and what the policy did
    (``killed``: host pids; ``not_killed``: why other kills failed, as app/backstop.py's outcomes)."""
    g = verdict.use.gpu
    if policy == ENFORCE:
        action = (
            f"policy enforce: killed process(es) {', '.join(map(str, killed))} (host pids)"
            if killed
            else f"policy enforce: no process killed ({', '.join(not_killed) or 'none left'})"
        )
    else:
        action = "policy observe: nothing killed"
    return (
        f"GPU memory over limit on {g.uuid} (vdevice {g.vdevice_index}): the node measured "
        f"{verdict.use.real_bytes // MIB} MiB used by the container's processes (NVML), its own accounting "
        f"shows {g.accounted_bytes // MIB} MiB, its limit is {g.limit_bytes // MIB} MiB "
        f"(tolerance {verdict.tolerance_bytes // MIB} MiB); {action}"
    )
