"""The usage cache: reservations, confirmation by the watch, release, expiry, slots, restart."""

from __future__ import annotations

import dataclasses
import datetime as dt

from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.adapters import watch
from hami_scheduler_extender.core import commit, objects
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices

NOW = dt.datetime(2026, 11, 23, 7, 0, tzinfo=dt.UTC)


def reserve(state: ClusterState, pod: dict[str, object], node: str = "n1", now: float = 0.0):  # type: ignore[no-untyped-def]
    meta = pod["metadata"]
    assert isinstance(meta, dict)
    return state.reserve_fit(
        uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], node=node, request=request_of(pod), now=now
    )


def annotated(pod: dict[str, object], allocation: object, *, bound: bool = True) -> dict[str, object]:
    """The pod as the API returns it after our Binding (or, ``bound=False``, annotated but not bound)."""
    out = dict(pod)
    meta = dict(pod["metadata"])  # type: ignore[arg-type]
    meta["annotations"] = commit.placement_annotations(allocation, now=NOW)  # type: ignore[arg-type]
    out["metadata"] = meta
    if bound:
        out["spec"] = dict(pod["spec"], nodeName=meta["annotations"][names.VGPU_NODE])  # type: ignore[arg-type]
    return out


def test_reservation_takes_capacity_at_once() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=2)]))
    first, _ = reserve(state, pod_json("a"))
    second, _ = reserve(state, pod_json("b"))
    third, fit = reserve(state, pod_json("c"))
    assert first is not None
    assert second is not None
    assert third is None
    assert fit is not None
    assert fit.message == "1/1 CardTimeSlicingExhausted"


def test_unreserve_is_idempotent() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=1)]))
    pod = pod_json("a")
    allocation, _ = reserve(state, pod)
    assert allocation is not None
    assert state.unreserve(allocation.uid)
    assert not state.unreserve(allocation.uid)
    assert reserve(state, pod_json("b"))[0] is not None


def test_assumed_hold_survives_an_event_without_annotations() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=1)]))
    pod = pod_json("a")
    allocation, _ = reserve(state, pod)
    assert allocation is not None
    watch.apply_pod_event(state, "MODIFIED", pod)  # an event that predates our patch
    assert state.allocation(allocation.uid) is not None
    watch.apply_pod_event(state, "MODIFIED", annotated(pod, allocation))
    confirmed = state.allocation(allocation.uid)
    assert confirmed is not None
    assert not confirmed.assumed
    assert confirmed.grants == allocation.grants
    assert confirmed.slots == allocation.slots
    watch.apply_pod_event(state, "DELETED", pod)
    assert state.allocation(allocation.uid) is None
    view = state.view("n1")
    assert view is not None
    assert view.devices[0].used == 0


def test_confirming_a_reservation_as_taken_keeps_the_node_view() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1")]))
    pod = pod_json("a", containers=[container(gpu=2, mem=1000)])
    allocation, _ = reserve(state, pod)
    assert allocation is not None
    view = state.view("n1")
    watch.apply_pod_event(state, "MODIFIED", annotated(pod, allocation))
    held = state.allocation(allocation.uid)
    assert held is not None
    assert not held.assumed
    assert state.view("n1") is view  # same usage: nothing to rebuild
    # The pod shows something else than we reserved (another writer): the view follows the pod.
    other = pod_json("b", containers=[container(gpu=1, mem=500)])
    reserved, _ = reserve(state, other)
    assert reserved is not None
    [[grant]] = reserved.grants
    shown = dataclasses.replace(reserved, grants=((dataclasses.replace(grant, usedmem=700),),))
    watch.apply_pod_event(state, "MODIFIED", annotated(other, shown))
    after = state.view("n1")
    assert after is not None
    assert sum(d.used_mem for d in after.devices) == 1000 * 2 + 700


