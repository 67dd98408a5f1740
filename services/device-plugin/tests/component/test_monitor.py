"""The monitor in the real plugin process against accounting regions written by the real hamicore
(libvgpu.so preloaded into hamicore's CUDA test client, over the fake driver -- test doubles for the GPU):
per-container memory metrics with HAMi's names, the contention and priority signals and the heartbeat written
back into the regions while two containers run kernels on one GPU (decided on the plugin's records of them, as an
earlier run left them, not on their regions), and hamicore holding the lower-priority
container's launches (its utilisation falls to 0) while the higher-priority one runs; the host pid of every
process slot, for processes in the host's PID namespace and for containers in their own (real PID
namespaces, hamicore/tests/pidns.py), and the /proc reader against a tree of files (a double of /proc)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, StartPlugin
from hami_device_plugin.adapters.procfs import ProcFs
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.core.hostpid import ProcIdentity
from hami_device_plugin.core.records import ContainerRecord, RecordDevice
from hami_device_plugin.core.region import RegionSnapshot, parse_region
from hamicore_client import PROBE, client_env
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(ROOT / "hamicore" / "tests"))
import pidns  # hamicore's helper for containers in PID namespaces

GPU0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
MIB = 1024 * 1024


def spawn_container(
    hook: Path, name: str, priority: int, state: Path, cycles: int, *, pid_namespace: bool = False
) -> subprocess.Popen[bytes]:
    """One "container": a CUDA client under libvgpu.so with its own accounting file, launching small kernels;
    with ``pid_namespace`` as pid 1 of its own PID namespace (the returned process is then ``unshare``)."""
    directory = hook / "containers" / f"uid-{name}_{name}"
    directory.mkdir(parents=True, exist_ok=True)
    env = client_env(
        directory / f"uid-{name}_{name}.cache",
        state,
        CUDA_DEVICE_SM_LIMIT="50",
        CUDA_TASK_PRIORITY=str(priority),
        FAKE_GPU_COUNT="1",
        FAKE_KERNEL_NS_PER_THREAD="100",
    )
    work = ["launch", "100", "1024", "1", "sync"] * cycles
    args = [str(PROBE), "init", "ctx", "0", "alloc", f"{100 + priority * 50}m", "kernel", *work, "hold"]
    if pid_namespace:
        host_proc = directory.parent / f"{name}.hostproc"
        host_proc.mkdir()
        args = pidns.command(args, host_proc)
        env["FAKE_GPU_HOST_PROC"] = str(host_proc)
    with (directory.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)


def allocated(hook: Path, priorities: dict[str, int]) -> None:
    """What an earlier run of the plugin recorded when it allocated these containers (GPU0, 1000 MiB, 50 %): the
    monitor decides on these records, never on what a container writes into its region."""
    store = RecordStore(hook / "containers")
    for name, priority in priorities.items():
        store.write(ContainerRecord(f"uid-{name}", name, priority, (RecordDevice(GPU0, 1000 * MIB, 50),)))


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_memory_metrics_and_limiter_signals(start_plugin: StartPlugin, tmp_path: Path) -> None:
    if not PROBE.is_file():
        pytest.fail(f"hamicore's test client is missing at {PROBE}: run `make hamicore` first")
    state = tmp_path / "gpu.state"
    plugin = await start_plugin(
        gpus=1,
        split=4,
        env={"FAKE_GPU_STATE_FILE": str(state), "FAKE_KERNEL_NS_PER_THREAD": "100"},
        prepare=lambda hook: allocated(hook, {"high": 0, "low": 1}),
    )
    procs = [spawn_container(plugin.hook, "high", 0, state, 3000), spawn_container(plugin.hook, "low", 1, state, 3000)]
    try:
        regions = {n: plugin.hook / "containers" / f"uid-{n}_{n}" / f"uid-{n}_{n}.cache" for n in ("high", "low")}
        seen_contended = seen_hold = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (seen_contended and seen_hold):
            await asyncio.sleep(0.2)
            snaps = {}
            for name, path in regions.items():
                try:
                    snaps[name] = parse_region(path.read_bytes())
                except (OSError, ValueError):
                    break
            if len(snaps) < 2 or not all(s.devices for s in snaps.values()):
                continue
            high, low = snaps["high"].devices[0], snaps["low"].devices[0]
            if high.contended and low.contended:
                seen_contended = True
            if low.priority_hold and not high.priority_hold:
                seen_hold = True
        for p in procs:
            assert p.poll() is None, f"test client {p.args} exited with {p.returncode}"
        assert seen_contended, f"contention never signalled; plugin log:\n{plugin.log_text()[-3000:]}"
        assert seen_hold, "the lower-priority container was never held for the higher-priority one"
        # hamicore honours the hold: the low-priority container stops using the GPU, the other goes on
        deadline = time.monotonic() + 30
        while True:
            high_region, low_region = (parse_region(p.read_bytes()) for p in (regions["high"], regions["low"]))
            if low_region.devices[0].utilization_pct == 0 and high_region.devices[0].utilization_pct > 0:
                break
            assert time.monotonic() < deadline, f"low-priority container not held: {low_region.devices[0]}"
            await asyncio.sleep(0.2)
        assert high_region.monitor_generation > 0  # the heartbeat hamicore checks
        assert low_region.monitor_generation > 0
        while True:  # the metrics of that scan are published when the scan ends
            text = await asyncio.to_thread(metrics, plugin.metrics_port)
            samples = {
                (sample.name, sample.labels.get("container"), sample.labels.get("device_uuid")): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if samples.get(("hami_container_device_utilization_ratio", "low", GPU0)) == 0:
                break
            assert time.monotonic() < deadline, "the held container's utilisation metric never fell to 0"
            await asyncio.sleep(0.2)
        for name, used in (("high", 100), ("low", 150)):
            assert samples[("hami_vgpu_memory_used_bytes", name, GPU0)] == used * MIB
            assert samples[("hami_vgpu_memory_limit_bytes", name, GPU0)] == 1000 * MIB
        assert 0 < samples[("hami_container_device_utilization_ratio", "high", GPU0)] <= 100
        assert samples[("hami_container_device_utilization_ratio", "low", GPU0)] == 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()

    # once the work stops, the signals are cleared again
    async def quiet() -> bool:
        snaps = [parse_region(p.read_bytes()).devices[0] for p in regions.values()]
        return not any(d.contended or d.priority_hold for d in snaps)

    deadline = time.monotonic() + 60
    while not await quiet():
        assert time.monotonic() < deadline, "signals not cleared after the containers went idle"
        await asyncio.sleep(0.3)


def region_of(hook: Path, name: str) -> Path:
    return hook / "containers" / f"uid-{name}_{name}" / f"uid-{name}_{name}.cache"


async def slots_once_mapped(region: Path, within: float = 60) -> RegionSnapshot:
    """The region once it has a live process and every live slot has a host pid."""
    deadline = time.monotonic() + within
    while True:
        try:
            snap = parse_region(await asyncio.to_thread(region.read_bytes))
            if snap.processes and all(p.host_pid for p in snap.processes):
                return snap
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, f"host pids of {region} never filled in"
        await asyncio.sleep(0.1)


async def test_host_pid_of_a_process_in_the_host_pid_namespace_is_its_pid(
    start_plugin: StartPlugin, tmp_path: Path
) -> None:
    plugin = await start_plugin(gpus=1, split=4, env={"FAKE_GPU_STATE_FILE": str(tmp_path / "gpu.state")})
    proc = spawn_container(plugin.hook, "host", 1, tmp_path / "gpu.state", 1)
    try:
        snap = await slots_once_mapped(region_of(plugin.hook, "host"))
        assert [(p.pid, p.host_pid) for p in snap.processes] == [(proc.pid, proc.pid)]
    finally:
        proc.kill()
        proc.wait()


async def test_host_pids_of_containers_in_their_own_pid_namespaces(start_plugin: StartPlugin, tmp_path: Path) -> None:
    """Two containers, each pid 1 of its own PID namespace (real namespaces, as a container runtime makes them):
    the monitor writes the real host pid of each into its slot."""
    if reason := pidns.unavailable(tmp_path):
        pytest.fail(f"{reason}: this test needs real PID namespaces (run the suite as root, as make test does)")
    state = tmp_path / "gpu.state"
    plugin = await start_plugin(gpus=1, split=4, env={"FAKE_GPU_STATE_FILE": str(state)})
    wrappers = {}
    try:
        for name in ("ns-a", "ns-b"):
            wrappers[name] = spawn_container(plugin.hook, name, 1, state, 1, pid_namespace=True)
            await asyncio.sleep(0.05)  # another clock tick of start time: pid 1 and pid 1 told apart by it
        for name, wrapper in wrappers.items():
            host_pid = pidns.host_pid(wrapper.pid)
            snap = await slots_once_mapped(region_of(plugin.hook, name))
            assert [(p.pid, p.host_pid) for p in snap.processes] == [(1, host_pid)], name
            status = await asyncio.to_thread(Path(f"/proc/{host_pid}/status").read_text)
            assert f"NSpid:\t{host_pid}\t1" in status
    finally:
        for wrapper in wrappers.values():
            wrapper.kill()  # unshare --kill-child: the namespace's processes go with it
            wrapper.wait()


def write_proc(root: Path, pid: int, comm: str, start: int, nspids: list[int] | None, cgroup: str = "") -> None:
    """One process of a /proc double: stat (fields 1-22 and a few more), status (NSpid unless None), cgroup."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n")
    nspid = "" if nspids is None else "NSpid:\t" + "\t".join(map(str, nspids)) + "\n"
    (d / "status").write_text(f"Name:\t{comm[:15]}\nTgid:\t{pid}\nPid:\t{pid}\n{nspid}Threads:\t1\n")
    (d / "cgroup").write_text(cgroup)


