"""The pod kubelet is admitting, from its pod-resources List answer and the pod cache (core/admission.py).

The tables are kubelet states seen from inside GetPreferredAllocation / Allocate (kubelet v1.34: a pod is added to
the pod manager right before its admission; each container's devices are recorded after its Allocate; plain init
containers are not listed) crossed with what the pod cache holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hami_device_plugin.core.admission import (
    MATCHED_SERVED_AGAIN,
    REASON_MALFORMED,
    REASON_NONE,
    REASON_SEVERAL,
    REASON_UNKNOWN_POD,
    Admitting,
    ListedContainer,
    ListedPod,
    Undecided,
    container_under_admission,
    pod_under_admission,
    served_again,
    served_again_preferred,
)
from hami_device_plugin.core.pods import Assignment, NoMatch, PodRecord, pod_record
from hami_device_plugin.core.records import container_record
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-00000000-0000-4000-8000-000000000001"


def rec(name: str, *ctrs: Ctr, phase: str = "allocating", namespace: str = "default", **kw: object) -> PodRecord:
    return pod_record(
        pod_json(name, uid=f"uid-{name}", node=NODE, containers=ctrs, phase=phase, namespace=namespace, **kw)  # type: ignore[arg-type]
    )


def gpu_pod(name: str, replica: int, **kw: object) -> PodRecord:
    return rec(name, Ctr("main", [(G0, replica, 1000, 10)]), **kw)


def listed(name: str, *containers: tuple[str, Sequence[str]], namespace: str = "default") -> ListedPod:
    return ListedPod(namespace, name, tuple(ListedContainer(c, tuple(ids)) for c, ids in containers))


A, B, C = gpu_pod("a", 0), gpu_pod("b", 1), gpu_pod("c", 2)
CPU_ONLY = rec("cpu", Ctr("main"))


@pytest.mark.parametrize(
    ("answer", "records", "expected"),
    [
        # Steady state: every earlier pod has its devices, the pod under admission has none.
        ([listed("a", ("main", [f"{G0}-0"])), listed("b", ("main", []))], [A, B, C], "b"),
        # A restarted kubelet's batch: pods later in its (unknowable) order are not listed yet; C before A.
        ([listed("c", ("main", [])), listed("b", ("main", [f"{G0}-1"]))], [A, B, C], "c"),
        # A pod without GPUs listed without devices is not taken for the one under admission.
        ([listed("cpu", ("main", [])), listed("a", ("main", []))], [A, CPU_ONLY], "a"),
    ],
)
def test_the_listed_gpu_pod_without_devices_is_the_one_kubelet_admits(
    answer: list[ListedPod], records: list[PodRecord], expected: str
) -> None:
    decision = pod_under_admission(answer, records)
    assert isinstance(decision, Admitting)
    assert decision.pod.name == expected


def test_multi_container_pod_stays_under_admission_until_its_last_gpu_container() -> None:
    pod = rec("multi", Ctr("first", [(G0, 0, 1000, 10)]), Ctr("second", [(G1, 0, 2000, 20)]))
    answer = [listed("multi", ("first", [f"{G0}-0"]), ("second", []))]
    decision = pod_under_admission(answer, [pod], claimed={(pod.uid, 0)})
    assert isinstance(decision, Admitting)
    assert decision.pod.uid == pod.uid


def test_pod_whose_only_gpu_container_is_a_plain_init_container_is_taken_while_it_waits() -> None:
    # List leaves plain init containers out: the pod shows only its main container, which asks for no GPU.
    pod = rec("init-only", Ctr("setup", [(G0, 3, 500, 5)], init=True), Ctr("main"))
    decision = pod_under_admission([listed("init-only", ("main", []))], [pod, A])
    assert isinstance(decision, Admitting)
    assert decision.pod.name == "init-only"
    # Once its init container is allocated (claimed), it has nothing left to admit.
    done = pod_under_admission([listed("init-only", ("main", []))], [pod], claimed={(pod.uid, 0)})
    assert isinstance(done, Undecided)
    assert done.reason == REASON_NONE


def test_restartable_sidecar_is_listed_and_counts() -> None:
    pod = rec("sidecar", Ctr("proxy", [(G0, 4, 500, 5)], init=True), Ctr("main", [(G1, 4, 500, 5)]))
    answer = [listed("sidecar", ("proxy", [f"{G0}-4"]), ("main", []))]
    decision = pod_under_admission(answer, [pod], claimed={(pod.uid, 0)})
    assert isinstance(decision, Admitting)


def test_a_pod_not_placed_by_us_is_still_the_one_named_so_that_allocate_refuses_it() -> None:
    # Asking for nvidia.com/gpu without our placement: kubelet admits it; Allocate must not serve it A's grant.
    stranger = rec(
        "stranger", Ctr("main", [(G0, 5, 1000, 10)]), extra_annotations={"hami.io/vgpu-devices-to-allocate": ""}
    )
    decision = pod_under_admission(
        [listed("stranger", ("main", [])), listed("a", ("main", [f"{G0}-0"]))], [stranger, A]
    )
    assert isinstance(decision, Admitting)
    assert decision.pod.name == "stranger"


def test_namespaces_tell_pods_of_the_same_name_apart() -> None:
    mine = gpu_pod("same", 6, namespace="team-a")
    theirs = gpu_pod("same", 7, namespace="team-b")
    answer = [
        listed("same", ("main", [f"{G0}-7"]), namespace="team-b"),
        listed("same", ("main", []), namespace="team-a"),
    ]
    decision = pod_under_admission(answer, [theirs, mine])
    assert isinstance(decision, Admitting)
    assert decision.pod.namespace == "team-a"


@pytest.mark.parametrize(
    ("answer", "records", "reason", "wait"),
    [
        # Two GPU pods without devices: kubelet state the plugin cannot read (counted, falls back).
        ([listed("a", ("main", [])), listed("b", ("main", []))], [A, B], REASON_SEVERAL, False),
        # Every listed pod has its devices (kubelet asks for something else): nothing to say.
        ([listed("a", ("main", [f"{G0}-0"]))], [A, B], REASON_NONE, False),
        ([], [A, B], REASON_NONE, False),
        # kubelet already holds a pod our watch has not delivered yet: wait for the cache.
        ([listed("new", ("main", []))], [A], REASON_UNKNOWN_POD, True),
        ([listed("new", ("main", [])), listed("a", ("main", []))], [A], REASON_UNKNOWN_POD, True),
        # Several known without devices: waiting for an unknown one decides nothing.
        (
            [listed("new", ("main", [])), listed("a", ("main", [])), listed("b", ("main", []))],
            [A, B],
            REASON_SEVERAL,
            False,
        ),
    ],
)
def test_undecided_answers_say_why(answer: list[ListedPod], records: list[PodRecord], reason: str, wait: bool) -> None:
    decision = pod_under_admission(answer, records)
    assert isinstance(decision, Undecided)
    assert (decision.reason, decision.wait) == (reason, wait)
    assert decision.detail


def test_a_listed_pod_with_devices_is_never_waited_for_even_if_the_cache_lacks_it() -> None:
    decision = pod_under_admission([listed("gone", ("main", [f"{G0}-9"])), listed("a", ("main", []))], [A])
    assert isinstance(decision, Admitting)
    assert decision.pod.name == "a"


def test_a_pod_kubelet_allocates_again_is_the_one_named_never_another() -> None:
    # Allocated by us (claimed), yet the restarted kubelet lists its GPU container without devices (it lost the
    # record) and allocates again: that pod is under admission (Allocate then refuses it), not the next candidate.
    allocated = gpu_pod("old", 0)
    decision = pod_under_admission([listed("old", ("main", []))], [allocated, B], claimed={(allocated.uid, 0)})
    assert isinstance(decision, Admitting)
    assert decision.pod.name == "old"
    assert decision.unrecorded == ("main",)
    assert container_under_admission(decision) == 0


# --- a container served before, allocated again by a restarted kubelet ----------------------------------------

SERVED = rec("served", Ctr("first", [(G0, 2, 1000, 10)]), Ctr("second", [(G0, 3, 3000, 30), (G1, 4, 4000, 40)]))


def test_the_container_kubelet_allocates_again_is_the_first_listed_one_without_devices() -> None:
    answer = [listed("served", ("first", [f"{G0}-2"]), ("second", []))]
    decision = pod_under_admission(answer, [SERVED, B])
    assert isinstance(decision, Admitting)
    assert decision.unrecorded == ("second",)
    assert container_under_admission(decision) == 1


def test_a_pod_with_init_containers_of_ours_names_no_container() -> None:
    # Plain init containers are not listed though kubelet allocates them first: the listing cannot tell which.
    pod = rec("with-init", Ctr("setup", [(G0, 5, 500, 5)], init=True), Ctr("main", [(G0, 6, 500, 5)]))
    decision = pod_under_admission([listed("with-init", ("main", []))], [pod])
    assert isinstance(decision, Admitting)
    assert container_under_admission(decision) is None


@pytest.mark.parametrize(
    "device_ids",
    [
        [f"{G0}-3", f"{G1}-4"],  # its own slots
        [f"{G1}-9", f"{G0}-7"],  # other replicas of the same physical GPUs
    ],
)
def test_a_served_container_allocated_again_gets_exactly_its_grant(device_ids: list[str]) -> None:
    result = served_again(SERVED, 1, device_ids)
    assert isinstance(result, Assignment)
    assert (result.pod.uid, result.position, result.matched_by) == (SERVED.uid, 1, MATCHED_SERVED_AGAIN)
    assert result.devices == SERVED.allocated[1]
    assert [(d.uuid, d.usedmem, d.usedcores) for d in result.devices] == [(G0, 3000, 30), (G1, 4000, 40)]


@pytest.mark.parametrize(
    "device_ids",
    [
        [f"{G0}-3", f"{G0}-4"],  # one ID on the wrong GPU
        [f"{G0}-3"],  # fewer GPUs than the grant
        [f"{G0}-3", f"{G1}-4", f"{G1}-5"],  # more
        ["not-ours"],
    ],
)
def test_a_served_container_asking_for_other_gpus_is_refused(device_ids: list[str]) -> None:
    result = served_again(SERVED, 1, device_ids)
    assert isinstance(result, NoMatch)
    assert "already served" in result.reason


def test_a_grant_that_differs_from_the_plugins_record_is_refused() -> None:
    served_as = container_record(SERVED, SERVED.containers[1], SERVED.allocated[1])
    assert isinstance(served_again(SERVED, 1, [f"{G0}-3", f"{G1}-4"], served_as), Assignment)
    edited = rec("served", Ctr("first", [(G0, 2, 1000, 10)]), Ctr("second", [(G0, 3, 9000, 90), (G1, 4, 4000, 40)]))
    result = served_again(edited, 1, [f"{G0}-3", f"{G1}-4"], served_as)
    assert isinstance(result, NoMatch)
    assert "differs" in result.reason


def test_a_served_container_without_a_grant_is_refused() -> None:
    pod = pod_record(
        pod_json(
            "bare",
            uid="uid-bare",
            node=NODE,
            containers=[Ctr("main", [(G0, 0, 1000, 10)])],
            extra_annotations={"hami.io/vgpu-devices-allocated": ""},
        )
    )
    assert isinstance(served_again(pod, 0, [f"{G0}-0"]), NoMatch)


def test_preferred_for_a_served_container_steers_to_its_slots_else_its_gpus() -> None:
    available = [f"{G0}-{r}" for r in range(8)] + [f"{G1}-{r}" for r in range(8)]
    assert served_again_preferred(SERVED, 1, available, [], 2) == (f"{G0}-3", f"{G1}-4")
    taken = [d for d in available if d not in (f"{G0}-3", f"{G1}-4")]
    chosen = served_again_preferred(SERVED, 1, taken, [], 2)
    assert chosen is not None
    assert sorted(d.rsplit("-", 1)[0] for d in chosen) == [G0, G1]
    assert served_again_preferred(SERVED, 1, [f"{G0}-0", f"{G0}-1"], [], 2) is None


def test_a_deleted_pod_beside_its_successor_of_the_same_name() -> None:
    doc = pod_json("web", uid="uid-old-web", node=NODE, containers=[Ctr("main", [(G0, 1, 1000, 10)])])
    doc["metadata"]["deletionTimestamp"] = "2026-11-23T07:00:30Z"
    old = pod_record(doc)
    new = rec("web", Ctr("main", [(G0, 2, 1000, 10)]))
    decision = pod_under_admission([listed("web", ("main", []))], [old, new])
    assert isinstance(decision, Admitting)
    assert decision.pod.uid == new.uid


def test_oversized_answers_are_not_used() -> None:
    huge = [listed(f"p{i}", ("main", [])) for i in range(5001)]
    decision = pod_under_admission(huge, [A])
    assert isinstance(decision, Undecided)
    assert decision.reason == REASON_MALFORMED
