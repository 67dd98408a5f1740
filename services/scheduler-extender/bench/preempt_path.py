"""The preempt verb on bench_extender.py's in-process path: priorities for the synthetic running pods, and
``ExtenderPreemptionArgs`` round trips sent one at a time, as kube-scheduler sends them after a failed cycle.

Each request is a high-priority pod (priority 1000) asking for whole cards or large slices on several cards. As
kube-scheduler does, the candidates are the nodes filter rejected (a filter of the same pod over random nodes, not
timed), at most C of them, each without victims: what kube-scheduler releases with kubernetes#135486 send when
only the extender rejected a node, so the extender searches every lower-priority pod it holds there (the costlier
case; a list from kube-scheduler's in-tree dry run is narrowed first). The running pods get priority 0, 100 or
2000 (a quarter of them outrank the preemptor)."""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import random
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import Any

from measurement import cpu_seconds, percentile

PREEMPTOR_PRIORITY = 1000
RUNNING_PRIORITIES = (0, 0, 100, 2000)
SHAPES = (  # nvidia.com/gpu, gpumem (None: the whole card), gpucores
    (1, None, 0),
    (2, None, 0),
    (4, None, 0),
    (4, 40000, 0),
    (8, 20000, 0),
)


def add_priorities(pods: Iterable[dict[str, Any]], seed: int) -> None:
    """Give each synthetic running pod a ``spec.priority`` (as the Priority admission plugin would)."""
    rng = random.Random(seed + 2)
    for pod in pods:
        pod["spec"]["priority"] = rng.choice(RUNNING_PRIORITIES)


def preempt_bodies(connection: http.client.HTTPConnection, args: argparse.Namespace) -> list[bytes]:
    rng = random.Random(args.seed + 3)
    node_names = [f"node-{n:05d}" for n in range(args.nodes)]
    bodies = []
    for i in range(args.warmup // 4 + args.preempt_requests):
        count, mem, cores = rng.choice(SHAPES)
        limits = {"nvidia.com/gpu": str(count), "nvidia.com/gpucores": str(cores)}
        if mem is not None:
            limits["nvidia.com/gpumem"] = str(mem)
        pod = {
            "metadata": {"name": f"urgent-{i}", "namespace": "bench", "uid": f"eeeeeeee-0000-0000-0000-{i:012d}"},
            "spec": {
                "schedulerName": "hami-scheduler",
                "priority": PREEMPTOR_PRIORITY,
                "containers": [{"name": "main", "image": "registry.example/x", "resources": {"limits": limits}}],
            },
        }
        filter_body = {"Pod": pod, "NodeNames": rng.sample(node_names, min(args.candidates, len(node_names)))}
        connection.request(
            "POST", "/filter", body=json.dumps(filter_body), headers={"Content-Type": "application/json"}
        )
        failed = json.loads(connection.getresponse().read())["FailedNodes"]
        candidates = list(failed)[: args.preempt_candidates]
        victims = {name: {"Pods": [], "NumPDBViolations": 0} for name in candidates}
        bodies.append(json.dumps({"Pod": pod, "NodeNameToMetaVictims": victims}).encode())
    return bodies


@dataclasses.dataclass(frozen=True)
class PreemptLatency:
    milliseconds: list[float]
    cpu_ms: float
    nodes_answered: list[int]
    victims_per_node: list[float]
    candidates: list[int]


def measure_preempt(port: int, pid: int, args: argparse.Namespace) -> PreemptLatency:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    bodies = preempt_bodies(connection, args)
    warmup = len(bodies) - args.preempt_requests
    samples: list[float] = []
    answered: list[int] = []
    per_node: list[float] = []
    candidates = [len(json.loads(body)["NodeNameToMetaVictims"]) for body in bodies[warmup:]]
    cpu_before = cpu_seconds(pid)
    for i, body in enumerate(bodies):
        if i == warmup:
            cpu_before = cpu_seconds(pid)
        begin = time.perf_counter()
        connection.request("POST", "/preempt", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - begin
        if response.status != 200:
            raise SystemExit(f"preempt answered HTTP {response.status}: {payload[:300]!r}")
        if i >= warmup:
            samples.append(elapsed * 1000)
            nodes: Mapping[str, Any] = json.loads(payload)["NodeNameToMetaVictims"]
            answered.append(len(nodes))
            if nodes:
                per_node.append(statistics.mean(len(v["Pods"]) for v in nodes.values()))
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / max(args.preempt_requests, 1)
    connection.close()
    return PreemptLatency(samples, cpu_ms, answered, per_node, candidates)


def preempt_table(latency: PreemptLatency, args: argparse.Namespace) -> list[str]:
    samples = latency.milliseconds
    victims = f"{statistics.median(latency.victims_per_node):.1f}" if latency.victims_per_node else "-"
    return [
        f"preempt: {args.preempt_requests} requests, each over the nodes filter rejected among {args.candidates}"
        f" random ones (at most {args.preempt_candidates}; median {statistics.median(latency.candidates):.0f}),"
        " no victims from kube-scheduler, preemptor priority 1000",
        "",
        "| verb    | p50 ms | p90 ms | p99 ms | max ms | server CPU ms/request | nodes answered (median) |"
        " victims per node (median) |",
        "|---------|-------:|-------:|-------:|-------:|----------------------:|------------------------:|"
        "--------------------------:|",
        f"| preempt | {percentile(samples, 50):6.2f} | {percentile(samples, 90):6.2f} |"
        f" {percentile(samples, 99):6.2f} | {max(samples):6.2f} | {latency.cpu_ms:21.2f} |"
        f" {statistics.median(latency.nodes_answered):23.0f} |"
        f" {victims:>26} |",
    ]
