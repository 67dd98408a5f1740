"""Benchmark of hami-device-plugin: Allocate latency with 110 pods on the node, the plugin's memory, and the
monitor's CPU with 110 live containers at its default scan interval.

Everything real except the GPU driver and the kubelet: the local control plane (tests/e2e/cluster, real
kube-apiserver), the real plugin process (fake NVML from hamicore's tests: 8 GPUs, split count 14), and this
script in kubelet's place over the v1beta1 gRPC API: it creates 110 pods bound to the node and annotated as the
scheduler extender leaves them, then admits them one by one like kubelet (GetPreferredAllocation, then
Allocate) and times each call. Every Allocate patches the pod in the API server (consumed entry, bind-phase).

Then the monitor: the plugin's CPU time per scan (utime + stime of its process over ``--monitor-seconds``,
divided by the scans it made meanwhile, from its scan histogram) with the 110 regions Allocate published (no
process yet), then with one live CUDA process (hamicore's probe under libvgpu.so, holding memory) per
container, after the monitor mapped every one of them to its host pid; and the cost of one pass over /proc
(the host-pid lookup for new processes) with ``--idle-procs`` extra processes on the machine.

Run with ``make bench-device-plugin``; targets: Allocate p99 <= 20 ms, RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "services" / "device-plugin" / "tests" / "component"))

from e2e_harness.cluster import LocalCluster  # noqa: E402
from hami_device_plugin.adapters.procfs import ProcFs  # noqa: E402
from hami_device_plugin.core.region import parse_region  # noqa: E402
from hami_shared import names  # noqa: E402
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices  # noqa: E402
from hamicore_client import FAKE_NVML_DIR, PROBE, client_env  # noqa: E402
from kubelet_double import KubeletDouble, pb  # noqa: E402
from kubernetes_asyncio import client as k8s  # noqa: E402

PLUGIN = Path(sys.executable).with_name("hami-device-plugin")
UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"
NODE = "bench-gpu-node"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def scan_histogram(port: int) -> tuple[float, float]:
    """(scans, seconds) of the plugin's hami_device_plugin_monitor_scan_seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("hami_device_plugin_monitor_scan_seconds_count", "hami_device_plugin_monitor_scan_seconds_sum"):
            values[name] = float(value)
    return values["hami_device_plugin_monitor_scan_seconds_count"], values[
        "hami_device_plugin_monitor_scan_seconds_sum"
    ]


async def monitor_cost(pid: int, port: int, seconds: float) -> dict[str, float]:
    """CPU per scan and scan wall time of the plugin process over ``seconds``."""
    scans0, wall0 = await asyncio.to_thread(scan_histogram, port)
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    scans1, wall1 = await asyncio.to_thread(scan_histogram, port)
    cpu = cpu_seconds(pid) - cpu0
    scans = scans1 - scans0
    return {
        "scans": scans,
        "scans_per_s": round(scans / seconds, 2),
        "cpu_ms_per_scan": round(1000 * cpu / scans, 2),
        "cpu_pct": round(100 * cpu / seconds, 1),
        "scan_wall_ms_mean": round(1000 * (wall1 - wall0) / scans, 2),
    }


CGROUP_ROOT = Path("/sys/fs/cgroup")


def pod_cgroup(uid: str) -> Path:
    """A cgroup named like kubelet's for the pod (``.../pod<uid>``), as the monitor checks for the processes of a
    container it allocated: cgroup v2, else v1's pids hierarchy. Made under ``hami-bench``, removed by
    :func:`remove_pod_cgroups`."""
    base = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "pids"
    path = base / "hami-bench" / f"pod{uid}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_pod_cgroups() -> None:
    for base in (CGROUP_ROOT, CGROUP_ROOT / "pids"):
        bench = base / "hami-bench"
        if bench.is_dir():
            for cgroup in bench.iterdir():
                if cgroup.is_dir():
                    cgroup.rmdir()
            bench.rmdir()


