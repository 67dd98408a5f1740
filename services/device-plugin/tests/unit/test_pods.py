"""Pod identification for GetPreferredAllocation and Allocate, without a node lock."""

from __future__ import annotations

from typing import Any

from hami_device_plugin.core.pods import Assignment, NoMatch, PlacementPolicy, identify, pod_record, preferred_devices
from hami_shared import names
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-00000000-0000-4000-8000-000000000001"


def rec(name: str, *ctrs: Ctr, created: str = "2026-11-23T07:00:00Z", **kw: object) -> object:
    return pod_record(pod_json(name, uid=f"uid-{name}", node=NODE, containers=ctrs, created=created, **kw))  # type: ignore[arg-type]


def test_two_pods_same_gpu_different_sizes_are_told_apart_by_slots() -> None:
    small = rec("small", Ctr("c", [(G0, 0, 2000, 10)]))
    large = rec("large", Ctr("c", [(G0, 1, 4000, 20)]))
    pods = [small, large]
    for ids, expected, mem in (([f"{G0}-1"], "large", 4000), ([f"{G0}-0"], "small", 2000)):
        result = identify(pods, NODE, ids)
        assert isinstance(result, Assignment)
        assert result.pod.name == expected
        assert result.devices[0].usedmem == mem
        assert result.matched_by == "slots"


def test_preferred_allocation_returns_slots_of_oldest_pending_pod() -> None:
    older = rec("older", Ctr("c", [(G0, 3, 1000, 0)]), created="2026-11-23T07:00:00Z")
    newer = rec("newer", Ctr("c", [(G0, 1, 1000, 0)]), created="2026-11-23T07:00:01Z")
    available = [f"{G0}-{n}" for n in range(5)]
    assert preferred_devices([newer, older], NODE, available, [], 1) == (f"{G0}-3",)


def test_preferred_skips_pods_whose_slots_are_not_available() -> None:
    held = rec("held", Ctr("c", [(G0, 0, 1000, 0)]), created="2026-11-23T07:00:00Z")
    free = rec("free", Ctr("c", [(G1, 2, 1000, 0)]), created="2026-11-23T07:00:05Z")
    assert preferred_devices([held, free], NODE, [f"{G1}-2", f"{G1}-3"], [], 1) == (f"{G1}-2",)


def test_preferred_falls_back_to_replicas_of_the_scheduled_gpus() -> None:
    pod = rec("p", Ctr("c", [(G0, 0, 1000, 0), (G1, 0, 1000, 0)]))
    available = [f"{G0}-5", f"{G1}-7", f"{G1}-8"]
    assert preferred_devices([pod], NODE, available, [], 2) == (f"{G0}-5", f"{G1}-7")


def test_fallback_on_physical_gpus_when_kubelet_picked_other_replicas() -> None:
    pod = rec("p", Ctr("c", [(G0, 0, 3000, 30)]))
    result = identify([pod], NODE, [f"{G0}-9"])
    assert isinstance(result, Assignment)
    assert result.matched_by == "gpus"


def test_multi_container_pod_consumes_in_order_and_claims_exclude() -> None:
    pod = rec("multi", Ctr("a", [(G0, 0, 1000, 10)]), Ctr("b", [(G0, 1, 2000, 20), (G1, 1, 2000, 20)]))
    first = identify([pod], NODE, [f"{G0}-0"])
    assert isinstance(first, Assignment)
    assert (first.container.name, first.position) == ("a", 0)
    second = identify([pod], NODE, [f"{G1}-1", f"{G0}-1"], claimed={(pod.uid, 0)})  # type: ignore[attr-defined]
    assert isinstance(second, Assignment)
    assert second.container.name == "b"
    assert [d.usedmem for d in second.devices] == [2000, 2000]
    again = identify([pod], NODE, [f"{G0}-0"], claimed={(pod.uid, 0), (pod.uid, 1)})  # type: ignore[attr-defined]
    assert isinstance(again, NoMatch)


def test_init_container_position_and_reused_devices() -> None:
    pod = rec("init", Ctr("setup", [(G0, 2, 500, 5)], init=True), Ctr("main", [(G1, 4, 6000, 50)]))
    first = identify([pod], NODE, [f"{G0}-2"])
    assert isinstance(first, Assignment)
    assert first.container.init
    # kubelet reuses the init container's device for the next container: matched through the init slots
    second = identify([pod], NODE, [f"{G0}-2"], claimed={(pod.uid, 0)})  # type: ignore[attr-defined]
    assert isinstance(second, Assignment)
    assert (second.container.name, second.matched_by) == ("main", "init-reuse")
    assert second.devices[0].uuid == G1


def test_no_match_says_why() -> None:
    result = identify([], NODE, [f"{G0}-0"])
    assert isinstance(result, NoMatch)
    assert "no pod on node node-a is waiting for GPUs" in result.reason
    other = rec("other", Ctr("c", [(G1, 0, 1000, 0)]))
    result = identify([other], NODE, [f"{G0}-0"])
    assert isinstance(result, NoMatch)
    assert "default/other container c" in result.reason
    assert isinstance(identify([other], NODE, ["not-a-slot"]), NoMatch)


