"""Support for the scheduler-extender end-to-end tests: run hami-scheduler-extender as a process against the
local control plane, point kube-scheduler at it (with the deploy tree's KubeSchedulerConfiguration), create
simulated GPU Nodes (Node objects with the device plugin's register annotation and allocatable GPUs; no kubelet),
and check placements for over-commitment from the pods' own annotations."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from e2e_harness.cluster import LocalCluster
from e2e_harness.ports import free_port, free_ports
from hami_shared import names
from hami_shared.kube import checked, read_json
from hami_shared.node_register import DeviceInfo, encode_node_devices
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices, split_slot_id
from hami_shared.topology import NodeTopology
from kubernetes_asyncio import client as k8s

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = REPO / "deploy/kustomize/base/scheduler/kube-scheduler-config.yaml"
SCHEDULER_NAME = "hami-scheduler"


class ExtenderProcess:
    """hami-scheduler-extender as a child process (the real service, admin kubeconfig)."""

    def __init__(self, cluster: LocalCluster, port: int, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.cluster, self.port, self.log_path = cluster, port, log_path
        self.extra_args = list(extra_args)
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}"  # the verbs
        # Probes and metrics have listeners of their own (loopback here too); fixed at construction so that a
        # restarted process answers on the same ones.
        metrics_port, self.probe_port = free_ports(2, exclude={port})
        self.status_url = f"http://127.0.0.1:{metrics_port}"

    async def start(self, ready_within: float = 120.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hami_scheduler_extender.app.cli",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--listen=127.0.0.1:{self.port}",
                f"--metrics-listen={self.status_url.removeprefix('http://')}",
                f"--probe-listen=127.0.0.1:{self.probe_port}",
                f"--scheduler-name={SCHEDULER_NAME}",
                *self.extra_args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            async with asyncio.timeout(ready_within), aiohttp.ClientSession() as session:
                while True:
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"extender exited with {self.proc.returncode}: see {self.log_path}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{self.status_url}/readyz") as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise TimeoutError(f"extender not ready after {ready_within}s: see {self.log_path}") from None

    async def kill(self) -> None:
        """SIGKILL: no chance to clean anything up (what a crash or an OOM kill does)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc and self.proc.returncode is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.status_url}/metrics") as response:
            return await response.text()


class PodWatch:
    """Every state of a namespace's pods as the API server sends them: one list, then one raw watch, each pod
    handed to ``on_pod(pod, monotonic time of arrival)``. Cheap enough to run next to a benchmark (one
    json.loads per event; a list per poll would cost far more on the same cores). A watch the API server ends or
    refuses (an ERROR event such as "Too large resource version" when its watch cache lags the list, which a fresh,
    busy control plane does) is followed by a new list and watch, so no state is missed."""

    def __init__(self, core: k8s.CoreV1Api, namespace: str, on_pod: Callable[[Mapping[str, Any], float], None]) -> None:
        self._core: Any = core
        self._namespace, self._on_pod = namespace, on_pod
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        response = await self._list_and_watch()
        self._task = asyncio.create_task(self._run(response))

    async def _list_and_watch(self) -> Any:
        listed = await read_json(self._core.list_namespaced_pod(self._namespace, _preload_content=False))
        now = time.monotonic()
        for pod in listed["items"]:
            self._on_pod(pod, now)
        return await checked(
            self._core.list_namespaced_pod(
                self._namespace,
                watch=True,
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=3600,
                _preload_content=False,
                _request_timeout=3660,
            )
        )

    async def _run(self, response: Any) -> None:
        while True:
            await self._read(response)
            response = await self._list_and_watch()

    async def _read(self, response: Any) -> None:
        try:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(event["object"], time.monotonic())
                    elif event["type"] == "ERROR":
                        return
        finally:
            response.release()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def scheduling_through(
    cluster: LocalCluster, log_path: Path, extra_args: Sequence[str] = ()
) -> AsyncIterator[ExtenderProcess]:
    """An extender process that the local kube-scheduler calls (the deploy tree's scheduler config), for as long as
    the context lasts; afterwards the scheduler runs without it again."""
    process = ExtenderProcess(cluster, free_port(), log_path, extra_args)
    await process.start()
    cluster.restart_scheduler(scheduler_config(process.url))
    try:
        yield process
    finally:
        cluster.restart_scheduler(None)
        await process.stop()


def scheduler_config(extender_url: str) -> str:
    """The deploy tree's KubeSchedulerConfiguration, pointed at ``extender_url``, plus the default profile."""
    doc = yaml.safe_load(DEPLOY_CONFIG.read_text())
    doc.pop("leaderElection", None)  # the local control plane turns it off anyway
    doc["extenders"][0]["urlPrefix"] = extender_url
    doc["profiles"] = [{"schedulerName": "default-scheduler"}, *doc["profiles"]]
    return str(yaml.safe_dump(doc))


