"""The node backstop's decisions (core/backstop.py): which NVML processes are a container's, when it is over its
limit, whom enforce kills, one Event per episode; and the backstop's wiring of them (app/backstop.py) against a
/proc double: a kill only hits the process seen at the scan, in the container's pod."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hami_device_plugin.app.backstop import EVENT_WAIT_SCANS, Backstop, kill_process
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core import backstop as bs
from hami_device_plugin.core.config import DeviceConfig, NodeConfigError, apply_node_config
from hami_device_plugin.core.hostpid import ProcIdentity
from hami_device_plugin.core.pods import pod_record
from hypothesis import given
from hypothesis import strategies as st

MIB = 1 << 20
GPU = "GPU-0"


def gpu(container: str = "pod-a_main", pod: str = "pod-a", *, limit_mib: int = 1000, accounted_mib: int = 0,
        slots: frozenset[tuple[int, int]] = frozenset(), uuid: str = GPU) -> bs.ContainerGpu:  # fmt: skip
    return bs.ContainerGpu(container, pod, uuid, 0, limit_mib * MIB, accounted_mib * MIB, slots)


def test_tolerance_is_64_mib_or_5_percent_whichever_is_larger() -> None:
    t = bs.Tolerance()
    assert t.bytes_for(1000 * MIB) == 64 * MIB
    assert t.bytes_for(10_000 * MIB) == 500 * MIB
    with pytest.raises(ValueError, match="out of range"):
        bs.Tolerance(percent=101)


def test_processes_are_attributed_by_cgroup_first_then_by_slot_with_the_start_time_seen_now() -> None:
    a = gpu("pod-a_main", "pod-a", slots=frozenset({(100, 7)}))
    b = gpu("pod-b_main", "pod-b", slots=frozenset({(200, 1), (400, 5)}))  # 200: a slot of an earlier process
    nvml = {GPU: {100: 300 * MIB, 200: 50 * MIB, 300: 400 * MIB, 400: 1 * MIB}}
    starts = {100: 7, 200: 9, 300: 5, 400: 5}
    # 300: no slot names it (freed by the container), its cgroup does; 400: b's slot claims it, its cgroup says a
    uses = bs.attribute([a, b], nvml, starts, {300: "pod-a_main", 400: "pod-a_main"})
    assert [(u.gpu.container, [p.host_pid for p in u.processes]) for u in uses] == [
        ("pod-a_main", [100, 300, 400]),
        ("pod-b_main", []),  # pid 200 was reused (start time 9, not 1) by a process of no container of ours
    ]
    assert uses[0].real_bytes == 701 * MIB


def test_the_cgroup_names_a_container_by_its_id_or_by_its_pod_when_it_has_one_container_on_the_gpu() -> None:
    one = gpu("pod-a_one", "pod-a", uuid=GPU)
    one_id = bs.ContainerGpu("pod-a_one", "pod-a", GPU, 0, 0, 0, frozenset(), "abcdef0123456789")
    two = gpu("pod-a_two", "pod-a")
    other = gpu("pod-c_main", "pod-c")
    cgroup = "0::/kubepods/podpod-a/abcdef0123456789\n"
    assert bs.cgroup_owner(cgroup, [one, other]) == "pod-a_one"
    assert bs.cgroup_owner(cgroup, [one, two, other]) is None  # two containers of the pod: which one?
    assert bs.cgroup_owner(cgroup, [one_id, two, other]) == "pod-a_one"  # its runtime ID says
    assert bs.cgroup_owner("0::/k8s.io/abcdef0123456789", [one_id, two]) == "pod-a_one"  # no pod cgroups
    assert bs.cgroup_owner("0::/", [one, other]) is None
    assert one_id.owns("0::/k8s.io/abcdef0123456789")
    assert not other.owns(cgroup)


def test_a_pid_two_containers_claim_by_slot_counts_for_nobody() -> None:
    a = gpu("pod-a_one", "pod-a", slots=frozenset({(100, 7)}))
    c = gpu("pod-c_main", "pod-c", slots=frozenset({(100, 7)}))
    uses = bs.attribute([a, c], {GPU: {100: 5 * MIB}}, {100: 7}, {})
    assert all(u.processes == () for u in uses)
    # and a container on another GPU is never given a process on this one
    assert bs.attribute([gpu(uuid="GPU-1")], {GPU: {100: 5 * MIB}}, {100: 7}, {100: "pod-a_main"})[0].processes == ()


def test_a_process_without_a_start_time_is_gone_and_not_counted() -> None:
    a = gpu(slots=frozenset({(100, 7)}))
    assert bs.attribute([a], {GPU: {100: 5 * MIB}}, {}, {})[0].processes == ()


def test_over_limit_only_beyond_the_tolerance_and_enforce_kills_the_largest_first() -> None:
    procs = (bs.ProcessUse(1, 1, 600 * MIB), bs.ProcessUse(2, 1, 500 * MIB), bs.ProcessUse(3, 1, 10 * MIB))
    within = bs.reconcile(bs.DeviceUse(gpu(limit_mib=1100), procs[:2]), bs.Tolerance(), bs.ENFORCE)
    assert not within.over_limit
    assert within.victims == ()
    over = bs.reconcile(bs.DeviceUse(gpu(limit_mib=1000, accounted_mib=100), procs), bs.Tolerance(), bs.ENFORCE)
    assert over.over_limit
    assert [p.host_pid for p in over.victims] == [1]
    assert over.gap_bytes == 1010 * MIB
    observed = bs.reconcile(bs.DeviceUse(gpu(limit_mib=1000), procs), bs.Tolerance(), bs.OBSERVE)
    assert observed.over_limit
    assert observed.victims == ()


@given(
    used=st.lists(st.integers(0, 4096), min_size=0, max_size=8),
    limit=st.integers(0, 4096),
    min_mib=st.integers(0, 256),
    percent=st.floats(0, 100),
    policy=st.sampled_from(bs.POLICIES),
)
def test_reconcile_properties(used: list[int], limit: int, min_mib: int, percent: float, policy: str) -> None:
    procs = tuple(bs.ProcessUse(i + 1, 1, u * MIB) for i, u in enumerate(used))
    tolerance = bs.Tolerance(min_mib * MIB, percent)
    v = bs.reconcile(bs.DeviceUse(gpu(limit_mib=limit), procs), tolerance, policy)
    real = sum(used) * MIB
    assert v.over_limit == (real > limit * MIB + tolerance.bytes_for(limit * MIB))
    assert set(v.victims) <= set(procs)  # only the container's own processes
    if policy == bs.OBSERVE or not v.over_limit:
        assert v.victims == ()
    else:
        left = real - sum(p.used_bytes for p in v.victims)
        assert left <= limit * MIB  # what is left fits the limit
        # and no victim could be spared: without the smallest one, it would not fit
        assert left + min(p.used_bytes for p in v.victims) > limit * MIB


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=30))
def test_one_episode_per_stretch_over_the_limit(scans: list[tuple[str, bool]]) -> None:
    episodes = bs.Episodes()
    over: dict[str, bool] = {}
    for container, is_over in scans:
        use = bs.DeviceUse(gpu(container), ())
        started = episodes.update([bs.Verdict(use, 0, is_over, ())])
        # the other containers were not in this scan: their episodes end
        assert [v.use.gpu.container for v in started] == ([container] if is_over and not over.get(container) else [])
        over = {container: is_over}


def test_event_message_says_what_happened_the_uses_the_limit_and_the_action() -> None:
    procs = (bs.ProcessUse(41, 1, 1800 * MIB),)
    v = bs.reconcile(bs.DeviceUse(gpu(limit_mib=1000, accounted_mib=900), procs), bs.Tolerance(), bs.ENFORCE)
    text = bs.event_message(v, bs.ENFORCE, [41])
    assert "GPU memory over limit" in text
    assert "1800 MiB" in text
    assert "900 MiB" in text
    assert "limit is 1000 MiB" in text
    assert "killed process(es) 41" in text
    assert "nothing killed" in bs.event_message(v, bs.OBSERVE, [])


def test_node_config_key_sets_the_policy_per_node() -> None:
    doc = {"nodeconfig": [{"name": "n1", "gpumemorypolicy": "enforce"}]}
    assert apply_node_config(DeviceConfig(), doc, "n1", source="f").memory_policy == bs.ENFORCE
    assert apply_node_config(DeviceConfig(), doc, "n2", source="f").memory_policy == bs.OBSERVE
    with pytest.raises(NodeConfigError, match="policy"):
        apply_node_config(DeviceConfig(), {"nodeconfig": [{"name": "n1", "gpumemorypolicy": "kill"}]}, "n1", source="f")


class FakeProcs:
    """A /proc double: identities and cgroups by host pid."""

    def __init__(self, procs: dict[int, tuple[ProcIdentity, str]]) -> None:
        self.procs = procs

    def identity(self, host_pid: int) -> ProcIdentity | None:
        return self.procs[host_pid][0] if host_pid in self.procs else None

    def index(self, start_times: frozenset[int]) -> list[ProcIdentity]:
        return [i for i, _ in self.procs.values() if i.start_time in start_times]

    def cgroup(self, host_pid: int) -> str:
        return self.procs[host_pid][1] if host_pid in self.procs else ""


def test_backstop_counts_kills_and_opens_one_episode_with_its_message() -> None:
    procs = FakeProcs(
        {
            100: (ProcIdentity(100, 1, 7), "0::/kubepods/podpod-a/c1"),
            300: (ProcIdentity(300, 300, 5), "0::/kubepods/podpod-a/c1"),
        }
    )
    kills: list[int] = []

    def kill(victim: bs.ProcessUse, target: bs.ContainerGpu, source: object) -> str:
        kills.append(victim.host_pid)
        return "killed"

    metrics = PluginMetrics.create("test")
    policy = [bs.ENFORCE]
    backstop = Backstop(procs=procs, metrics=metrics, policy=lambda: policy[0], tolerance=bs.Tolerance(), kill=kill)
    g = gpu(slots=frozenset({(100, 7)}), accounted_mib=10)
    labels = {(g.container, GPU): ["ns", "pod", "main", "0", GPU]}
    nvml = {GPU: {100: 900 * MIB, 300: 900 * MIB}}
    started = backstop.check([g], labels, nvml, {})
    assert len(started) == 1
    assert "killed process(es) 100" in started[0][1]
    assert kills == [100]
    assert backstop.check([g], labels, nvml, {}) == []  # same episode: no second Event, the kill is tried again
    assert kills == [100, 100]
    assert (
        metrics.registry.get_sample_value("hami_device_plugin_gpu_memory_over_limit_total", {"policy": "enforce"}) == 1
    )
    assert metrics.registry.get_sample_value("hami_device_plugin_gpu_memory_kills_total", {"result": "killed"}) == 2
    gap = metrics.registry.get_sample_value(
        "hami_vgpu_memory_unaccounted_bytes",
        {"namespace": "ns", "pod": "pod", "container": "main", "vdevice_index": "0", "device_uuid": GPU},
    )
    assert gap == 1790 * MIB


def test_an_unresolved_slot_claims_the_gpu_process_with_its_namespace_pid_and_start_time() -> None:
    procs = FakeProcs({55: (ProcIdentity(55, 55, 3), ""), 66: (ProcIdentity(66, 1, 3), "")})
    metrics = PluginMetrics.create("test")
    backstop = Backstop(procs=procs, metrics=metrics, policy=lambda: bs.OBSERVE, tolerance=bs.Tolerance())
    g = gpu(limit_mib=100)
    started = backstop.check(
        [g], {}, {GPU: {55: 500 * MIB, 66: 500 * MIB}}, {g.container: frozenset({(55, 3), (66, 3)})}
    )
    assert [v.use.real_bytes for v, _ in started] == [500 * MIB]  # 66 is pid 1 of its namespace, not "66"
    other = Backstop(
        procs=procs, metrics=PluginMetrics.create("t"), policy=lambda: bs.OBSERVE, tolerance=bs.Tolerance()
    )
    started = other.check([g], {}, {GPU: {66: 300 * MIB}}, {g.container: frozenset({(1, 3)})})
    assert [v.use.real_bytes for v, _ in started] == [300 * MIB]  # pid 1 started at tick 3: host pid 66


def test_kill_refuses_a_reused_pid_and_a_process_outside_the_pod() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = int(Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19])
        real = FakeProcs({child.pid: (ProcIdentity(child.pid, child.pid, start), "0::/k8s.io/0123456789abcdef\n")})
        mine = bs.ContainerGpu("pod-a_main", "pod-a", GPU, 0, 0, 0, frozenset(), "0123456789abcdef")
        assert kill_process(bs.ProcessUse(child.pid, start + 1, 1), mine, real) == "reused"
        assert kill_process(bs.ProcessUse(child.pid, start, 1), gpu("pod-b_main", "pod-b"), real) == "not-in-pod"
        assert child.poll() is None
        assert kill_process(bs.ProcessUse(child.pid, start, 1), mine, real) == "killed"
        assert child.wait(timeout=10) == -9
        assert kill_process(bs.ProcessUse(child.pid, start, 1), mine, real) == "gone"
    finally:
        if child.poll() is None:
            os.kill(child.pid, 9)
            child.wait()


def test_the_pod_record_keeps_the_runtime_ids_of_its_containers_and_nothing_else() -> None:
    pod = {
        "metadata": {"uid": "u", "namespace": "n", "name": "p"},
        "spec": {"containers": [{"name": "main"}, {"name": "side"}], "initContainers": [{"name": "init"}]},
        "status": {
            "initContainerStatuses": [{"name": "init", "containerID": "containerd://" + "a" * 64}],
            "containerStatuses": [
                {"name": "main", "containerID": "containerd://0123456789abcdef"},
                {"name": "side", "containerID": "containerd://../../etc"},  # not an ID: skipped
                {"name": "late"},
            ],
        },
    }
    assert pod_record(pod).container_ids == (("init", "a" * 64), ("main", "0123456789abcdef"))


def test_under_enforce_the_event_waits_a_few_scans_for_the_kill_and_says_why_none_happened() -> None:
    procs = FakeProcs({100: (ProcIdentity(100, 1, 7), "0::/kubepods/podpod-a/c1")})
    outcomes = ["not-in-pod", "not-in-pod", "killed"]

    def kill(victim: bs.ProcessUse, target: bs.ContainerGpu, source: object) -> str:
        return outcomes.pop(0) if outcomes else "denied"

    g = gpu(accounted_mib=0)
    nvml = {GPU: {100: 1800 * MIB}}
    backstop = Backstop(
        procs=procs, metrics=PluginMetrics.create("t"), policy=lambda: bs.ENFORCE, tolerance=bs.Tolerance(), kill=kill
    )
    assert backstop.check([g], {}, nvml, {}) == []
    assert backstop.check([g], {}, nvml, {}) == []
    [(_, message)] = backstop.check([g], {}, nvml, {})  # the third scan's kill succeeded
    assert "killed process(es) 100" in message
    assert backstop.check([g], {}, {GPU: {}}, {}) == []  # back within: the episode ends
    events = [backstop.check([g], {}, nvml, {}) for _ in range(EVENT_WAIT_SCANS + 1)]  # refused every time
    assert [len(e) for e in events] == [0] * EVENT_WAIT_SCANS + [1]
    assert "no process killed (denied)" in events[-1][0][1]