def test_only_allocating_live_pods_on_this_node_are_candidates() -> None:
    done = rec("done", Ctr("c", [(G0, 0, 1000, 0)]), phase="success")
    elsewhere = pod_record(pod_json("x", uid="u-x", node="node-b", containers=[Ctr("c", [(G0, 0, 1, 0)])]))
    deleting_json = pod_json("d", uid="u-d", node=NODE, containers=[Ctr("c", [(G0, 0, 1, 0)])])
    deleting_json["metadata"]["deletionTimestamp"] = "2026-11-23T07:00:00Z"
    for pod in (done, elsewhere, pod_record(deleting_json)):
        assert isinstance(identify([pod], NODE, [f"{G0}-0"]), NoMatch)


def test_malformed_annotation_is_a_problem_not_a_crash() -> None:
    bad = pod_json("bad", uid="u-bad", node=NODE, containers=[Ctr("c", [(G0, 0, 1, 0)])])
    bad["metadata"]["annotations"][names.DEVICES_TO_ALLOCATE] = "GPU-x,NVIDIA;"
    record = pod_record(bad)
    assert record.problem is not None
    assert names.DEVICES_TO_ALLOCATE in record.problem
    assert isinstance(identify([record], NODE, [f"{G0}-0"]), NoMatch)


def test_container_spec_fields() -> None:
    pod = rec("p", Ctr("c", [(G0, 0, 1, 0)], env=[("CUDA_DISABLE_CONTROL", "true")], priority=0), vulkan=True)
    assert pod.vulkan  # type: ignore[attr-defined]
    assert pod.containers[0].disable_control  # type: ignore[attr-defined]
    assert pod.containers[0].priority == 0  # type: ignore[attr-defined]


# --- only placements our scheduler extender made (issue 16) ---------------------------------------------------

POLICY = PlacementPolicy(gpu_memory_mib={G0: 16384, G1: 16384})


def attack_pod(**changes: Any) -> dict[str, Any]:
    """The issue's attack: a pod of another scheduler, bound by its author to the node, with a GPU request and
    the placement annotations written by hand (limit 0: no memory limit)."""
    body = pod_json("attacker", uid="u-attacker", node=NODE, containers=[Ctr("c", [(G0, 0, 1, 0)])])
    body["spec"]["schedulerName"] = "other"
    body["metadata"]["annotations"] = {
        names.BIND_PHASE: "allocating",
        names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,0,0:;",
    }
    for key, value in changes.items():
        if key == "spec":
            body["spec"].update(value)
        else:
            body["metadata"]["annotations"][key] = value
    return body


def test_the_issues_attack_is_refused_with_a_clear_reason() -> None:
    result = identify([pod_record(attack_pod())], NODE, [f"{G0}-0"], policy=POLICY)
    assert isinstance(result, NoMatch)
    assert "pod default/attacker is refused" in result.reason
    assert "spec.schedulerName is 'other'" in result.reason
    assert isinstance(identify([pod_record(attack_pod())], NODE, [f"{G0}-0"]), NoMatch)  # the default policy too


def test_a_placement_must_be_consistent_with_the_pods_own_request() -> None:
    ours = {"spec": {"schedulerName": "hami-scheduler"}, names.VGPU_NODE: NODE}
    cases = {
        "not this node": ({**ours, names.VGPU_NODE: "node-b", names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,100,0:;"}),
        "no vgpu-node": (
            {"spec": {"schedulerName": "hami-scheduler"}, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,1,0:;"}
        ),
        "0 MiB": ({**ours}),
        "more than the card": ({**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,16385,0:;"}),
        "cores above 100": ({**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,100,101:;"}),
        "not a GPU of the node": ({**ours, names.DEVICES_TO_ALLOCATE: "GPU-elsewhere,NVIDIA,100,0:;"}),
        "two GPUs for a request of one": (
            {**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,100,0:{G1},NVIDIA,100,0:;"}
        ),
        "5,000 digits": ({**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,{'9' * 5000},0:;"}),
        "oversized": ({**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,100,0:" * 5000 + ";"}),
    }
    for what, changes in cases.items():
        record = pod_record(attack_pod(**changes))
        result = identify([record], NODE, [f"{G0}-0"], policy=POLICY)
        assert isinstance(result, NoMatch), what
        assert "pod default/attacker is refused" in result.reason, what
    # The same pod with a placement our extender would make is matched.
    fine = pod_record(attack_pod(**{**ours, names.DEVICES_TO_ALLOCATE: f"{G0},NVIDIA,16384,100:;"}))
    assert isinstance(identify([fine], NODE, [f"{G0}-0"], policy=POLICY), Assignment)


def test_a_container_without_a_gpu_request_gets_no_devices() -> None:
    body = pod_json("p", uid="u-p", node=NODE, containers=[Ctr("side"), Ctr("c", [(G0, 0, 100, 0)])])
    body["metadata"]["annotations"][names.DEVICES_TO_ALLOCATE] = f"{G0},NVIDIA,100,0:;;"  # devices for "side"
    result = identify([pod_record(body)], NODE, [f"{G0}-0"], policy=POLICY)
    assert isinstance(result, NoMatch)
    assert "container 'side' 1 GPU(s) but it requests 0" in result.reason


def test_refused_pods_leave_the_others_matchable() -> None:
    good = rec("good", Ctr("c", [(G0, 1, 1000, 10)]))
    result = identify([pod_record(attack_pod()), good], NODE, [f"{G0}-1"], policy=POLICY)
    assert isinstance(result, Assignment)
    assert result.pod.name == "good"
    assert preferred_devices([pod_record(attack_pod()), good], NODE, [f"{G0}-0", f"{G0}-1"], [], 1, policy=POLICY) == (
        f"{G0}-1",
    )
