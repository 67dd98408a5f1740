"""Mapping process slots to host pids (core/hostpid.py) over an in-memory stand-in of /proc (a test double
that counts what the mapper asks for); the real /proc and processes in real PID namespaces are in
tests/component/test_host_pids.py."""

from __future__ import annotations

import dataclasses

from hami_device_plugin.core.hostpid import (
    HostPidMap,
    ProcIdentity,
    RegionProcesses,
    in_pod,
    parse_ns_pid,
    parse_start_time,
)
from hami_device_plugin.core.region import ProcessUsage

SECOND = 1_000_000_000


@dataclasses.dataclass
class ProcDouble:
    """Test double of the host's /proc: processes by host pid, with the calls made."""

    procs: dict[int, ProcIdentity] = dataclasses.field(default_factory=dict)
    cgroups: dict[int, str] = dataclasses.field(default_factory=dict)
    identity_calls: list[int] = dataclasses.field(default_factory=list)
    index_calls: list[frozenset[int]] = dataclasses.field(default_factory=list)

    def add(self, host_pid: int, ns_pid: int, start_time: int, cgroup: str = "") -> None:
        self.procs[host_pid] = ProcIdentity(host_pid, ns_pid, start_time)
        self.cgroups[host_pid] = cgroup

    def identity(self, host_pid: int) -> ProcIdentity | None:
        self.identity_calls.append(host_pid)
        return self.procs.get(host_pid)

    def index(self, start_times: frozenset[int]) -> list[ProcIdentity]:
        self.index_calls.append(start_times)
        return [p for p in self.procs.values() if p.start_time in start_times]

    def cgroup(self, host_pid: int) -> str:
        return self.cgroups.get(host_pid, "")


def slot(slot: int, pid: int, start: int, host_pid: int = 0) -> ProcessUsage:
    return ProcessUsage(slot=slot, pid=pid, start_time=start, host_pid=host_pid, used_bytes=())


def region(key: str, *processes: ProcessUsage, uid: str = "") -> RegionProcesses:
    return RegionProcesses(key, uid, processes)


def test_a_slot_maps_to_the_process_with_its_namespace_pid_and_start_time() -> None:
    proc = ProcDouble()
    proc.add(4242, 1, 500)  # container A's pid 1
    proc.add(4300, 1, 777)  # container B's pid 1, started later
    proc.add(4301, 7, 777)  # B's pid 7, same tick
    proc.add(1, 1, 3)  # the host's init
    got = HostPidMap().resolve(
        [region("a", slot(1, 1, 500)), region("b", slot(1, 1, 777), slot(7, 7, 777))], proc, 10 * SECOND
    )
    assert got == {("a", 1): 4242, ("b", 1): 4300, ("b", 7): 4301}
    assert proc.index_calls == [frozenset({500, 777})]  # one pass for every new slot


def test_known_slots_cost_nothing_and_a_new_process_in_a_slot_is_looked_up_again() -> None:
    proc = ProcDouble()
    proc.add(4242, 1, 500)
    pids = HostPidMap(min_index_interval_ns=0)
    pids.resolve([region("a", slot(1, 1, 500))], proc, 10 * SECOND)
    proc.index_calls.clear()
    # the monitor wrote it: later scans see it in the slot and trust what they mapped
    assert pids.resolve([region("a", slot(1, 1, 500, host_pid=4242))], proc, 11 * SECOND) == {("a", 1): 4242}
    assert proc.index_calls == []
    assert proc.identity_calls == []
    # the process exited, another took the slot (hamicore zeroes host_pid when it claims one)
    proc.add(5000, 9, 900)
    assert pids.resolve([region("a", slot(1, 9, 900))], proc, 12 * SECOND) == {("a", 1): 5000}
    assert proc.index_calls == [frozenset({900})]


def test_a_host_pid_found_in_a_slot_is_checked_not_trusted() -> None:
    proc = ProcDouble()
    proc.add(4242, 1, 500)
    proc.add(6000, 3, 42)  # an unrelated process
    pids = HostPidMap()
    # written before a monitor restart, and right: two reads of that process, no index
    assert pids.resolve([region("a", slot(1, 1, 500, host_pid=4242))], proc, SECOND) == {("a", 1): 4242}
    assert proc.identity_calls == [4242]
    assert proc.index_calls == []
    # wrong (a stale write raced with a new claim): replaced by the right one
    assert HostPidMap().resolve([region("a", slot(1, 1, 500, host_pid=6000))], proc, SECOND) == {("a", 1): 4242}


