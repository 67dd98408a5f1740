"""Placement trust and per-object isolation in the usage cache (issue 16).

Only pods bound through us count: bound to the node their ``hami.io/vgpu-node`` names, by a scheduler
name we serve, asking for a GPU resource; the extender's own reservations cover the time before. Each
test names the attack or failure it replays.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.adapters import watch
from hami_scheduler_extender.core import commit, objects
from hami_scheduler_extender.core.model import DeviceGrant, PodAllocation
from hami_scheduler_extender.core.state import ClusterState, PendingHoldsFull
from hami_shared import names
from hami_shared.names import ResourceNames

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FULL_CARD = "GPU-n1-0,NVIDIA,16000,100:;"


def forged(pod: dict[str, Any], *, node: str = "n1", allocated: str = FULL_CARD) -> dict[str, Any]:
    """The pod with placement annotations written by its author."""
    pod["metadata"]["annotations"].update({names.VGPU_NODE: node, names.DEVICES_ALLOCATED: allocated})
    return pod


def used(state: ClusterState, node: str = "n1") -> int:
    view = state.view(node)
    assert view is not None
    return sum(d.used_mem for d in view.devices)


class Reports:
    def __init__(self) -> None:
        self.counted: list[str] = []
        self.ignored = watch.IgnoredPods(count=self.counted.append)


def one_card_state(reports: Reports | None = None) -> ClusterState:
    state = ClusterState(on_ignored=reports.ignored.report_allocation if reports else lambda a, r, d: None)
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-n1-0")]))])
    return state


def test_pending_pod_with_forged_placement_and_no_gpu_request_counts_nothing() -> None:
    """Attack: a Pending pod without GPU request annotated vgpu-node=n1 + a full card used to fill the card."""
    reports = Reports()
    state = one_card_state(reports)
    pod = forged(pod_json("attacker", containers=[container()]))
    watch.apply_pod_list(state, [pod], ignored=reports.ignored)
    watch.apply_pod_event(state, "MODIFIED", pod, ignored=reports.ignored)
    assert used(state) == 0
    assert reports.counted == ["not-bound-through-us"]  # once per pod


@pytest.mark.parametrize(
    ("why", "change"),
    [
        ("pending, GPU request", lambda p: None),
        ("bound to another node", lambda p: p["spec"].update(nodeName="n2")),
        ("bound by another scheduler", lambda p: p["spec"].update(nodeName="n1", schedulerName="other")),
        (
            "no schedulerName (default-scheduler)",
            lambda p: (p["spec"].update(nodeName="n1"), p["spec"].pop("schedulerName")),
        ),
    ],
)
def test_placement_counts_only_when_bound_through_us(why: str, change: Any) -> None:
    reports = Reports()
    state = one_card_state(reports)
    pod = forged(pod_json("p"))
    change(pod)
    watch.apply_pod_list(state, [pod], ignored=reports.ignored)
    assert used(state) == 0, why
    assert reports.counted == ["not-bound-through-us"]


def test_bound_pod_without_gpu_request_counts_nothing() -> None:
    reports = Reports()
    state = one_card_state(reports)
    pod = forged(pod_json("p", containers=[container(priority=1)], node_name="n1"))
    watch.apply_pod_event(state, "ADDED", pod, ignored=reports.ignored)
    assert used(state) == 0
    assert reports.counted == ["no-gpu-request"]


def test_pod_bound_through_us_counts() -> None:
    state = one_card_state()
    watch.apply_pod_event(state, "ADDED", forged(pod_json("p", node_name="n1")))
    assert used(state) == 16000


def test_extra_scheduler_names_are_trusted() -> None:
    trust = objects.PlacementTrust.of(frozenset({"hami-scheduler", "gpu-batch"}), ResourceNames())
    state = one_card_state()
    watch.apply_pod_list(state, [forged(pod_json("p", node_name="n1", scheduler_name="gpu-batch"))], trust=trust)
    assert used(state) == 16000


def test_reannotating_a_running_pod_does_not_change_what_it_holds() -> None:
    """Attack: re-annotating one's own running pod with a smaller usedmem used to free capacity."""
    reports = Reports()
    state = one_card_state(reports)
    pod = forged(pod_json("p", node_name="n1"))
    watch.apply_pod_event(state, "ADDED", pod, ignored=reports.ignored)
    smaller = forged(pod_json("p", uid=pod["metadata"]["uid"], node_name="n1"), allocated="GPU-n1-0,NVIDIA,1,0:;")
    watch.apply_pod_event(state, "MODIFIED", smaller, ignored=reports.ignored)
    watch.apply_pod_list(state, [smaller], ignored=reports.ignored)  # a re-list keeps the pinned placement too
    assert used(state) == 16000
    assert reports.counted == ["changed-after-bind"]


def test_devices_the_node_does_not_register_count_nothing_there() -> None:
    reports = Reports()
    state = one_card_state(reports)
    pod = forged(pod_json("p", node_name="n1"), allocated="GPU-n1-0,NVIDIA,1000,0:GPU-elsewhere,NVIDIA,9000,0:;")
    watch.apply_pod_event(state, "ADDED", pod, ignored=reports.ignored)
    assert used(state) == 1000  # the registered card still counts what the pod holds of it
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-n1-0"), gpu("GPU-n1-1")]))])
    assert used(state) == 1000
    assert reports.counted == ["unknown-device"]  # once per pod


