"""Benchmark of hami-scheduler-extender at cluster scale (``make bench-extender``; not a test).

Deployed path (``--deployed``, what ``make bench-extender`` runs first): a local control plane
(tests/e2e/cluster: etcd, kube-apiserver) is loaded with a synthetic cluster of N nodes x G GPUs
and P running GPU pods placed by HAMi (the generators below: register annotations, allocatable
GPUs, placement annotations and the ``hami.io/vgpu-node`` label), then the extender is started as
deployed (``python -m hami_scheduler_extender.app.cli --kubeconfig=...``: its own list and watch
of every node and pod). Reported per run (a fresh extender process on the same loaded cluster):
cache-sync time (process start to ``/readyz`` 200), resident memory once synced and after the
requests, and the filter / prioritize latency below.

In-process path: the same synthetic cluster is fed, as Kubernetes JSON, through the cache code
the watches use (``adapters.watch.apply_*_list``) in a server process that serves the real
aiohttp application on loopback; the Kubernetes API is not used (``NullKube``, a double, only
swallows Events).

In both, a client sends filter and prioritize requests (varied pod shapes, C random candidate
node names each, the way kube-scheduler calls with ``nodeCacheCapable``) one at a time, as
kube-scheduler does, and measures the latency of each HTTP round trip. The server's resident
memory is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import os
import pathlib
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from hami_scheduler_extender.adapters import watch
from hami_scheduler_extender.app.cli import settle_heap
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import create_app
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.kube import discard
from hami_shared.names import ResourceNames
from hami_shared.node_register import DeviceInfo, encode_node_devices
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices, slot_id
from prometheus_client import CollectorRegistry

E2E_DIR = pathlib.Path(__file__).resolve().parents[3] / "tests" / "e2e"
TYPES = ("NVIDIA A100-SXM4-80GB", "NVIDIA-Tesla V100-PCIE-32GB", "NVIDIA H100 80GB HBM3")
MEMORY = {TYPES[0]: 81920, TYPES[1]: 32768, TYPES[2]: 81559}


class NullKube:
    """Double of the API boundary for the benchmark: filter/prioritize never call the API."""

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        raise NotImplementedError

    async def create_binding(
        self, namespace: str, name: str, uid: str, node: str, metadata: BindingMetadata = NO_METADATA
    ) -> None:
        raise NotImplementedError

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        raise NotImplementedError

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None:
        return None


def synthetic_nodes(count: int, gpus: int, rng: random.Random) -> list[dict[str, Any]]:
    nodes = []
    for n in range(count):
        model = TYPES[n % len(TYPES)]
        devices = [
            DeviceInfo(
                id=f"GPU-{n:05d}-{g}",
                index=g,
                count=10,
                devmem=MEMORY[model],
                devcore=100,
                type=model,
                numa=g * 2 // gpus,
                mode="hami-core",
                health=rng.random() > 0.002,
            )
            for g in range(gpus)
        ]
        nodes.append(
            {
                "metadata": {
                    "name": f"node-{n:05d}",
                    "labels": {"kubernetes.io/hostname": f"node-{n:05d}", "gpu": "on"},
                    "annotations": {names.NODE_REGISTER: encode_node_devices(devices)},
                },
                "status": {"allocatable": {"nvidia.com/gpu": str(10 * gpus), "cpu": "64", "memory": "512Gi"}},
            }
        )
    return nodes


def synthetic_pods(nodes: list[dict[str, Any]], count: int, gpus: int, rng: random.Random) -> list[dict[str, Any]]:
    pods = []
    for p in range(count):
        node = nodes[rng.randrange(len(nodes))]
        name = node["metadata"]["name"]
        n = int(name.split("-")[1])
        gpu = rng.randrange(gpus)
        uuid = f"GPU-{n:05d}-{gpu}"
        mem, cores = rng.choice([(2000, 0), (4000, 10), (8000, 20), (10000, 30), (16000, 25)])
        devices = encode_pod_devices([[ContainerDevice(uuid=uuid, usedmem=mem, usedcores=cores)]])
        pods.append(
            {
                "metadata": {
                    "name": f"job-{p}",
                    "namespace": f"team-{p % 50}",
                    "uid": f"00000000-0000-0000-0000-{p:012d}",
                    "labels": {names.VGPU_NODE: name},
                    "annotations": {
                        names.VGPU_NODE: name,
                        names.VGPU_TIME: "1763880000",
                        names.DEVICES_ALLOCATED: devices,
                        names.DEVICES_TO_ALLOCATE: ";",
                        names.DEVICE_SLOTS: encode_device_slots([[slot_id(uuid, p % 10)]]),
                        names.BIND_PHASE: "success",
                        names.BIND_TIME: "1763880000",
                    },
                },
                "spec": {
                    "nodeName": name,
                    "schedulerName": "hami-scheduler",
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.example/train:latest",
                            "resources": {
                                "limits": {
                                    "nvidia.com/gpu": "1",
                                    "nvidia.com/gpumem": str(mem),
                                    "nvidia.com/gpucores": str(cores),
                                }
                            },
                        }
                    ],
                },
                "status": {"phase": "Running"},
            }
        )
    return pods


def request_pod(i: int, rng: random.Random) -> dict[str, Any]:
    count, mem, pct, cores = rng.choice(
        [
            (1, 1000, None, 0),
            (1, 8000, None, 20),
            (2, 4000, None, 10),
            (1, None, 25, 30),
            (1, 30000, None, 50),
            (4, 20000, None, 0),
        ]
    )
    limits = {"nvidia.com/gpu": str(count), "nvidia.com/gpucores": str(cores)}
    if mem is not None:
        limits["nvidia.com/gpumem"] = str(mem)
    if pct is not None:
        limits["nvidia.com/gpumem-percentage"] = str(pct)
    annotations = {}
    if i % 10 == 0:
        annotations[names.USE_GPUTYPE] = "A100,H100"
    if i % 7 == 0:
        annotations[names.GPU_SCHEDULER_POLICY] = "binpack"
    return {
        "metadata": {
            "name": f"new-{i}",
            "namespace": "bench",
            "uid": f"ffffffff-0000-0000-0000-{i:012d}",
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [{"name": "main", "image": "registry.example/infer:latest", "resources": {"limits": limits}}],
        },
        "status": {"phase": "Pending"},
    }


# --- server process -----------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    state = ClusterState()
    started = time.perf_counter()
    nodes = synthetic_nodes(args.nodes, args.gpus, rng)
    watch.apply_node_list(state, nodes, count_resource="nvidia.com/gpu")
    pods = synthetic_pods(nodes, args.pods, args.gpus, rng)
    watch.apply_pod_list(state, pods)
    for name in list(state.node_names()):
        state.view(name)  # warm every view, as the first requests would
    del nodes, pods
    ingest_s = time.perf_counter() - started
    settle_heap()  # what the service does once its caches are synced
    metrics = ExtenderMetrics(CollectorRegistry(), version="bench")
    extender = Extender(
        state=state,
        kube=NullKube(),
        config=ExtenderConfig(
            names=ResourceNames(), defaults=RequestDefaults(), node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD
        ),
        metrics=metrics,
        ready=lambda: None,
    )
    app = create_app(extender=extender, metrics=metrics, health=lambda: None, ready=lambda: None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port, "ingest_s": ingest_s, "holds": sum(1 for _ in state.allocations())}), flush=True)
    await asyncio.Event().wait()


# --- client process -----------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


LES = ("0.002", "0.005", "0.01", "0.025")


def server_histogram(text: str) -> dict[str, dict[str, float]]:
    """Share of requests per verb at or under each bucket bound, from the Prometheus text."""
    counts: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hami_extender_request_duration_seconds_bucket{"):
            labels, value = line[len("hami_extender_request_duration_seconds_bucket{") :].split("} ")
            fields = dict(part.split("=", 1) for part in labels.split(","))
            verb, le = fields["verb"].strip('"'), fields["le"].strip('"')
            counts.setdefault(verb, {})[le] = float(value)
        elif line.startswith("hami_extender_request_duration_seconds_count{"):
            labels, value = line.split("{", 1)[1].split("} ")
            totals[labels.split("=", 1)[1].strip('"')] = float(value)
    return {verb: {le: counts[verb].get(le, 0.0) / totals[verb] for le in LES} for verb in totals}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Filter and prioritize round trips against one server process."""

    results: dict[str, list[float]]  # verb -> milliseconds per request (warm-up excluded)
    cpu_ms: dict[str, float]  # verb -> server CPU per request
    fit_counts: list[int]
    rss_now: float
    rss_peak: float


