"""bench_extender.py's end-to-end path: pods/s bound by the real kube-scheduler with this extender on a fresh
local control plane (simulated GPU nodes as API objects, no kubelet), with the CPU of each process and the API
writes per pod over the measured window.

Each run first measures the same control plane and the same nodes with kube-scheduler alone (the baseline: GPUs
as a plain extended resource, ``nvidia.com/gpu`` in the nodes' allocatable, pods asking only for it, no
extender), then with the extender, and reports the ratio of their pods/s: what the extender costs the
scheduling throughput a cluster would have without GPU sharing."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from cluster_load import api_text, use_e2e_harness, wait_for_service_account
from hami_shared.kube import discard
from measurement import cpu_seconds, metric_sum
from report import BASELINE_HEADER, E2E_HEADER, baseline_row, e2e_row

API_WRITES = {
    "Binding": 'resource="pods",scope="resource",subresource="binding",verb="POST"',
    "pod patch": 'resource="pods",scope="resource",subresource="",verb="PATCH"',
    "Event": 'resource="events",scope="resource",subresource="",verb="POST"',
}
NAMESPACE = "bench"
BASELINE_NAMESPACE = "bench-baseline"
BASELINE_SCHEDULER = "baseline-scheduler"  # a plain profile: in-tree plugins only, no extender
CREATORS = 32  # concurrent pod creations
ALGORITHM_SUM = "scheduler_scheduling_algorithm_duration_seconds_sum"
IN_TREE_SUM = "scheduler_framework_extension_point_duration_seconds_sum"
BIND_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class BaselineRun:
    """kube-scheduler alone on the same nodes: GPUs as a plain extended resource (times and CPU in seconds)."""

    bound_in: float
    first_bind: float
    cluster_cpu: float
    algorithm: float


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
    baseline: BaselineRun | None = None


@dataclasses.dataclass(frozen=True)
class Window:
    """What was read at the start and the end of the measured window."""

    load_before: tuple[float, float, float]
    started: float
    bound: dict[str, float]  # pod -> monotonic time its bind was seen
    cpu_before: tuple[float, float, float]  # extender, control plane, this process
    cpu_after: tuple[float, float, float]
    metrics_before: str  # the apiserver's /metrics
    metrics_after: str
    extender_metrics: str

    def result(self) -> E2eRun:
        cpu = [after - before for before, after in zip(self.cpu_before, self.cpu_after, strict=True)]
        after, verbs_text = self.metrics_after, self.extender_metrics
        return E2eRun(
            load_before=self.load_before,
            bound_in=max(self.bound.values()) - self.started,
            first_bind=min(self.bound.values()) - self.started,
            extender_cpu=cpu[0],
            cluster_cpu=cpu[1],
            bench_cpu=cpu[2],
            algorithm=metric_sum(after, ALGORITHM_SUM) - metric_sum(self.metrics_before, ALGORITHM_SUM),
            # Over the window only: the baseline window before it ran the same plugins in the same process.
            in_tree=sum(
                metric_sum(text, IN_TREE_SUM, f'extension_point="{point}"') * sign
                for point in ("PreFilter", "Filter", "PreScore", "Score")
                for text, sign in ((after, 1), (self.metrics_before, -1))
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
                - metric_sum(self.metrics_before, "apiserver_request_total", labels)
                for kind, labels in API_WRITES.items()
            },
        )


class BindClock:
    """When each pod was first seen bound (fed by a watch of the namespace); ``all_bound`` once ``expected``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.bound: dict[str, float] = {}
        self.all_bound = asyncio.Event()

    def seen(self, pod: Mapping[str, Any], at: float) -> None:
        if pod["spec"].get("nodeName"):
            self.bound.setdefault(pod["metadata"]["name"], at)
            if len(self.bound) >= self.expected:
                self.all_bound.set()

    async def wait(self) -> None:
        try:
            await asyncio.wait_for(self.all_bound.wait(), timeout=BIND_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(f"only {len(self.bound)} of {self.expected} pods bound after {BIND_TIMEOUT_S} s") from None


def gpu_pod(scheduler_name: str, *, shared: bool = True) -> dict[str, Any]:
    """The pod every creation sends, as raw JSON (no model objects to build or parse here): 1 GPU and 1000 MiB of
    it, or (``shared=False``, the baseline) a plain extended-resource GPU."""
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"} if shared else {"nvidia.com/gpu": "1"}
    container = {"name": "c", "image": "busybox", "resources": {"limits": limits}}
    return {"spec": {"schedulerName": scheduler_name, "containers": [container]}}


async def create_pods(core: Any, pod: dict[str, Any], count: int, namespace: str = NAMESPACE) -> None:
    limit = asyncio.Semaphore(CREATORS)

    async def create(i: int) -> None:
        async with limit:
            body = {**pod, "metadata": {"name": f"p-{i:05d}"}}
            await discard(core.create_namespaced_pod(namespace, body, _preload_content=False))

    await asyncio.gather(*(create(i) for i in range(count)))


def cpu_now(extender: Any, cluster: Any) -> tuple[float, float, float]:
    return cpu_seconds(extender.proc.pid), cpu_seconds(cluster._proc.pid), time.process_time()


async def e2e_run(args: argparse.Namespace) -> E2eRun:
    """Pods/s bound by the real kube-scheduler with this extender on a fresh local control plane.

    By default the pods are created first under a scheduler name no profile serves yet, then
    kube-scheduler is restarted with the extender configured: the clock runs from that restart until a
    watch of the namespace has seen the last pod bound. With ``--e2e-live`` kube-scheduler runs first
    and the clock runs from the first pod creation (this process creates them, 32 at a time, on the
    same cores) to the last bind. kube-scheduler runs inside the API server's process, so its metrics
    (scheduling algorithm time, in-tree plugin time) come from the API server's /metrics.
    """
    use_e2e_harness()
    from e2e_harness.cluster import LocalCluster  # type: ignore[import-not-found]
    from extender_support import ExtenderProcess, free_port  # type: ignore[import-not-found]

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-extender-"))
    cluster = LocalCluster.start(work / "cluster")
    # Success Events are the extender's default now; off unless asked, so runs compare with the earlier ones.
    flags = ["--success-events"] if args.success_events else ["--no-success-events"]
    flags += [] if args.vgpu_node_label else ["--no-vgpu-node-label"]
    flags += [] if args.filter_best_nodes is None else [f"--filter-best-nodes={args.filter_best_nodes}"]
    extender = ExtenderProcess(cluster, free_port(), work / "extender.log", flags)
    try:
        await extender.start()
        assert extender.proc is not None
        window, baseline = await bind_window(cluster, extender, args)
    finally:
        await extender.stop()
        cluster.stop()
    return dataclasses.replace(window.result(), baseline=baseline)


async def baseline_window(cluster: Any, api: Any, args: argparse.Namespace) -> BaselineRun:
    """kube-scheduler alone binding ``args.e2e_pods`` plain extended-resource GPU pods on the nodes already made,
    clocked like the extender's window. The pods stay (bound, nothing runs them); the nodes' allocatable GPUs hold
    both windows' pods."""
    from extender_support import PodWatch
    from kubernetes_asyncio import client as k8s

    core = k8s.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": BASELINE_NAMESPACE}})
    await wait_for_service_account(core, BASELINE_NAMESPACE)
    pod = gpu_pod(BASELINE_SCHEDULER, shared=False)
    config = yaml_with_qps(baseline_config())
    if args.e2e_live:
        await asyncio.to_thread(cluster.restart_scheduler, config)
    else:
        await create_pods(core, pod, args.e2e_pods, BASELINE_NAMESPACE)
    clock = BindClock(args.e2e_pods)
    watch = PodWatch(core, BASELINE_NAMESPACE, clock.seen)
    await watch.start()
    algorithm_before = metric_sum(await api_text(api, "/metrics"), ALGORITHM_SUM)
    cpu_before = cpu_seconds(cluster._proc.pid)
    started = time.monotonic()
    if args.e2e_live:
        await create_pods(core, pod, args.e2e_pods, BASELINE_NAMESPACE)
    else:
        await asyncio.to_thread(cluster.restart_scheduler, config)
    await clock.wait()
    cpu_after = cpu_seconds(cluster._proc.pid)
    await watch.stop()
    algorithm_after = metric_sum(await api_text(api, "/metrics"), ALGORITHM_SUM)
    return BaselineRun(
        bound_in=max(clock.bound.values()) - started,
        first_bind=min(clock.bound.values()) - started,
        cluster_cpu=cpu_after - cpu_before,
        algorithm=algorithm_after - algorithm_before,
    )


def baseline_config() -> str:
    """A KubeSchedulerConfiguration with one plain profile and no extender."""
    import yaml

    return str(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "profiles": [{"schedulerName": "default-scheduler"}, {"schedulerName": BASELINE_SCHEDULER}],
            }
        )
    )


