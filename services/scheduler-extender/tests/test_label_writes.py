"""The pod label writes on a first start: rate-limited, oldest first, one per pod (issue 22).

A cluster of pods placed by HAMi without our ``hami.io/vgpu-node`` label makes the extender's first list
ask for one label patch per pod. ``RecordingCore`` is a test double of the API server's pod PATCH (it records
when each patch starts, on a virtual clock the label writer's ``sleep`` advances), so the pacing is checked
exactly, without wall-clock timing. The token bucket itself is tested with the writer, in
shared/tests/test_writer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from extender_builders import pod_json
from hami_scheduler_extender.adapters.kube import MAX_PENDING_LABELS, KubeClient
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.names import ResourceNames
from prometheus_client import CollectorRegistry

RATE, BURST = 20.0, 10


class VirtualTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class _Response:
    status = 200

    def release(self) -> None:
        return None


class RecordingCore:
    """Double of CoreV1Api's pod PATCH: records (virtual time, namespace/name, patch)."""

    def __init__(self, time: VirtualTime) -> None:
        self.time = time
        self.patches: list[tuple[float, str, dict[str, Any]]] = []

    async def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> _Response:
        self.patches.append((self.time.now, f"{namespace}/{name}", body))
        await asyncio.sleep(0)
        return _Response()


def label_less_pods(count: int) -> list[dict[str, Any]]:
    """Running pods placed by HAMi on n1: allocation done (bind-phase success), no hami.io/vgpu-node label."""
    pods = []
    for i in range(count):
        pod = pod_json(f"job-{i}", uid=f"uid-{i}", node_name="n1", namespace=f"team-{i % 7}", phase="Running")
        pod["metadata"]["annotations"] = {
            names.VGPU_NODE: "n1",
            names.DEVICES_ALLOCATED: "GPU-0,NVIDIA,1000,0:;",
            names.BIND_PHASE: "success",
        }
        pods.append(pod)
    return pods


def extender_with(client: KubeClient) -> Extender:
    return Extender(
        state=ClusterState(),
        kube=client,
        config=ExtenderConfig(
            names=ResourceNames(), defaults=RequestDefaults(), node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD
        ),
        metrics=ExtenderMetrics(CollectorRegistry(), version="test"),
        ready=lambda: None,
    )


async def write_all(client: KubeClient, core: RecordingCore, expected: int) -> None:
    writers = asyncio.create_task(client.run_writers())
    try:
        for _ in range(100_000):
            if len(core.patches) >= expected and client.labels_pending() == 0:
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError(f"{len(core.patches)} of {expected} label patches sent")
        for _ in range(100):  # anything more would show up here
            await asyncio.sleep(0)
    finally:
        writers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writers


async def test_a_first_start_on_label_less_pods_writes_within_the_rate_oldest_first_once_each() -> None:
    time = VirtualTime()
    core = RecordingCore(time)
    client = KubeClient(
        None,
        component="hami-scheduler",
        label_rate=RATE,
        label_burst=BURST,
        core=core,
        clock=time.clock,
        sleep=time.sleep,
    )
    extender = extender_with(client)
    pods = label_less_pods(1000)
    started = time.now
    for pod in pods:  # the first list, as the pod reflector hands every listed pod to pod_seen
        extender.pod_seen(pod)
    for pod in pods[:50]:  # the same pods seen again (watch events) before their turn: no second write
        extender.pod_seen(pod)
    await write_all(client, core, len(pods))
    assert [target for _, target, _ in core.patches] == [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods
    ]
    assert all(
        body == {"metadata": {"uid": f"uid-{i}", "labels": {names.VGPU_NODE: "n1"}}}
        for i, (_, _, body) in enumerate(core.patches)
    )
    times = [t for t, _, _ in core.patches]
    # Over any window of T seconds, at most BURST + RATE * T writes start.
    for first in range(len(times)):
        for last in range(first, min(len(times), first + 200)):
            assert last - first + 1 <= BURST + RATE * (times[last] - times[first]) + 1e-6, (first, last)
    # And no slower than the rate: the last write starts when its token has accrued.
    assert times[-1] - started == pytest.approx((len(pods) - BURST) / RATE)
    assert client.labels_written == len(pods)


async def test_the_label_queue_is_bounded_and_a_dropped_pod_is_labelled_when_seen_again() -> None:
    time = VirtualTime()
    core = RecordingCore(time)
    client = KubeClient(
        None, component="c", label_rate=1e6, label_burst=1000, core=core, clock=time.clock, sleep=time.sleep
    )
    for i in range(MAX_PENDING_LABELS + 5):
        client.label_pod(pod={"name": f"p{i}", "namespace": "d", "uid": f"u{i}"}, labels={names.VGPU_NODE: "n1"})
    assert client.labels_pending() == MAX_PENDING_LABELS
    assert client.writes_dropped == 5
    await write_all(client, core, MAX_PENDING_LABELS)
    late = MAX_PENDING_LABELS + 4
    client.label_pod(pod={"name": f"p{late}", "namespace": "d", "uid": f"u{late}"}, labels={names.VGPU_NODE: "n1"})
    await write_all(client, core, MAX_PENDING_LABELS + 1)
    assert core.patches[-1][1] == f"d/p{late}"