def start_containers(hook: Path, gpus: int, state: Path) -> list[subprocess.Popen[bytes]]:
    """One live CUDA process per container directory the plugin made, in its pod's cgroup: hamicore's probe
    under libvgpu.so, holding 64 MiB (its region then has one live process slot and one GPU)."""
    procs = []
    directories = sorted(d for d in (hook / "containers").iterdir() if d.is_dir() and not d.name.startswith("."))
    for i, directory in enumerate(directories):
        # the container sees its one GPU, as NVIDIA_VISIBLE_DEVICES makes it (the fake then keeps its memory and
        # kernels on its device 0: only the plugin's CPU is measured here)
        env = client_env(
            directory / f"{directory.name}.cache", state, FAKE_GPU_COUNT="1", FAKE_GPU_UUIDS=UUID.format(i % gpus)
        )
        args = [str(PROBE), "init", "ctx", "0", "alloc", "64m", "hold"]
        # The shell joins the pod's cgroup, then becomes the probe (exec keeps the pid and the cgroup).
        procs_file = pod_cgroup(directory.name.partition("_")[0]) / "cgroup.procs"
        wrapped = ["/bin/sh", "-c", f'echo $$ > {procs_file} && exec "$@"', "sh", *args]
        procs.append(subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def wait_mapped(hook: Path, count: int, within: float = 120) -> float:
    """Seconds until every region has a live process with its host pid filled in by the monitor."""
    t0 = time.monotonic()
    while True:
        mapped = 0
        for region in (hook / "containers").glob("*/*.cache"):
            try:
                snap = parse_region(region.read_bytes())
            except (OSError, ValueError):
                continue
            mapped += bool(snap.processes) and all(p.host_pid for p in snap.processes)
        if mapped == count:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < within, f"only {mapped} of {count} containers mapped to host pids"
        await asyncio.sleep(0.1)


def proc_index_cost(idle: int) -> dict[str, float]:
    """One pass of the host-pid lookup over this machine's /proc, with ``idle`` extra processes running."""
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(idle)]
    try:
        procs = ProcFs()
        count = sum(1 for name in os.listdir("/proc") if name.isdigit())
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            procs.index(frozenset({-1}))  # no process matches: the pass reads every stat once
            best = min(best, time.perf_counter() - t0)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    return {"processes": count, "ms": round(best * 1000, 1), "us_per_process": round(best * 1e6 / count, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_body(i: int, gpus: int, split: int) -> dict[str, Any]:
    gpu, replica = i % gpus, i // gpus
    uuid = UUID.format(gpu)
    memory, cores = 1000 + (i % 7) * 500, (i % 5) * 10
    devices = [[ContainerDevice(uuid=uuid, usedmem=memory, usedcores=cores)]]
    annotations = {
        names.VGPU_NODE: NODE,
        names.DEVICES_TO_ALLOCATE: encode_pod_devices(devices),
        names.DEVICES_ALLOCATED: encode_pod_devices(devices),
        names.DEVICE_SLOTS: encode_device_slots([[f"{uuid}-{replica}"]]),
        names.BIND_PHASE: "allocating",
        names.BIND_TIME: str(int(time.time())),
    }
    return {
        "metadata": {"name": f"bench-{i:03d}", "annotations": annotations},
        "spec": {
            "nodeName": NODE,
            "schedulerName": "hami-scheduler",
            "containers": [{"name": "main", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    }


@dataclass
class Measured:
    """What one run measured, gathered as it goes (see :func:`report`)."""

    preferred_ms: list[float] = field(default_factory=list)
    allocate_ms: list[float] = field(default_factory=list)
    rss_before: tuple[float, float] = (0.0, 0.0)
    rss_after: tuple[float, float] = (0.0, 0.0)
    rss_monitor: tuple[float, float] = (0.0, 0.0)
    idle_monitor: dict[str, float] = field(default_factory=dict)
    busy_monitor: dict[str, float] = field(default_factory=dict)
    live_containers: int = 0
    mapped_s: float = 0.0


async def prepare_cluster(core: k8s.CoreV1Api) -> None:
    """The node and the pods' namespace, usable once its default ServiceAccount exists."""
    await core.create_node({"metadata": {"name": NODE}})
    await core.create_namespace({"metadata": {"name": "bench"}})
    for _ in range(300):
        try:
            await core.read_namespaced_service_account("default", "bench")
            break
        except k8s.ApiException:
            await asyncio.sleep(0.2)


def start_plugin(
    cluster: LocalCluster, kubelet: KubeletDouble, work: Path, gpus: int, split: int, port: int, state: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "FAKE_GPU_COUNT": str(gpus),
        "FAKE_GPU_STATE_FILE": str(state),
        "NODE_NAME": NODE,
    }
    log = (work / "plugin.log").open("wb")
    return subprocess.Popen(
        [
            str(PLUGIN),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--device-plugin-dir={kubelet.dir}",
            f"--hook-path={work / 'vgpu'}",
            f"--split-count={split}",
            f"--metrics-listen=127.0.0.1:{port}",
            "--log-level=warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def admit(kubelet: KubeletDouble, pod: Any, available: list[str], measured: Measured) -> None:
    """Admit one pod as kubelet does (GetPreferredAllocation, then Allocate), timing each call and checking that
    the plugin steered kubelet to the annotated slot and gave the annotated memory."""
    request = pb.PreferredAllocationRequest(
        container_requests=[pb.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=1)]
    )
    t0 = time.perf_counter()
    preferred = await kubelet.stub.GetPreferredAllocation(request, timeout=30)
    t1 = time.perf_counter()
    chosen = list(preferred.container_responses[0].deviceIDs)
    expected = pod.metadata.annotations[names.DEVICE_SLOTS].rstrip(";")
    assert chosen == [expected], f"{pod.metadata.name}: preferred {chosen}, annotated {expected}"
    response = await kubelet.stub.Allocate(
        pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=chosen)]), timeout=30
    )
    t2 = time.perf_counter()
    envs = response.container_responses[0].envs
    want = pod.metadata.annotations[names.DEVICES_ALLOCATED].split(",")[2]
    assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{want}m", pod.metadata.name
    available.remove(chosen[0])
    measured.preferred_ms.append((t1 - t0) * 1000)
    measured.allocate_ms.append((t2 - t1) * 1000)


async def admit_all(core: k8s.CoreV1Api, kubelet: KubeletDouble, measured: Measured) -> None:
    """Every pod of the namespace, in creation order (kubelet admits pods one at a time)."""
    available = sorted(kubelet.device_lists[-1])
    listed = await core.list_namespaced_pod("bench")
    for pod in sorted(listed.items, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name)):
        await admit(kubelet, pod, available, measured)


async def run(pods: int, gpus: int, split: int, work: Path, monitor_seconds: float, idle: int) -> dict[str, Any]:
    cluster = await asyncio.to_thread(LocalCluster.start, work / "cluster")
    plugin: subprocess.Popen[bytes] | None = None
    containers: list[subprocess.Popen[bytes]] = []
    port = free_port()
    state = work / "gpu.state"
    kubelet = KubeletDouble(Path(tempfile.mkdtemp(prefix="dpb-", dir="/tmp")))
    measured = Measured()
    try:
        async with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            await prepare_cluster(core)
            await kubelet.start()
            plugin = start_plugin(cluster, kubelet, work, gpus, split, port, state)
            await kubelet.wait_devices(lambda d: len(d) == gpus * split, within=120)
            for i in range(pods):
                await core.create_namespaced_pod("bench", pod_body(i, gpus, split))
            await asyncio.sleep(3)  # the plugin's watch cache catches up
            measured.rss_before = rss_mib(plugin.pid)
            await admit_all(core, kubelet, measured)
            measured.rss_after = rss_mib(plugin.pid)
            containers = await measure_monitor(plugin.pid, port, monitor_seconds, work, gpus, state, measured)
    finally:
        for c in containers:
            c.kill()
            c.wait()
        remove_pod_cgroups()
        if plugin is not None:
            plugin.send_signal(signal.SIGTERM)
            plugin.wait(timeout=30)
        await kubelet.stop()
        await asyncio.to_thread(cluster.stop)
    proc_index = await asyncio.to_thread(proc_index_cost, idle)
    return report(pods, gpus, split, measured, proc_index)


async def measure_monitor(
    pid: int, port: int, seconds: float, work: Path, gpus: int, state: Path, measured: Measured
) -> list[subprocess.Popen[bytes]]:
    """The monitor at its default interval: the regions Allocate published, then a live process in each
    (returned, for the caller to stop)."""
    measured.idle_monitor = await monitor_cost(pid, port, seconds)
    containers = start_containers(work / "vgpu", gpus, state)
    measured.live_containers = len(containers)
    measured.mapped_s = await wait_mapped(work / "vgpu", len(containers))
    measured.busy_monitor = await monitor_cost(pid, port, seconds)
    measured.rss_monitor = rss_mib(pid)
    return containers


def report(pods: int, gpus: int, split: int, measured: Measured, proc_index: dict[str, float]) -> dict[str, Any]:
    allocate_ms, preferred_ms = measured.allocate_ms, measured.preferred_ms
    return {
        "pods": pods,
        "gpus": gpus,
        "split_count": split,
        "allocate_ms": {
            "p50": round(statistics.median(allocate_ms), 2),
            "p90": round(percentile(allocate_ms, 0.9), 2),
            "p99": round(percentile(allocate_ms, 0.99), 2),
            "max": round(max(allocate_ms), 2),
        },
        "preferred_ms": {
            "p50": round(statistics.median(preferred_ms), 2),
            "p99": round(percentile(preferred_ms, 0.99), 2),
        },
        "rss_mib": {
            "before": round(measured.rss_before[0], 1),
            "after": round(measured.rss_after[0], 1),
            "with_monitored_containers": round(measured.rss_monitor[0], 1),
            "peak": round(measured.rss_monitor[1], 1),
        },
        "monitor": {
            "regions_without_processes": measured.idle_monitor,
            "live_containers": measured.live_containers,
            "all_host_pids_mapped_after_s": round(measured.mapped_s, 2),
            "with_live_containers": measured.busy_monitor,
            "proc_index": proc_index,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--split-count", type=int, default=14)
    parser.add_argument("--monitor-seconds", type=float, default=20.0, help="each monitor CPU measurement")
    parser.add_argument("--idle-procs", type=int, default=1000, help="extra processes during the /proc pass")
    args = parser.parse_args()
    if args.pods > args.gpus * args.split_count:
        parser.error("--pods must not exceed --gpus x --split-count")
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        result = asyncio.run(
            run(args.pods, args.gpus, args.split_count, Path(tmp), args.monitor_seconds, args.idle_procs)
        )
    print(json.dumps(result, indent=2))
    ok = result["allocate_ms"]["p99"] <= 20 and result["rss_mib"]["peak"] <= 150
    print("targets (Allocate p99 <= 20 ms, RSS <= 150 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
