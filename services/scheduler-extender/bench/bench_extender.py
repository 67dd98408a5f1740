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

The in-process path also measures the preempt verb (preempt_path: priorities for the running pods, preemption
requests of high-priority pods over C candidate nodes).

The pieces, one module each beside this entry point: synthetic_cluster (load generation), measurement (round
trips, /proc, percentiles, Prometheus samples), preempt_path (the preempt verb), report (the tables),
cluster_load (the local control plane and writing the cluster through its API), deployed_path and e2e_path (the
two paths on a control plane).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from deployed_path import run_deployed
from e2e_path import run_e2e
from hami_scheduler_extender.adapters import quota_watch, watch
from hami_scheduler_extender.app.cli import settle_heap
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import create_app
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_scheduler_extender.core.state import ClusterState
from hami_shared.names import ResourceNames
from measurement import Latency, measure, rss_mib, server_histogram
from preempt_path import PreemptLatency, add_priorities, measure_preempt, preempt_table
from prometheus_client import CollectorRegistry
from report import histogram_table, latency_table, machine
from synthetic_cluster import QUOTA_NAMESPACES, synthetic_nodes, synthetic_pods, synthetic_quotas


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


# --- server process -----------------------------------------------------------------------------


def ingest(args: argparse.Namespace) -> tuple[ClusterState, float]:
    """The synthetic cluster through the watches' cache code; the seconds it took."""
    rng = random.Random(args.seed)
    state = ClusterState()
    started = time.perf_counter()
    nodes = synthetic_nodes(args.nodes, args.gpus, rng, args.mig_every, args.topology)
    watch.apply_node_list(state, nodes, count_resource="nvidia.com/gpu")
    pods = synthetic_pods(nodes, args.pods, args.gpus, rng, args.mig_every)
    add_priorities(pods, args.seed)
    watch.apply_pod_list(state, pods)
    if args.quotas:
        # Through the quota watch's own digest, as the service loads them.
        quotas = synthetic_quotas(QUOTA_NAMESPACES, tight="bench" if args.tight_quota else "")
        digests = [quota_watch.digest_quota(q, names=ResourceNames()) for q in quotas]
        state.quotas.replace(d for d in digests if d is not None)
    for name in list(state.node_names()):
        state.view(name)  # warm every view, as the first requests would
    del nodes, pods
    return state, time.perf_counter() - started


async def serve(args: argparse.Namespace) -> None:
    state, ingest_s = ingest(args)
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


def run_client(args: argparse.Namespace) -> int:
    """The in-process measurement; with quotas on, first without them (the baseline of the same run), then with."""
    variants = [(False, False), (True, False), (True, True)] if args.quotas else [(False, False)]
    for quotas, tight in variants:
        run_variant(_with(args, quotas=quotas, tight_quota=tight))
    return 0


def _with(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def run_variant(args: argparse.Namespace) -> None:
    flags = ["--quotas" if args.quotas else "--no-quotas", "--tight-quota" if args.tight_quota else "--no-tight-quota"]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *sys.argv[1:], *flags], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        rss_loaded, _ = rss_mib(server.pid)
        latency = measure(hello["port"], server.pid, args)
        preempt = measure_preempt(hello["port"], server.pid, args)
        connection = http.client.HTTPConnection("127.0.0.1", hello["port"])
        connection.request("GET", "/metrics")
        server_side = server_histogram(connection.getresponse().read().decode())
    finally:
        server.terminate()
        server.wait(timeout=30)
    print_in_process_report(args, hello, rss_loaded, latency, server_side, preempt)


def print_in_process_report(
    args: argparse.Namespace,
    hello: dict[str, Any],
    rss_loaded: float,
    latency: Latency,
    server_side: dict[str, dict[str, float]],
    preempt: PreemptLatency,
) -> None:
    quotas = "quotas off"
    if args.quotas:
        quotas = (
            f"quotas on: a ResourceQuota with limits.nvidia.com/gpumem and gpucores in each of the"
            f" {len(QUOTA_NAMESPACES)} namespaces, "
            + ("the requests' one at 10,000 MiB (refusals, per-node checks)" if args.tight_quota else "none refusing")
        )
    print(
        f"\nin-process ({quotas}): {args.nodes} nodes x {args.gpus} GPUs,"
        f" {hello['holds']} running GPU pods,"
        f" {args.candidates} candidate nodes per request, {args.requests} requests per verb ({machine()})"
        + (f"; every {args.mig_every}th node in MIG mode" if args.mig_every else "")
        + (
            "; every node with topology data (NVSwitch, ring, PCIe in turn), half the requests topology-aware"
            if args.topology
            else ""
        )
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
    print("\n".join(histogram_table(server_side)))
    print()
    print("\n".join(preempt_table(preempt, args)))
    print()
    print(f"| server RSS after load | {rss_loaded:.0f} MiB |")
    print(f"| server RSS after run  | {latency.rss_now:.0f} MiB (peak {latency.rss_peak:.0f} MiB; target <= 400 MB) |")


# --- command line ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=40000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mig-every",
        type=int,
        default=0,
        help="every k-th node in MIG mode (4 = a quarter), its pods on MIG instances, some requests vgpu-mode mig",
    )
    parser.add_argument(
        "--topology",
        action="store_true",
        help="every node publishes hami.io/node-nvidia-topology (NVSwitch, ring, PCIe in turn); half the requests "
        "ask for the topology-aware GPU policy",
    )
    parser.add_argument("--preempt-requests", type=int, default=300, help="preempt round trips measured")
    parser.add_argument("--preempt-candidates", type=int, default=500, help="candidate nodes per preempt request")
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
        "--e2e-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="in each end-to-end run, first measure kube-scheduler alone on the same nodes and report the ratio",
    )
    parser.add_argument(
        "--filter-best-nodes",
        type=int,
        default=None,
        metavar="N",
        help="end-to-end modes: run the extender with --filter-best-nodes=N and kube-scheduler without prioritizeVerb "
        "when N > 0, with it when N = 0; default: the extender's default and the deploy tree's configuration",
    )
    parser.add_argument(
        "--e2e-live",
        action="store_true",
        help="create the pods while kube-scheduler runs; clock from the first creation to the last bind",
    )
    parser.add_argument(
        "--success-events",
        action="store_true",
        help="end-to-end modes: run the extender with its success Events (FilteringSucceed, BindingSucceed; its "
        "default); without it they are off, as in the earlier runs",
    )
    parser.add_argument(
        "--quotas",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a GPU ResourceQuota (HAMi's limits.nvidia.com/gpumem, gpucores) in every namespace (default); the "
        "in-process path then measures without them, with them, and with a tight one in the requests' namespace",
    )
    parser.add_argument("--tight-quota", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    parser.add_argument(
        "--vgpu-node-label",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the extender with (default) or without its hami.io/vgpu-node label patch",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
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