def test_our_reservation_covers_the_pod_until_it_is_bound() -> None:
    state = one_card_state()
    pod = pod_json("p", containers=[container(gpu=1, mem=16000)])
    allocation, _ = state.reserve_fit(
        uid=pod["metadata"]["uid"], namespace="default", name="p", node="n1", request=request_of(pod), now=0.0
    )
    assert allocation is not None
    # The pending pod (forged annotations or none) does not confirm nor drop our hold.
    watch.apply_pod_event(state, "MODIFIED", forged(pod, allocated="GPU-n1-0,NVIDIA,1,0:;"))
    assert used(state) == 16000
    held = state.allocation(pod["metadata"]["uid"])
    assert held is not None
    assert held.assumed
    bound = dict(pod, spec=dict(pod["spec"], nodeName="n1"))
    bound["metadata"] = dict(pod["metadata"], annotations=commit.placement_annotations(allocation, now=NOW))
    watch.apply_pod_event(state, "MODIFIED", bound)
    confirmed = state.allocation(pod["metadata"]["uid"])
    assert confirmed is not None
    assert not confirmed.assumed
    assert used(state) == 16000


# --- one bad object never wedges the cache ---------------------------------------------------------------


HUGE = "9" * 5000


@pytest.mark.parametrize(
    "bad",
    [
        forged(pod_json("huge", node_name="n1"), allocated=f"GPU-n1-0,NVIDIA,{HUGE},0:;"),
        forged(pod_json("garbage", node_name="n1"), allocated="not a device list"),
        {"metadata": "not a map", "spec": []},
        {"metadata": {"uid": 7, "annotations": {names.DEVICES_ALLOCATED: 3}}, "status": {"phase": ["x"]}},
        "a string",
        None,
    ],
    ids=["5000-digit-usedmem", "garbage", "wrong-types", "wrong-leaf-types", "string", "null"],
)
def test_a_malformed_pod_is_ignored_and_the_rest_of_the_list_loads(bad: Any) -> None:
    reports = Reports()
    state = ClusterState()
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-n1-0"), gpu("GPU-n1-1", index=1)]))])
    good = forged(pod_json("good", node_name="n1"), allocated="GPU-n1-1,NVIDIA,3000,0:;")
    watch.apply_pod_list(state, [bad, good], ignored=reports.ignored)
    watch.apply_pod_event(state, "MODIFIED", bad, ignored=reports.ignored)
    assert used(state) == 3000
    assert set(reports.counted) <= {"malformed"}


def test_a_malformed_node_is_skipped_and_the_rest_load() -> None:
    counted: list[int] = []
    state = ClusterState()
    bad_nodes: list[Any] = [None, {"metadata": {"name": 5}}, {"metadata": {"name": "x", "annotations": []}}]
    watch.apply_node_list(
        state, [*bad_nodes, node_json("n1")], count_resource="nvidia.com/gpu", on_malformed=lambda: counted.append(1)
    )
    assert "n1" in set(state.node_names())
    watch.apply_node_event(
        state, "MODIFIED", "junk", count_resource="nvidia.com/gpu", on_malformed=lambda: counted.append(1)
    )
    watch.apply_node_event(state, "DELETED", {"metadata": []}, count_resource="nvidia.com/gpu")
    assert "n1" in set(state.node_names())
    assert len(counted) == 3  # None, the nameless node (5 is no name), "junk"


# --- bounded pending holds ---------------------------------------------------------------------------------


def test_pending_holds_are_bounded_refused_when_full_and_old_ones_expire() -> None:
    state = ClusterState(max_assumed=2, assume_ttl=60.0)
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-n1-0", count=10)]))])
    pods = [pod_json(f"p{i}", containers=[container(gpu=1, mem=100)]) for i in range(4)]

    def reserve(pod: dict[str, Any], now: float) -> PodAllocation | None:
        meta = pod["metadata"]
        allocation, _ = state.reserve_fit(
            uid=meta["uid"], namespace="default", name=meta["name"], node="n1", request=request_of(pod), now=now
        )
        return allocation

    assert reserve(pods[0], 0.0) is not None
    assert reserve(pods[1], 30.0) is not None
    with pytest.raises(PendingHoldsFull, match="max-pending-holds"):
        reserve(pods[2], 50.0)
    assert reserve(pods[1], 50.0) is not None  # a pod already holding may be reserved again
    assert state.assumed_count() == 2
    # At 70 s the oldest is past the TTL: it is expired to make room, the younger one stays.
    assert reserve(pods[2], 70.0) is not None
    assert state.allocation(pods[0]["metadata"]["uid"]) is None
    assert state.allocation(pods[1]["metadata"]["uid"]) is not None
    assert state.assumed_count() == 2


def test_confirmation_frees_a_pending_slot() -> None:
    state = ClusterState(max_assumed=1)
    state.replace_nodes([objects.node_inventory(node_json("n1", [gpu("GPU-n1-0", count=10)]))])
    pod = pod_json("p", containers=[container(gpu=1, mem=100)])
    allocation, _ = state.reserve_fit(
        uid=pod["metadata"]["uid"], namespace="default", name="p", node="n1", request=request_of(pod), now=0.0
    )
    assert allocation is not None
    state.apply_pod(allocation.uid, dataclasses.replace(allocation, assumed=False, assumed_at=0.0))
    assert state.assumed_count() == 0


def test_without_hold_restores_the_hold_unchanged() -> None:
    state = state_with(node_json("n1", [gpu("GPU-n1-0", count=1)]))
    allocation = PodAllocation(
        uid="u",
        namespace="default",
        name="p",
        node="n1",
        grants=((DeviceGrant(uuid="GPU-n1-0", usedmem=5, usedcores=0),),),
        assumed=True,
    )
    state.apply_pod("x", None)
    state._put(allocation)
    with state.without_hold("u"):
        assert used(state) == 0
    assert state.allocation("u") == allocation
    assert used(state) == 5
    assert state.assumed_count() == 1