def test_confirmed_hold_stays_while_the_pod_lives_and_ends_with_it() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=1)]))
    pod = pod_json("a")
    allocation, _ = reserve(state, pod)
    assert allocation is not None
    bound = annotated(pod, allocation)
    watch.apply_pod_event(state, "MODIFIED", bound)
    confirmed = state.allocation(allocation.uid)
    assert confirmed is not None
    assert not confirmed.assumed
    # Annotations removed from the running pod (tampering): the GPU is still in use, the hold stays.
    stripped = dict(bound, metadata=dict(bound["metadata"], annotations={}))  # type: ignore[call-overload]
    watch.apply_pod_event(state, "MODIFIED", stripped)
    assert state.allocation(allocation.uid) == confirmed
    finished = dict(bound, status={"phase": "Succeeded"})
    watch.apply_pod_event(state, "MODIFIED", finished)
    assert state.allocation(allocation.uid) is None
    watch.apply_pod_event(state, "MODIFIED", bound)
    watch.apply_pod_event(state, "DELETED", bound)
    assert state.allocation(allocation.uid) is None


def test_unconfirmed_reservations_expire() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=1)]))
    allocation, _ = reserve(state, pod_json("a"), now=100.0)
    assert allocation is not None
    assert state.expire_assumed(now=150.0, ttl=60.0) == []
    assert state.expire_assumed(now=161.0, ttl=60.0) == [allocation.uid]


def test_relist_keeps_assumed_and_replaces_confirmed() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=3)]))
    pod_a, pod_b = pod_json("a"), pod_json("b")
    a, _ = reserve(state, pod_a)
    b, _ = reserve(state, pod_b)
    assert a is not None
    assert b is not None
    watch.apply_pod_event(state, "MODIFIED", annotated(pod_a, a))
    # The re-list no longer has a (deleted during a watch gap); b's patch is newer than the list.
    watch.apply_pod_list(state, [pod_b])
    assert state.allocation(a.uid) is None
    assert state.allocation(b.uid) is not None


def test_slots_avoid_replicas_other_pods_name() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=4)]))
    pods = [pod_json(f"p{i}") for i in range(4)]
    slots = []
    for pod in pods:
        allocation, _ = reserve(state, pod)
        assert allocation is not None
        slots.append(allocation.slots[0][0])
    assert slots == ["GPU-0-0", "GPU-0-1", "GPU-0-2", "GPU-0-3"]
    state.unreserve(pods[1]["metadata"]["uid"])  # type: ignore[index]
    again, _ = reserve(state, pod_json("q"))
    assert again is not None
    assert again.slots == (("GPU-0-1",),)


def test_restart_rebuilds_the_same_usage_from_annotations() -> None:
    nodes = [node_json("n1", [gpu("GPU-0", count=3), gpu("GPU-1", count=3)])]
    state = state_with(*nodes)
    bound = []
    for i in range(5):
        pod = pod_json(f"p{i}", containers=[container(gpu=1, mem=1000 + i, cores=10)])
        allocation, _ = reserve(state, pod)
        assert allocation is not None
        bound.append(annotated(pod, allocation))
    before = state.view("n1")
    fresh = ClusterState()
    watch.apply_node_list(fresh, nodes, count_resource="nvidia.com/gpu")
    watch.apply_pod_list(fresh, bound)
    after = fresh.view("n1")
    assert before is not None
    assert after is not None
    assert [(d.used, d.used_mem, d.used_cores, d.replicas_held) for d in before.devices] == [
        (d.used, d.used_mem, d.used_cores, d.replicas_held) for d in after.devices
    ]