def gpus(
    prefix: str, count: int, *, split: int = 10, devmem: int = 16000, type: str = "NVIDIA-Tesla T4"
) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=f"GPU-{prefix}-{i}",
            index=i,
            count=split,
            devmem=devmem,
            devcore=100,
            type=type,
            mode="hami-core",
            health=True,
        )
        for i in range(count)
    ]


async def create_gpu_node(
    api: k8s.ApiClient, name: str, devices: Sequence[DeviceInfo], *, allocatable_gpus: int | None = None
) -> None:
    """A Node as the device plugin and the kubelet would leave it: register annotation + allocatable GPUs."""
    core = k8s.CoreV1Api(api)
    await core.create_node(
        {
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "e2e.hami.io/node": name},
                "annotations": {names.NODE_REGISTER: encode_node_devices(devices)},
            }
        }
    )
    total = sum(d.count for d in devices) if allocatable_gpus is None else allocatable_gpus
    resources = {"cpu": "64", "memory": "256Gi", "pods": "250", "nvidia.com/gpu": str(total)}
    await core.patch_node_status(name, {"status": {"capacity": resources, "allocatable": resources}})


def gpu_pod(
    name: str,
    node_label: str | Sequence[str],
    *,
    gpus: int = 1,
    mem: int | None = 1000,
    cores: int | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)}
    if mem is not None:
        limits["nvidia.com/gpumem"] = str(mem)
    if cores is not None:
        limits["nvidia.com/gpucores"] = str(cores)
    labels = [node_label] if isinstance(node_label, str) else list(node_label)
    return {
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "e2e.hami.io/node", "operator": "In", "values": labels}]}
                        ]
                    }
                }
            },
            "containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits}}],
        },
    }


async def list_pods(api: k8s.ApiClient, namespace: str) -> list[dict[str, Any]]:
    pods = await k8s.CoreV1Api(api).list_namespaced_pod(namespace)
    return [api.sanitize_for_serialization(p) for p in pods.items]


def check_no_overcommit(
    pods: Sequence[Mapping[str, Any]], inventory: Mapping[str, Sequence[DeviceInfo]]
) -> dict[str, int]:
    """From the pods' own annotations: per card, containers <= split count, memory and cores <= the card's; slot
    IDs unique per card and naming that card. Returns the number of bound GPU pods per node."""
    devices = {d.id: (node, d) for node, ds in inventory.items() for d in ds}
    slots_used: dict[str, int] = defaultdict(int)
    mem_used: dict[str, int] = defaultdict(int)
    cores_used: dict[str, int] = defaultdict(int)
    replicas: dict[str, set[int]] = defaultdict(set)
    per_node: dict[str, int] = defaultdict(int)
    for pod in pods:
        annotations = pod["metadata"].get("annotations") or {}
        node = pod["spec"].get("nodeName")
        if not node:
            continue
        assert annotations.get(names.VGPU_NODE) == node, f"{pod['metadata']['name']}: vgpu-node != nodeName"
        per_node[node] += 1
        allocated = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])
        slots = decode_device_slots(annotations[names.DEVICE_SLOTS])
        assert len(slots) == len(allocated)
        for container, container_slots in zip(allocated, slots, strict=True):
            assert sorted(split_slot_id(s)[0] for s in container_slots) == sorted(d.uuid for d in container)
            for device in container:
                owner, info = devices[device.uuid]
                assert owner == node, f"{device.uuid} is on {owner}, pod bound to {node}"
                slots_used[device.uuid] += 1
                mem_used[device.uuid] += device.usedmem
                cores_used[device.uuid] += device.usedcores
            for slot in container_slots:
                uuid, replica = split_slot_id(slot)
                assert replica not in replicas[uuid], f"slot {slot} given twice"
                assert 0 <= replica < devices[uuid][1].count
                replicas[uuid].add(replica)
    for uuid, used in slots_used.items():
        info = devices[uuid][1]
        assert used <= info.count, f"{uuid}: {used} containers > split count {info.count}"
        assert mem_used[uuid] <= info.devmem, f"{uuid}: {mem_used[uuid]} MiB > {info.devmem}"
        assert cores_used[uuid] <= info.devcore, f"{uuid}: {cores_used[uuid]} cores > {info.devcore}"
    return dict(per_node)


def best_by_brute_force(topology: NodeTopology, free: list[str], k: int) -> set[str]:
    """The reference for HAMi's ``topology-aware`` policy: the ``k`` of the ``free`` GPUs with the highest summed
    pair score, by trying every set (the first one found wins a tie)."""
    scores = topology.pair_scores()
    best: tuple[str, ...] = ()
    best_score = -1
    for combo in itertools.combinations(free, k):
        total = sum(scores[a][b] for a, b in itertools.combinations(combo, 2))
        if total > best_score:
            best, best_score = combo, total
    return set(best)
