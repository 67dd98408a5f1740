"""bench_extender.py's deployed path: the extender process as deployed (its own list + watch) on a local control
plane loaded with the synthetic cluster; per run a fresh extender: cache-sync time, resident memory, and the
filter / prioritize latency of :mod:`measurement`."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from cluster_load import load_cluster, use_e2e_harness
from measurement import measure, rss_mib
from report import DEPLOYED_HEADER, deployed_row, machine
from synthetic_cluster import QUOTA_NAMESPACES, synthetic_nodes, synthetic_pods, synthetic_quotas


async def run_deployed(args: argparse.Namespace) -> None:
    use_e2e_harness()
    from e2e_harness.cluster import LocalCluster

    rng = random.Random(args.seed)
    nodes = synthetic_nodes(args.nodes, args.gpus, rng)
    pods = synthetic_pods(nodes, args.pods, args.gpus, rng)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-extender-deployed-"))
    cluster = LocalCluster.start(work / "cluster")
    completed = False
    try:
        started = time.monotonic()
        await load_cluster(cluster, nodes, pods, synthetic_quotas(QUOTA_NAMESPACES) if args.quotas else [])
        load_s = time.monotonic() - started
        del nodes, pods
        print_deployed_header(args, load_s)
        for number in range(1, args.deployed_runs + 1):
            print(await deployed_run(cluster, work, number, args), flush=True)
    except BaseException:
        print(f"deployed benchmark failed; cluster and extender logs kept in {work}", file=sys.stderr)
        raise
    else:
        completed = True
    finally:
        cluster.stop()
    if completed:
        shutil.rmtree(work, ignore_errors=True)  # etcd holding 45,000 objects: ~580 MiB per run


def print_deployed_header(args: argparse.Namespace, load_s: float) -> None:
    print(
        f"\ndeployed path: the extender process (python -m hami_scheduler_extender.app.cli, its own list + watch)"
        f" on a local control plane holding {args.nodes} nodes x {args.gpus} GPUs and {args.pods} running GPU pods"
        f" (loaded through the API in {load_s:.0f} s); quotas {'on' if args.quotas else 'off'};"
        f" {args.candidates} candidate nodes per request,"
        f" {args.requests} requests per verb ({machine()}); target RSS <= 400 MB, filter p99 <= 10 ms"
    )
    print()
    print("\n".join(DEPLOYED_HEADER))


async def deployed_run(cluster: Any, work: pathlib.Path, number: int, args: argparse.Namespace) -> str:
    """One fresh extender process on the loaded cluster: its table row."""
    from extender_support import ExtenderProcess, free_port

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
    return deployed_row(number, load_before, sync_s, rss_synced, latency)