def test_annotations_use_hami_encodings() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1")]))
    pod = pod_json(
        "p", init_containers=[container("i")], containers=[container("a", gpu=2, mem=3000, cores=30), container("b")]
    )
    allocation, _ = reserve(state, pod)
    assert allocation is not None
    annotations = commit.placement_annotations(allocation, now=NOW)
    assert annotations[names.VGPU_NODE] == "n1"
    assert annotations[names.BIND_PHASE] == "allocating"
    assert annotations[names.BIND_TIME] == annotations[names.VGPU_TIME] == str(int(NOW.timestamp()))
    devices = annotations[names.DEVICES_ALLOCATED]
    assert devices == annotations[names.DEVICES_TO_ALLOCATE]
    assert devices.startswith(";GPU-")
    assert devices.endswith(";;")
    assert {d.uuid for d in decode_pod_devices(devices)[1]} == {"GPU-0", "GPU-1"}
    assert all(d.type == "NVIDIA" and d.usedmem == 3000 and d.usedcores == 30 for d in decode_pod_devices(devices)[1])
    slots = decode_device_slots(annotations[names.DEVICE_SLOTS])
    assert slots[0] == ()
    assert slots[2] == ()
    assert sorted(slots[1]) == ["GPU-0-0", "GPU-1-0"]
    rebuilt = objects.pod_allocation(annotated(pod, allocation))
    assert rebuilt is not None
    assert rebuilt.grants == allocation.grants
    assert rebuilt.init_containers == 1


def test_pods_of_other_schedulers_or_without_annotations_hold_nothing() -> None:
    assert objects.pod_allocation(pod_json()) is None
    pod = pod_json(annotations={names.VGPU_NODE: "n1"})
    assert objects.pod_allocation(pod) is None


def test_vgpu_node_label_is_due_once_the_pod_is_allocated_on_its_node() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0")]))
    pod = pod_json("p")
    allocation, _ = reserve(state, pod)
    assert objects.node_label_due(pod) is None  # not placed
    assert objects.node_label_due(annotated(pod, allocation, bound=False)) is None  # placed, not bound
    bound = annotated(pod, allocation)
    assert objects.node_label_due(bound) is None  # bound, device plugin not done
    bound["metadata"]["annotations"][names.BIND_PHASE] = "success"  # type: ignore[index]
    assert objects.node_label_due(bound) == "n1"
    bound["metadata"]["labels"] = {names.VGPU_NODE: "n1"}  # type: ignore[index]
    assert objects.node_label_due(bound) is None
    bound["metadata"]["labels"] = {names.VGPU_NODE: "elsewhere"}  # type: ignore[index]
    assert objects.node_label_due(bound) == "n1"
    assert objects.node_label_due(dict(bound, status={"phase": "Succeeded"})) is None
    long_name = "n" * 64  # a valid node name, too long for a label value
    bound["metadata"]["annotations"][names.VGPU_NODE] = long_name  # type: ignore[index]
    bound["spec"] = dict(bound["spec"], nodeName=long_name)  # type: ignore[arg-type]
    assert objects.node_label_due(bound) is None
    assert commit.placement_labels(long_name) == {}


def test_unreadable_annotation_does_not_drop_a_hold() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", count=1)]))
    pod = pod_json("a")
    allocation, _ = reserve(state, pod)
    broken = annotated(pod, allocation)
    broken["metadata"]["annotations"][names.DEVICES_ALLOCATED] = "GPU-0,NVIDIA;"  # type: ignore[index]
    watch.apply_pod_event(state, "MODIFIED", broken)
    assert state.allocation(allocation.uid) is not None  # type: ignore[union-attr]


def test_node_removal_and_gpu_removal() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1")]))
    allocation, _ = reserve(state, pod_json("a", containers=[container(gpu=2, mem=10)]))
    assert allocation is not None
    watch.apply_node_event(state, "MODIFIED", node_json("n1", [gpu("GPU-0")]), count_resource="nvidia.com/gpu")
    view = state.view("n1")
    assert view is not None
    assert len(view.devices) == 1
    assert view.devices[0].used == 1
    watch.apply_node_event(state, "DELETED", node_json("n1"), count_resource="nvidia.com/gpu")
    assert state.view("n1") is None