def test_proc_reader_against_a_proc_double(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    write_proc(root, 1, "systemd", 3, [1])
    write_proc(root, 4242, "python3 (worker) x", 500, [4242, 1], "0::/kubepods/pod1a2b/c1\n")
    write_proc(root, 4243, "app", 500, [4243, 7])
    write_proc(root, 5000, "old-kernel", 900, None)
    (root / "6000").mkdir()  # a process that exited while the directory was listed
    (root / "self").mkdir()
    (root / "meminfo").write_text("MemTotal: 1 kB\n")
    procs = ProcFs(root)
    assert procs.identity(4242) == ProcIdentity(4242, 1, 500)
    assert procs.identity(5000) == ProcIdentity(5000, 5000, 900)
    assert procs.identity(6000) is None
    assert procs.identity(7000) is None
    assert sorted(procs.index(frozenset({500, 900})), key=lambda p: p.host_pid) == [
        ProcIdentity(4242, 1, 500),
        ProcIdentity(4243, 7, 500),
        ProcIdentity(5000, 5000, 900),
    ]
    assert procs.cgroup(4242) == "0::/kubepods/pod1a2b/c1\n"
    assert procs.cgroup(6000) == ""


def test_proc_reader_on_this_machine() -> None:
    me = ProcFs().identity(os.getpid())
    assert me is not None
    assert me.host_pid == os.getpid()
    assert me.start_time == int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
    assert me in ProcFs().index(frozenset({me.start_time}))