def test_same_pid_same_tick_is_told_apart_by_the_pod_uid_in_the_cgroup() -> None:
    proc = ProcDouble()
    proc.add(100, 1, 500, "0::/kubepods.slice/kubepods-besteffort-pod1a2b_c3d4.slice/cri-containerd-x.scope")
    proc.add(200, 1, 500, "0::/kubepods/burstable/pod9f8e-7d6c/0123abcd")
    pids = HostPidMap()
    got = pids.resolve(
        [region("a", slot(0, 1, 500), uid="1a2b-c3d4"), region("b", slot(0, 1, 500), uid="9f8e-7d6c")], proc, SECOND
    )
    assert got == {("a", 0): 100, ("b", 0): 200}
    # neither cgroup names the pod: unknown (0) rather than a guess
    assert HostPidMap().resolve([region("c", slot(0, 1, 500), uid="ffff")], proc, SECOND) == {("c", 0): 0}


def test_unknown_slots_are_retried_sparingly() -> None:
    proc = ProcDouble()
    pids = HostPidMap(retry_ns=30 * SECOND, min_index_interval_ns=SECOND)
    dead = region("a", slot(3, 12, 400))  # its process died without giving the slot back
    assert pids.resolve([dead], proc, 10 * SECOND) == {("a", 3): 0}
    assert pids.last_unresolved == 1
    for t in range(11, 40):
        pids.resolve([dead], proc, t * SECOND)
    assert len(proc.index_calls) == 1  # not once per scan
    pids.resolve([dead], proc, 40 * SECOND)
    assert len(proc.index_calls) == 2
    # new processes are indexed at most once per second together
    proc.add(7001, 5, 600)
    proc.add(7002, 6, 601)
    pids.resolve([dead, region("b", slot(5, 5, 600))], proc, 40 * SECOND + 1)
    assert len(proc.index_calls) == 2
    got = pids.resolve([region("b", slot(5, 5, 600), slot(6, 6, 601))], proc, 41 * SECOND)
    assert got == {("b", 5): 7001, ("b", 6): 7002}
    assert proc.index_calls[-1] == frozenset({600, 601})


def test_a_wrong_host_pid_that_cannot_be_placed_is_cleared() -> None:
    proc = ProcDouble()
    proc.add(6000, 3, 42)
    assert HostPidMap().resolve([region("a", slot(1, 1, 500, host_pid=6000))], proc, SECOND) == {("a", 1): 0}


def test_proc_file_parsing() -> None:
    stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 4 0 987654 1000 100"
    assert parse_start_time(stat) == 987654
    assert parse_start_time("4242 (x) S 1 2") is None
    assert parse_ns_pid("Name:\tx\nTgid:\t4242\nPid:\t4242\nNSpid:\t4242\t17\t1\n") == 1
    assert parse_ns_pid("Pid:\t4242\n") == 4242  # kernels before NSpid (4.1): no namespaces to cross
    assert in_pod("0::/kubepods-pod1a2b_c3d4.slice", "1a2b-c3d4")
    assert not in_pod("0::/kubepods-pod1a2b_c3d4.slice", "")


def test_a_container_cannot_claim_another_pods_process() -> None:
    """The slots are the container's to write: for a pod the plugin allocated, a process counts only when its
    cgroup names that pod, whether the slot named it by (namespace pid, start tick) or by a host pid."""
    proc = ProcDouble()
    proc.add(300, 1, 500, "0::/kubepods/burstable/podvictim/abc")  # the neighbour's pid 1
    proc.add(400, 5, 600, "0::/kubepods/burstable/podthief/def")  # the container's own process
    thief = region("t", slot(0, 1, 500), slot(1, 1, 500, host_pid=300), slot(2, 5, 600), uid="thief")
    got = HostPidMap().resolve([dataclasses.replace(thief, verify_pod=True)], proc, SECOND)
    assert got == {("t", 0): 0, ("t", 1): 0, ("t", 2): 400}
    # Without the check (a region the plugin did not allocate) a unique match is taken as before.
    assert HostPidMap().resolve([region("t", slot(0, 1, 500), uid="thief")], proc, SECOND) == {("t", 0): 300}
