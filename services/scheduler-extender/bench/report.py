"""The Markdown tables bench_extender.py prints (the component README copies them): the in-process latency and
server-side histogram tables, one row per deployed-path run and one per end-to-end run, with their headers."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

from measurement import LES, Latency, percentile

if TYPE_CHECKING:
    from e2e_path import E2eRun


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def load_average(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


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


def histogram_table(server_side: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| verb       | <= 2 ms | <= 5 ms | <= 10 ms | <= 25 ms |",
        "|------------|--------:|--------:|---------:|---------:|",
    ]
    for verb, buckets in server_side.items():
        lines.append("| " + f"{verb:<10} | " + " | ".join(f"{buckets.get(le, 0.0) * 100:6.2f}%" for le in LES) + " |")
    return lines


DEPLOYED_HEADER = [
    "| run | load before | cache sync s | RSS synced MiB | RSS after requests MiB (peak) | filter p50 / p99 ms"
    " | prioritize p50 / p99 ms | server CPU ms/filter |",
    "|---:|---|---:|---:|---:|---:|---:|---:|",
]


def deployed_row(
    number: int, load_before: tuple[float, ...], sync_s: float, rss_synced: float, latency: Latency
) -> str:
    f, p = latency.results["filter"], latency.results["prioritize"]
    return (
        f"| {number} | {load_average(load_before)} | {sync_s:.1f} | {rss_synced:.0f}"
        f" | {latency.rss_now:.0f} ({latency.rss_peak:.0f})"
        f" | {percentile(f, 50):.2f} / {percentile(f, 99):.2f}"
        f" | {percentile(p, 50):.2f} / {percentile(p, 99):.2f}"
        f" | {latency.cpu_ms['filter']:.2f} |"
    )


E2E_HEADER = [
    "| run | load before | bound in s | pods/s | first-to-last bind pods/s | extender CPU ms/pod"
    " | control plane CPU ms/pod | bench process CPU ms/pod | scheduling algorithm ms/pod (in-tree plugins)"
    " | extender filter / prioritize / bind ms | API writes per pod |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
]


def e2e_row(number: int, run: E2eRun, pods: int) -> str:
    verb_ms = " / ".join(f"{s / n * 1000:.1f}" if n else "-" for s, n in run.verbs.values())
    writes = ", ".join(f"{kind} {count / pods:.2f}" for kind, count in run.writes.items())
    return (
        f"| {number} | {load_average(run.load_before)} | {run.bound_in:.2f}"
        f" | **{pods / run.bound_in:.0f}** | {(pods - 1) / (run.bound_in - run.first_bind):.0f}"
        f" | {run.extender_cpu / pods * 1000:.1f} | {run.cluster_cpu / pods * 1000:.1f}"
        f" | {run.bench_cpu / pods * 1000:.1f}"
        f" | {run.algorithm / pods * 1000:.1f} ({run.in_tree / pods * 1000:.1f})"
        f" | {verb_ms} | {writes} |"
    )


BASELINE_HEADER = [
    "| run | alone: pods/s | alone: control plane CPU ms/pod | alone: scheduling algorithm ms/pod"
    " | with extender: pods/s | with extender: control plane + extender CPU ms/pod | **ratio** |",
    "|---:|---:|---:|---:|---:|---:|---:|",
]


def baseline_row(number: int, run: E2eRun, pods: int) -> str:
    assert run.baseline is not None
    alone = pods / run.baseline.bound_in
    shared = pods / run.bound_in
    return (
        f"| {number} | {alone:.0f} | {run.baseline.cluster_cpu / pods * 1000:.1f}"
        f" | {run.baseline.algorithm / pods * 1000:.1f} | {shared:.0f}"
        f" | {(run.cluster_cpu + run.extender_cpu) / pods * 1000:.1f} | **{shared / alone:.2f}** |"
    )
