"""The extender's pod Events: HAMi's reasons and message shapes, and a burst that stays a bounded number of writes."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import pytest
from extender_builders import container, gpu, node_json, pod_json, state_with
from hami_scheduler_extender.adapters.kube import KubeClient
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.core import events
from hami_scheduler_extender.core.events import EventGate, EventLimits
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults
from hami_shared.names import ResourceNames
from http_harness import FakeKube, Harness
from prometheus_client import CollectorRegistry

# --- messages (HAMi pkg/scheduler/events.go and scheduler.go genSuccessMsg) ----------------------------


def test_filtering_succeed_has_hamis_shape_best_first() -> None:
    message = events.filtering_succeed(3, ["n1", "n2"], [2.0, 7.5])
    assert message == "find fit node(n2), 1 nodes not fit, 2 nodes fit(n2:7.50,n1:2.00)"


def test_filtering_succeed_names_at_most_ten_nodes() -> None:
    fits = [f"n{i:02}" for i in range(25)]
    message = events.filtering_succeed(30, fits, [float(i) for i in range(25)])
    assert message.startswith("find fit node(n24), 5 nodes not fit, 25 nodes fit(n24:24.00,n23:23.00,")
    assert message.endswith(",... 15 more)")
    assert message.count(":") == 10


def test_filtering_failed_has_hamis_text_reasons_and_what_to_change() -> None:
    message = events.filtering_failed(4, {"CardInsufficientMemory": 3, "node unregistered": 1})
    assert message.startswith("no available node, 4 nodes do not meet: 3 nodes CardInsufficientMemory, ")
    assert "1 nodes node unregistered" in message
    assert message.endswith("lower nvidia.com/gpumem (or gpumem-percentage) or wait for memory")


def test_binding_succeed_has_hamis_text() -> None:
    assert events.binding_succeed("n1", "ml", "train") == "Successfully binding node [n1] to ml/train"
    assert events.binding_succeed("n1", "ml", "train", ["GPU-a"]).endswith("(GPUs GPU-a)")


# --- the gate ---------------------------------------------------------------------------------


def test_a_burst_of_distinct_pods_is_cut_at_the_burst_then_paced_by_the_rate() -> None:
    limits = EventLimits(rate=10.0, burst=100, pod_interval=60.0)
    gate = EventGate(limits, now=0.0)
    admitted = sum(gate.admit(f"ns/p{i}", events.FILTERING_FAILED, 0.0) for i in range(10_000))
    assert admitted == 100
    assert gate.suppressed[events.FILTERING_FAILED] == 9_900
    # Then 10,000 more over 11 seconds (t = 0 .. 11): ten per second get through, whatever the offered load.
    later = sum(gate.admit(f"ns/q{i}", events.FILTERING_FAILED, 1.0 + i / 1000) for i in range(10_000))
    assert later == int(10.0 * 10.999)
    # Each reason has its own bucket: the failures used theirs, successes still have a burst.
    assert gate.admit("ns/ok", events.BINDING_SUCCEED, 11.0)


def test_a_retried_pod_gets_one_event_per_interval() -> None:
    gate = EventGate(EventLimits(pod_interval=60.0), now=0.0)
    admitted = [t for t in range(0, 180, 2) if gate.admit("ns/p", events.FILTERING_FAILED, float(t))]
    assert admitted == [0, 60, 120]
    assert gate.admit("ns/p", events.BINDING_FAILED, 1.0)  # another reason is news


def test_the_pods_remembered_are_bounded() -> None:
    gate = EventGate(EventLimits(max_pods=8, burst=1000), now=0.0)
    for i in range(100):
        gate.admit(f"ns/p{i}", events.FILTERING_FAILED, 0.0)
    assert gate.admit("ns/p0", events.FILTERING_FAILED, 0.0)  # forgotten (oldest first), so written again
    assert not gate.admit("ns/p99", events.FILTERING_FAILED, 0.0)


@pytest.mark.parametrize("limits", [{"rate": 0.0}, {"burst": 0}, {"pod_interval": -1.0}, {"max_pods": 0}])
def test_limits_are_checked(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="event limits"):
        EventLimits(**limits)  # type: ignore[arg-type]


# --- through the extender ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def extender_with(
    kube: FakeKube, clock: Clock, *, success_events: bool = True, registry: CollectorRegistry | None = None
) -> Extender:
    state = state_with(node_json("n1", [gpu("GPU-a0", devmem=16000)]), node_json("n2", [gpu("GPU-b0", devmem=16000)]))
    config = ExtenderConfig(
        names=ResourceNames(),
        defaults=RequestDefaults(),
        node_policy=Policy.BINPACK,
        gpu_policy=Policy.SPREAD,
        success_events=success_events,
        event_limits=EventLimits(rate=5.0, burst=20, pod_interval=30.0),
    )
    return Extender(
        state=state,
        kube=kube,
        config=config,
        metrics=ExtenderMetrics(registry or CollectorRegistry(), version="test"),
        ready=lambda: None,
        clock=clock,
    )


def test_a_burst_of_failing_filters_writes_a_bounded_number_of_events() -> None:
    kube, clock, registry = FakeKube(), Clock(), CollectorRegistry()
    extender = extender_with(kube, clock, registry=registry)
    # 2,000 pods that fit nowhere, each filtered 5 times (kube-scheduler's retries) over 10 seconds.
    for attempt in range(5):
        for i in range(2_000):
            pod = pod_json(f"big-{i}", uid=f"uid-big-{i}", containers=[container(gpu=1, mem=40000)])
            clock.now = 1000.0 + attempt * 2 + i / 1000
            answer = extender.filter({"Pod": pod, "NodeNames": ["n1", "n2"]})
            assert answer["NodeNames"] == []
    written = collections.Counter(e["reason"] for e in kube.events)
    # burst + rate x 9.999 s, against 10,000 failures offered
    assert written == {events.FILTERING_FAILED: 20 + int(5 * 9.999)}
    assert extender.events_suppressed[events.FILTERING_FAILED] == 10_000 - written[events.FILTERING_FAILED]
    # ... and the held-back ones are a metric, by reason
    suppressed = registry.get_sample_value("hami_extender_events_suppressed_total", {"reason": events.FILTERING_FAILED})
    assert suppressed == 10_000 - written[events.FILTERING_FAILED]
    assert kube.events[0]["message"].startswith(
        "no available node, 2 nodes do not meet: 2 nodes CardInsufficientMemory"
    )


async def test_success_events_are_on_by_default_with_hamis_messages(harness: Harness) -> None:
    assert ExtenderConfig(
        names=ResourceNames(), defaults=RequestDefaults(), node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD
    ).success_events
    pod = harness.kube.add(pod_json("small", containers=[container(gpu=1, mem=1000)]))
    answer = await harness.filter(pod, ["n1", "n2", "dead"])
    assert (await harness.bind(pod, answer["NodeNames"][0]))["Error"] == ""
    reasons = [(e["type"], e["reason"]) for e in harness.kube.events]
    assert reasons == [("Normal", events.FILTERING_SUCCEED), ("Normal", events.BINDING_SUCCEED)]
    assert harness.kube.events[0]["message"].startswith("find fit node(n")
    assert ", 1 nodes not fit, 2 nodes fit(" in harness.kube.events[0]["message"]
    node = answer["NodeNames"][0]
    assert harness.kube.events[1]["message"].startswith(f"Successfully binding node [{node}] to default/small")


def test_success_events_can_be_turned_off() -> None:
    kube, clock = FakeKube(), Clock()
    extender = extender_with(kube, clock, success_events=False)
    pod = pod_json("fits", uid="uid-fits")
    assert extender.filter({"Pod": pod, "NodeNames": ["n1", "n2"]})["NodeNames"] == ["n1", "n2"]
    assert kube.events == []


class EventCore:
    """Double of CoreV1Api's Event POST: records the Events written."""

    def __init__(self) -> None:
        self.created: list[dict[str, object]] = []

    async def create_namespaced_event(self, namespace: str, body: dict[str, object], **_: object) -> object:
        self.created.append(body)
        await asyncio.sleep(0)
        return _Done()


class _Done:
    async def read(self) -> bytes:
        return b"{}"

    def release(self) -> None:
        return None


async def test_the_event_writer_keeps_one_queued_event_per_pod_and_reason() -> None:
    core = EventCore()
    client = KubeClient(None, component="hami-scheduler", core=core)
    pod = {"name": "p", "namespace": "ns", "uid": "u"}
    for attempt in range(5):  # queued while the writer has not run: coalesced, the newest kept
        client.emit_event(pod=pod, event_type="Warning", reason=events.FILTERING_FAILED, message=f"try {attempt}")
    client.emit_event(pod=pod, event_type="Normal", reason=events.FILTERING_SUCCEED, message="fits")
    writer = asyncio.create_task(client.run_writers())
    try:
        for _ in range(100):
            if len(core.created) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    assert [(e["reason"], e["message"]) for e in core.created] == [
        (events.FILTERING_FAILED, "try 4"),
        (events.FILTERING_SUCCEED, "fits"),
    ]