def measure(port: int, pid: int, args: argparse.Namespace) -> Latency:
    """Send the filter then the prioritize workload one request at a time, as kube-scheduler does."""
    rng = random.Random(args.seed + 1)
    node_names = [f"node-{n:05d}" for n in range(args.nodes)]
    connection = http.client.HTTPConnection("127.0.0.1", port)
    results: dict[str, list[float]] = {"filter": [], "prioritize": []}
    cpu_ms: dict[str, float] = {}
    fit_counts: list[int] = []
    workload = [
        (request_pod(i, rng), rng.sample(node_names, args.candidates)) for i in range(args.warmup + args.requests)
    ]
    bodies = [json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names_}).encode() for pod, names_ in workload]
    for verb in ("filter", "prioritize"):
        for i, body in enumerate(bodies):
            if i == args.warmup:
                cpu_before = cpu_seconds(pid)
            begin = time.perf_counter()
            connection.request("POST", f"/{verb}", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - begin
            if response.status != 200:
                raise SystemExit(f"{verb} answered HTTP {response.status}: {payload[:300]!r}")
            answer = json.loads(payload)
            if verb == "filter":
                if answer["Error"]:
                    raise SystemExit(f"filter answered Error: {answer['Error']}")
                fit_counts.append(len(answer["NodeNames"]))
            if i >= args.warmup:
                results[verb].append(elapsed * 1000)
        cpu_ms[verb] = (cpu_seconds(pid) - cpu_before) * 1000 / args.requests
    rss_now, rss_peak = rss_mib(pid)
    connection.close()
    return Latency(results, cpu_ms, fit_counts, rss_now, rss_peak)


def latency_table(latency: Latency) -> list[str]:
    lines = [
        "| verb       | p50 ms | p90 ms | p99 ms | max ms | server CPU ms/request | target p99 |",
        "|------------|-------:|-------:|-------:|-------:|----------------------:|-----------:|",
    ]
    for verb, samples in latency.results.items():
        lines.append(
            f"| {verb:<10} | {percentile(samples, 50):6.2f} | {percentile(samples, 90):6.2f} |"
            f" {percentile(samples, 99):6.2f} | {max(samples):6.2f} | {latency.cpu_ms[verb]:21.2f} | <= 10 ms   |"
        )
    return lines


def run_client(args: argparse.Namespace) -> int:
    server = subprocess.Popen([sys.executable, __file__, "--serve", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        rss_loaded, _ = rss_mib(server.pid)
        latency = measure(hello["port"], server.pid, args)
        connection = http.client.HTTPConnection("127.0.0.1", hello["port"])
        connection.request("GET", "/metrics")
        server_side = server_histogram(connection.getresponse().read().decode())
    finally:
        server.terminate()
        server.wait(timeout=30)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(
        f"\nin-process: {args.nodes} nodes x {args.gpus} GPUs,"
        f" {hello['holds']} running GPU pods,"
        f" {args.candidates} candidate nodes per request, {args.requests} requests per verb ({machine})"
    )
    print(
        f"cache build from {args.nodes} node + {args.pods} pod objects: {hello['ingest_s']:.1f} s;"
        f" nodes fitting per filter: median {statistics.median(latency.fit_counts):.0f} of {args.candidates}"
    )
    print()
    print("\n".join(latency_table(latency)))
    print()
    print("Server-side handling time (the extender's own histogram, warm-up included):")
    print()
    print("| verb       | <= 2 ms | <= 5 ms | <= 10 ms | <= 25 ms |")
    print("|------------|--------:|--------:|---------:|---------:|")
    for verb, buckets in server_side.items():
        print("| " + f"{verb:<10} | " + " | ".join(f"{buckets.get(le, 0.0) * 100:6.2f}%" for le in LES) + " |")
    print()
    print(f"| server RSS after load | {rss_loaded:.0f} MiB |")
    print(f"| server RSS after run  | {latency.rss_now:.0f} MiB (peak {latency.rss_peak:.0f} MiB; target <= 400 MB) |")
    return 0


# --- the deployed path: the extender process fed by the local control plane's list and watch -------------------


async def load_cluster(cluster: Any, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
    """Create the synthetic nodes (with allocatable GPUs) and pods (bound, placed, Running) through the API."""
    from kubernetes_asyncio import client as k8s

    async with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        limit = asyncio.Semaphore(48)

        async def node(obj: dict[str, Any]) -> None:
            async with limit:
                name = obj["metadata"]["name"]
                await discard(core.create_node({"metadata": obj["metadata"]}, _preload_content=False))
                await discard(core.patch_node_status(name, {"status": obj["status"]}, _preload_content=False))

        await asyncio.gather(*(node(n) for n in nodes))
        namespaces = sorted({p["metadata"]["namespace"] for p in pods})
        for namespace in namespaces:
            await core.create_namespace({"metadata": {"name": namespace}})
        for namespace in namespaces:
            await wait_for_service_account(core, namespace)

        async def pod(obj: dict[str, Any]) -> None:
            async with limit:
                metadata = {k: v for k, v in obj["metadata"].items() if k != "uid"}
                name, namespace = metadata["name"], metadata["namespace"]
                body = {"metadata": metadata, "spec": obj["spec"]}
                await discard(core.create_namespaced_pod(namespace, body, _preload_content=False))
                await discard(
                    core.patch_namespaced_pod_status(name, namespace, {"status": obj["status"]}, _preload_content=False)
                )

        await asyncio.gather(*(pod(p) for p in pods))


async def run_deployed(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(E2E_DIR))
    from e2e_harness.cluster import LocalCluster
    from extender_support import ExtenderProcess, free_port

    rng = random.Random(args.seed)
    nodes = synthetic_nodes(args.nodes, args.gpus, rng)
    pods = synthetic_pods(nodes, args.pods, args.gpus, rng)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-extender-deployed-"))
    cluster = LocalCluster.start(work / "cluster")
    completed = False
    try:
        started = time.monotonic()
        await load_cluster(cluster, nodes, pods)
        load_s = time.monotonic() - started
        del nodes, pods
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        print(
            f"\ndeployed path: the extender process (python -m hami_scheduler_extender.app.cli, its own list + watch)"
            f" on a local control plane holding {args.nodes} nodes x {args.gpus} GPUs and {args.pods} running GPU pods"
            f" (loaded through the API in {load_s:.0f} s); {args.candidates} candidate nodes per request,"
            f" {args.requests} requests per verb ({machine}); target RSS <= 400 MB, filter p99 <= 10 ms"
        )
        print()
        print(
            "| run | load before | cache sync s | RSS synced MiB | RSS after requests MiB (peak) | filter p50 / p99 ms"
            " | prioritize p50 / p99 ms | server CPU ms/filter |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for number in range(1, args.deployed_runs + 1):
            extender = ExtenderProcess(cluster, free_port(), work / f"extender-{number}.log")
            load_before = os.getloadavg()
            begin = time.monotonic()
            await extender.start(ready_within=1800)
            sync_s = time.monotonic() - begin
            assert extender.proc is not None
            pid = extender.proc.pid
            rss_synced, _ = rss_mib(pid)
            try:
                latency = await asyncio.to_thread(measure, extender.port, pid, args)
            finally:
                await extender.stop()
            f, p = latency.results["filter"], latency.results["prioritize"]
            print(
                f"| {number} | {' '.join(f'{v:.2f}' for v in load_before)} | {sync_s:.1f} | {rss_synced:.0f}"
                f" | {latency.rss_now:.0f} ({latency.rss_peak:.0f})"
                f" | {percentile(f, 50):.2f} / {percentile(f, 99):.2f}"
                f" | {percentile(p, 50):.2f} / {percentile(p, 99):.2f}"
                f" | {latency.cpu_ms['filter']:.2f} |",
                flush=True,
            )
    except BaseException:
        print(f"deployed benchmark failed; cluster and extender logs kept in {work}", file=sys.stderr)
        raise
    else:
        completed = True
    finally:
        cluster.stop()
    if completed:
        shutil.rmtree(work, ignore_errors=True)  # etcd holding 45,000 objects: ~580 MiB per run


# --- end to end through the real kube-scheduler -----------------------------------------------------------

API_WRITES = {
    "Binding": 'resource="pods",scope="resource",subresource="binding",verb="POST"',
    "pod patch": 'resource="pods",scope="resource",subresource="",verb="PATCH"',
    "Event": 'resource="events",scope="resource",subresource="",verb="POST"',
}


@dataclasses.dataclass(frozen=True)
class E2eRun:
    """One end-to-end measurement (times in seconds; CPU in seconds over the measured window)."""

    load_before: tuple[float, float, float]
    bound_in: float
    first_bind: float
    extender_cpu: float
    cluster_cpu: float
    bench_cpu: float
    algorithm: float  # kube-scheduler's scheduling algorithm: in-tree plugins + extender filter/prioritize calls
    in_tree: float  # kube-scheduler's in-tree PreFilter/Filter/PreScore/Score plugins
    verbs: dict[str, tuple[float, float]]  # extender verb -> (handling seconds, calls)
    writes: dict[str, float]  # API writes during the window, by kind


def metric_sum(text: str, name: str, *needles: str) -> float:
    """Sum of the samples of ``name`` whose labels contain every needle (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(n in line for n in needles):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def e2e_run(args: argparse.Namespace) -> E2eRun:
    """Pods/s bound by the real kube-scheduler with this extender on a fresh local control plane.

    By default the pods are created first under a scheduler name no profile serves yet, then
    kube-scheduler is restarted with the extender configured: the clock runs from that restart until a
    watch of the namespace has seen the last pod bound. With ``--e2e-live`` kube-scheduler runs first
    and the clock runs from the first pod creation (this process creates them, 32 at a time, on the
    same cores) to the last bind. kube-scheduler runs inside the API server's process, so its metrics
    (scheduling algorithm time, in-tree plugin time) come from the API server's /metrics.
    """
    from e2e_harness.cluster import LocalCluster  # type: ignore[import-not-found]
    from extender_support import (  # type: ignore[import-not-found]
        SCHEDULER_NAME,
        ExtenderProcess,
        PodWatch,
        create_gpu_node,
        free_port,
        gpus,
        scheduler_config,
    )
    from kubernetes_asyncio import client as k8s

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-extender-"))
    cluster = LocalCluster.start(work / "cluster")
    flags = ["--success-events"] if args.success_events else []
    flags += [] if args.vgpu_node_label else ["--no-vgpu-node-label"]
    extender = ExtenderProcess(cluster, free_port(), work / "extender.log", flags)
    try:
        await extender.start()
        assert extender.proc is not None
        async with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            for n in range(args.e2e_nodes):
                await create_gpu_node(api, f"bench-{n:03d}", gpus(f"bench-{n:03d}", 8))
            await core.create_namespace({"metadata": {"name": "bench"}})
            await wait_for_service_account(core, "bench")
            limit = asyncio.Semaphore(32)
            pod = {
                "spec": {
                    "schedulerName": SCHEDULER_NAME,
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}},
                        }
                    ],
                },
            }

            async def create(i: int) -> None:
                async with limit:  # raw JSON: no model objects to build or parse on this side
                    body = {**pod, "metadata": {"name": f"p-{i:05d}"}}
                    await discard(core.create_namespaced_pod("bench", body, _preload_content=False))

            async def create_all() -> None:
                await asyncio.gather(*(create(i) for i in range(args.e2e_pods)))

            config = yaml_with_qps(scheduler_config(extender.url))
            if args.e2e_live:
                await asyncio.to_thread(cluster.restart_scheduler, config)
            else:
                await create_all()
            bound: dict[str, float] = {}
            all_bound = asyncio.Event()

            def seen(pod: Mapping[str, Any], at: float) -> None:
                if pod["spec"].get("nodeName"):
                    bound.setdefault(pod["metadata"]["name"], at)
                    if len(bound) >= args.e2e_pods:
                        all_bound.set()

            watch = PodWatch(core, "bench", seen)
            await watch.start()
            before = await api_text(api, "/metrics")
            load_before = os.getloadavg()
            cpu_before = cpu_seconds(extender.proc.pid), cpu_seconds(cluster._proc.pid), time.process_time()
            started = time.monotonic()
            if args.e2e_live:
                await create_all()
            else:
                await asyncio.to_thread(cluster.restart_scheduler, config)
            try:
                await asyncio.wait_for(all_bound.wait(), timeout=600)
            except TimeoutError:
                raise SystemExit(f"only {len(bound)} of {args.e2e_pods} pods bound after 600 s") from None
            cpu_after = cpu_seconds(extender.proc.pid), cpu_seconds(cluster._proc.pid), time.process_time()
            await watch.stop()
            after = await api_text(api, "/metrics")
        verbs_text = await extender.metrics()
    finally:
        await extender.stop()
        cluster.stop()
    return E2eRun(
        load_before=load_before,
        bound_in=max(bound.values()) - started,
        first_bind=min(bound.values()) - started,
        extender_cpu=cpu_after[0] - cpu_before[0],
        cluster_cpu=cpu_after[1] - cpu_before[1],
        bench_cpu=cpu_after[2] - cpu_before[2],
        algorithm=metric_sum(after, "scheduler_scheduling_algorithm_duration_seconds_sum"),
        in_tree=sum(
            metric_sum(after, "scheduler_framework_extension_point_duration_seconds_sum", f'extension_point="{point}"')
            for point in ("PreFilter", "Filter", "PreScore", "Score")
        ),
        verbs={
            verb: (
                metric_sum(verbs_text, "hami_extender_request_duration_seconds_sum", f'verb="{verb}"'),
                metric_sum(verbs_text, "hami_extender_request_duration_seconds_count", f'verb="{verb}"'),
            )
            for verb in ("filter", "prioritize", "bind")
        },
        writes={
            kind: metric_sum(after, "apiserver_request_total", labels)
            - metric_sum(before, "apiserver_request_total", labels)
            for kind, labels in API_WRITES.items()
        },
    )


async def run_e2e(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(E2E_DIR))
    pods = args.e2e_pods
    print(
        f"\nend to end: {pods} pods (1 GPU, 1000 MiB each) on {args.e2e_nodes} simulated nodes x 8 GPUs through the"
        f" real kube-scheduler + extender (hami.io/vgpu-node label {'on' if args.vgpu_node_label else 'off'}: written"
        " once a device plugin reports the allocation, so never here: no device plugin runs;"
        f" BindingSucceed Events {'on' if args.success_events else 'off'}); clock from "
        + (
            "the first pod creation (pods created by this process during the run)"
            if args.e2e_live
            else "the kube-scheduler restart (pods created before)"
        )
        + " to the last bind seen by a watch; CPU per pod over that window; target >= 100 pods/s"
    )
    print()
    print(
        "| run | load before | bound in s | pods/s | first-to-last bind pods/s | extender CPU ms/pod"
        " | control plane CPU ms/pod | bench process CPU ms/pod | scheduling algorithm ms/pod (in-tree plugins)"
        " | extender filter / prioritize / bind ms | API writes per pod |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for number in range(1, args.e2e_runs + 1):
        run = await e2e_run(args)
        verb_ms = " / ".join(f"{s / n * 1000:.1f}" if n else "-" for s, n in run.verbs.values())
        writes = ", ".join(f"{kind} {count / pods:.2f}" for kind, count in run.writes.items())
        print(
            f"| {number} | {' '.join(f'{v:.2f}' for v in run.load_before)} | {run.bound_in:.2f}"
            f" | **{pods / run.bound_in:.0f}** | {(pods - 1) / (run.bound_in - run.first_bind):.0f}"
            f" | {run.extender_cpu / pods * 1000:.1f} | {run.cluster_cpu / pods * 1000:.1f}"
            f" | {run.bench_cpu / pods * 1000:.1f}"
            f" | {run.algorithm / pods * 1000:.1f} ({run.in_tree / pods * 1000:.1f})"
            f" | {verb_ms} | {writes} |",
            flush=True,
        )


async def wait_for_service_account(core: Any, namespace: str) -> None:
    """The ServiceAccount admission plugin refuses pods until the controller made ``default``."""
    from kubernetes_asyncio import client as k8s

    for _ in range(240):
        try:
            await core.read_namespaced_service_account("default", namespace)
            return
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        await asyncio.sleep(0.25)
    raise SystemExit(f"no default ServiceAccount in namespace {namespace} after 60 s")


async def api_text(api: Any, path: str) -> str:
    """GET a non-resource path of the API server (as the admin) as text."""
    from hami_shared.kube import checked

    response = await checked(
        api.call_api(path, "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)
    )
    try:
        return str(await response.text())
    finally:
        response.release()


def yaml_with_qps(config: str) -> str:
    """kube-scheduler's client defaults to 50 QPS; at 100+ pods/s its own writes (events) need more."""
    import yaml

    doc = yaml.safe_load(config)
    doc["clientConnection"] = {"qps": 500, "burst": 1000}
    return str(yaml.safe_dump(doc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=40000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--deployed", action="store_true", help="first measure the extender process fed by a loaded local control plane"
    )
    parser.add_argument("--deployed-runs", type=int, default=2, help="extender starts measured on the loaded cluster")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process measurement")
    parser.add_argument("--e2e", action="store_true", help="also measure pods/s through the local control plane")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end measurement")
    parser.add_argument("--e2e-nodes", type=int, default=100)
    parser.add_argument("--e2e-pods", type=int, default=1000)
    parser.add_argument("--e2e-runs", type=int, default=1, help="end-to-end measurements, each on a fresh cluster")
    parser.add_argument(
        "--e2e-live",
        action="store_true",
        help="create the pods while kube-scheduler runs; clock from the first creation to the last bind",
    )
    parser.add_argument("--success-events", action="store_true", help="run the extender with BindingSucceed Events")
    parser.add_argument(
        "--vgpu-node-label",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the extender with (default) or without its hami.io/vgpu-node label patch",
    )
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return 0
    if args.deployed and not args.e2e_only:
        asyncio.run(run_deployed(args))
    if not args.e2e_only and not args.no_in_process:
        run_client(args)
    if args.e2e or args.e2e_only:
        asyncio.run(run_e2e(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