async def bind_window(cluster: Any, extender: Any, args: argparse.Namespace) -> tuple[Window, BaselineRun | None]:
    """Prepare the nodes, time kube-scheduler alone on them (unless ``--no-e2e-baseline``), then time the binding
    of ``args.e2e_pods`` pods with the extender."""
    from extender_support import SCHEDULER_NAME, PodWatch, create_gpu_node, gpus, scheduler_config
    from kubernetes_asyncio import client as k8s

    async with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        for n in range(args.e2e_nodes):
            await create_gpu_node(api, f"bench-{n:03d}", gpus(f"bench-{n:03d}", 8))
        baseline = await baseline_window(cluster, api, args) if args.e2e_baseline else None
        await core.create_namespace({"metadata": {"name": NAMESPACE}})
        await wait_for_service_account(core, NAMESPACE)
        pod = gpu_pod(SCHEDULER_NAME)
        config = yaml_with_qps(with_prioritize(scheduler_config(extender.url), args.filter_best_nodes))
        if args.e2e_live:
            await asyncio.to_thread(cluster.restart_scheduler, config)
        else:
            await create_pods(core, pod, args.e2e_pods)
        clock = BindClock(args.e2e_pods)
        watch = PodWatch(core, NAMESPACE, clock.seen)
        await watch.start()
        metrics_before = await api_text(api, "/metrics")
        load_before = os.getloadavg()
        cpu_before = cpu_now(extender, cluster)
        started = time.monotonic()
        if args.e2e_live:
            await create_pods(core, pod, args.e2e_pods)
        else:
            await asyncio.to_thread(cluster.restart_scheduler, config)
        await clock.wait()
        cpu_after = cpu_now(extender, cluster)
        await watch.stop()
        metrics_after = await api_text(api, "/metrics")
    extender_metrics = await extender.metrics()
    window = Window(
        load_before, started, clock.bound, cpu_before, cpu_after, metrics_before, metrics_after, extender_metrics
    )
    return window, baseline


