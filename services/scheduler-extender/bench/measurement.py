"""What bench_extender.py measures and how: filter and prioritize round trips sent one at a time (as
kube-scheduler sends them) with the server's CPU per request, a process's resident memory and CPU time from
/proc, percentiles, and samples read from Prometheus text (the extender's histogram, the apiserver's counters)."""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import random
import time

from synthetic_cluster import request_pod

LES = ("0.002", "0.005", "0.01", "0.025")  # the bounds of the extender's histogram the report shows
VERBS = ("filter", "prioritize")


def rss_mib(pid: int) -> tuple[float, float]:
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


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


def metric_sum(text: str, name: str, *needles: str) -> float:
    """Sum of the samples of ``name`` whose labels contain every needle (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(n in line for n in needles):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclasses.dataclass(frozen=True)
class Latency:
    """Filter and prioritize round trips against one server process."""

    results: dict[str, list[float]]  # verb -> milliseconds per request (warm-up excluded)
    cpu_ms: dict[str, float]  # verb -> server CPU per request
    fit_counts: list[int]
    rss_now: float
    rss_peak: float


def request_bodies(args: argparse.Namespace) -> list[bytes]:
    """The workload: varied pod shapes, each with ``args.candidates`` random node names (nodeCacheCapable)."""
    rng = random.Random(args.seed + 1)
    node_names = [f"node-{n:05d}" for n in range(args.nodes)]
    workload = [
        (request_pod(i, rng, args.mig_every > 0, args.topology), rng.sample(node_names, args.candidates))
        for i in range(args.warmup + args.requests)
    ]
    return [json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names_}).encode() for pod, names_ in workload]


def round_trip(connection: http.client.HTTPConnection, verb: str, body: bytes) -> tuple[float, dict[str, object]]:
    """One request: its wall time in seconds and the answer; a non-200 answer or a filter Error ends the run."""
    begin = time.perf_counter()
    connection.request("POST", f"/{verb}", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - begin
    if response.status != 200:
        raise SystemExit(f"{verb} answered HTTP {response.status}: {payload[:300]!r}")
    answer: dict[str, object] = json.loads(payload)
    if verb == "filter" and answer["Error"]:
        raise SystemExit(f"filter answered Error: {answer['Error']}")
    return elapsed, answer


def measure(port: int, pid: int, args: argparse.Namespace) -> Latency:
    """Send the filter then the prioritize workload one request at a time, as kube-scheduler does."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    results: dict[str, list[float]] = {verb: [] for verb in VERBS}
    cpu_ms: dict[str, float] = {}
    fit_counts: list[int] = []
    bodies = request_bodies(args)
    for verb in VERBS:
        for i, body in enumerate(bodies):
            if i == args.warmup:
                cpu_before = cpu_seconds(pid)
            elapsed, answer = round_trip(connection, verb, body)
            if verb == "filter":
                fit_counts.append(len(answer["NodeNames"]))  # type: ignore[arg-type]
            if i >= args.warmup:
                results[verb].append(elapsed * 1000)
        cpu_ms[verb] = (cpu_seconds(pid) - cpu_before) * 1000 / args.requests
    rss_now, rss_peak = rss_mib(pid)
    connection.close()
    return Latency(results, cpu_ms, fit_counts, rss_now, rss_peak)