async def run_e2e(args: argparse.Namespace) -> None:
    use_e2e_harness()
    print_e2e_header(args)
    runs = []
    for number in range(1, args.e2e_runs + 1):
        runs.append(await e2e_run(args))
        print(e2e_row(number, runs[-1], args.e2e_pods), flush=True)
    if args.e2e_baseline:
        print(
            "\nThe same control plane and nodes, kube-scheduler alone (GPUs as a plain extended resource, no extender)"
            " measured first in each run; ratio = pods/s with the extender / pods/s alone (target >= 0.8):\n"
        )
        print("\n".join(BASELINE_HEADER))
        for number, run in enumerate(runs, 1):
            print(baseline_row(number, run, args.e2e_pods), flush=True)


def print_e2e_header(args: argparse.Namespace) -> None:
    print(
        f"\nend to end: {args.e2e_pods} pods (1 GPU, 1000 MiB each) on {args.e2e_nodes} simulated nodes x 8 GPUs"
        f" through the real kube-scheduler + extender (hami.io/vgpu-node label"
        f" {'on' if args.vgpu_node_label else 'off'}: written"
        " once a device plugin reports the allocation, so never here: no device plugin runs;"
        f" BindingSucceed Events {'on' if args.success_events else 'off'}; filter answers "
        + (
            "as the deploy tree configures it"
            if args.filter_best_nodes is None
            else f"the best {args.filter_best_nodes} nodes, no prioritizeVerb"
            if args.filter_best_nodes
            else "every fitting node, then prioritize"
        )
        + "); clock from "
        + (
            "the first pod creation (pods created by this process during the run)"
            if args.e2e_live
            else "the kube-scheduler restart (pods created before)"
        )
        + " to the last bind seen by a watch; CPU per pod over that window; target >= 100 pods/s"
    )
    print()
    print("\n".join(E2E_HEADER))


def with_prioritize(config: str, filter_best_nodes: int | None) -> str:
    """The configuration as the deploy tree has it (``None``), or with prioritizeVerb only when filter answers every
    fitting node (``0``): with N > 0 best nodes filter has already applied the extender's scores."""
    import yaml

    if filter_best_nodes is None:
        return config
    doc = yaml.safe_load(config)
    for extender in doc["extenders"]:
        if filter_best_nodes > 0:
            extender.pop("prioritizeVerb", None)
        else:
            extender["prioritizeVerb"] = "prioritize"
    return str(yaml.safe_dump(doc))


def yaml_with_qps(config: str) -> str:
    """kube-scheduler's client defaults to 50 QPS; at 100+ pods/s its own writes (events) need more."""
    import yaml

    doc = yaml.safe_load(config)
    doc["clientConnection"] = {"qps": 500, "burst": 1000}
    return str(yaml.safe_dump(doc))
