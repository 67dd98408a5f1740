"""Restartable init containers (sidecars, ``restartPolicy: Always``) in fit, usage and slots.

Kubernetes' rule (KEP-753, component-helpers ``AggregateContainerRequests``; the kubelet device
manager keeps a sidecar's devices and hands a plain init container's on): on a card, a pod's peak
is the larger of each plain init container plus the sidecars declared before it, and all sidecars
plus all app containers. The tables below state expected placements and holds from that rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.core import commit, objects
from hami_scheduler_extender.core.fit import fit_pod
from hami_scheduler_extender.core.model import DeviceGrant, DeviceUsage, FailureReason, PodAllocation, runs_alone
from hami_scheduler_extender.core.request import PlacementOptions, PodRequest
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.quantity import pod_gpu_requests, sidecar_positions

R = FailureReason
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def sidecar(name: str, **resources: int) -> dict[str, Any]:
    return {**container(name, **resources), "restartPolicy": "Always"}


def plain(name: str, **resources: int) -> dict[str, Any]:
    return container(name, **resources)


def one_card(devmem: int = 8192, *, count: int = 10, devcore: int = 100) -> ClusterState:
    return state_with(node_json("n1", [gpu("GPU-0", devmem=devmem, count=count, devcore=devcore)]))


def two_cards(devmem: int = 8192) -> ClusterState:
    return state_with(node_json("n1", [gpu("GPU-0", devmem=devmem, index=0), gpu("GPU-1", devmem=devmem, index=1)]))


def fit(state: ClusterState, pod: Mapping[str, Any]) -> Any:
    view = state.view("n1")
    assert view is not None
    return fit_pod(view, request_of(pod))


# --- which containers run alone ----------------------------------------------------------------------------


def test_sidecar_positions_read_restart_policy_always_only() -> None:
    init: list[Any] = [sidecar("a"), plain("b"), {**plain("c"), "restartPolicy": "OnFailure"}, sidecar("d"), "junk"]
    assert sidecar_positions(init) == frozenset({0, 3})
    assert sidecar_positions({"not": "a list"}) == frozenset()
    assert sidecar_positions([{"restartPolicy": ["Always"]}]) == frozenset()
    requests = pod_gpu_requests({"initContainers": init[:4], "containers": [plain("app")]})
    assert requests.sidecars == frozenset({0, 3})
    assert request_of(pod_json(init_containers=init[:4])).sidecars == frozenset({0, 3})


def test_runs_alone_is_only_a_plain_init_container() -> None:
    kinds = [runs_alone(p, init_containers=3, sidecars=frozenset({1})) for p in range(5)]
    assert kinds == [True, False, True, False, False]


def test_a_request_refuses_sidecar_positions_outside_the_init_containers() -> None:
    with pytest.raises(ValueError, match="sidecars"):
        PodRequest(needs=(), init_containers=0, sidecars=frozenset({0}), options=PlacementOptions())


# --- fit: tables of pods on one 8192 MiB card ------------------------------------------------------------------


ONE_CARD_CASES = [
    # (init containers, app containers, fits on one 8192 MiB / 100-core card, the reason when not)
    pytest.param(
        [sidecar("s", gpu=1, mem=6000)],
        [plain("a", gpu=1, mem=6000)],
        False,
        R.CARD_INSUFFICIENT_MEMORY,
        id="sidecar+app-over",
    ),
    pytest.param([sidecar("s", gpu=1, mem=4000)], [plain("a", gpu=1, mem=4000)], True, None, id="sidecar+app-under"),
    pytest.param([plain("i", gpu=1, mem=6000)], [plain("a", gpu=1, mem=6000)], True, None, id="plain-init+app"),
    pytest.param(
        [sidecar("s", gpu=1, mem=3000), plain("i", gpu=1, mem=6000)],
        [],
        False,
        R.CARD_INSUFFICIENT_MEMORY,
        id="sidecar-before-plain-init-over",
    ),
    pytest.param(
        [plain("i", gpu=1, mem=6000), sidecar("s", gpu=1, mem=3000)],
        [],
        True,
        None,
        id="sidecar-after-plain-init",
    ),
    pytest.param(
        [sidecar("s1", gpu=1, mem=3000), sidecar("s2", gpu=1, mem=3000)],
        [plain("a", gpu=1, mem=3000)],
        False,
        R.CARD_INSUFFICIENT_MEMORY,
        id="two-sidecars+app-over",
    ),
    pytest.param(
        [sidecar("s1", gpu=1, mem=2000), sidecar("s2", gpu=1, mem=2000)],
        [plain("a", gpu=1, mem=4000)],
        True,
        None,
        id="two-sidecars+app-under",
    ),
    pytest.param(
        [sidecar("s", gpu=1, mem=100, cores=60)],
        [plain("a", gpu=1, mem=100, cores=60)],
        False,
        R.CARD_INSUFFICIENT_CORE,
        id="cores-sidecar+app-over",
    ),
    pytest.param(
        [plain("i", gpu=1, mem=100, cores=60)],
        [plain("a", gpu=1, mem=100, cores=60)],
        True,
        None,
        id="cores-plain-init+app",
    ),
    pytest.param(
        [sidecar("s", gpu=1, mem=100, cores=40), plain("i", gpu=1, mem=100, cores=70)],
        [],
        False,
        R.CARD_INSUFFICIENT_CORE,
        id="cores-sidecar-before-plain-init-over",
    ),
    pytest.param(
        [sidecar("s", gpu=1, mem=100, cores=100)],
        [plain("a", gpu=1, mem=100)],
        False,
        R.CARD_COMPUTE_UNITS_EXHAUSTED,
        id="exclusive-sidecar-leaves-no-compute",
    ),
    pytest.param(
        [sidecar("s", gpu=1, mem=100)],
        [plain("a", gpu=1, mem=100, cores=100)],
        False,
        R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT,
        id="exclusive-app-beside-a-sidecar",
    ),
    pytest.param(
        [plain("i", gpu=1, mem=100)],
        [plain("a", gpu=1, mem=100, cores=100)],
        True,
        None,
        id="exclusive-app-after-plain-init",
    ),
]


@pytest.mark.parametrize(("init", "app", "fits", "reason"), ONE_CARD_CASES)
def test_one_card(init: list[dict[str, Any]], app: list[dict[str, Any]], fits: bool, reason: R | None) -> None:
    result = fit(one_card(), pod_json(init_containers=init, containers=app or [plain("none")]))
    assert result.fits is fits
    if reason is not None:
        assert dict(result.reasons) == {reason: 1}


def test_a_sidecar_and_an_app_container_take_two_slots() -> None:
    pod = pod_json(init_containers=[sidecar("s", gpu=1, mem=100)], containers=[plain("a", gpu=1, mem=100)])
    assert dict(fit(one_card(count=1), pod).reasons) == {R.CARD_TIME_SLICING_EXHAUSTED: 1}
    init_pod = pod_json(init_containers=[plain("i", gpu=1, mem=100)], containers=[plain("a", gpu=1, mem=100)])
    assert fit(one_card(count=1), init_pod).fits


def test_the_sidecar_and_the_app_container_go_to_different_cards_when_one_cannot_hold_both() -> None:
    pod = pod_json(init_containers=[sidecar("s", gpu=1, mem=6000)], containers=[plain("a", gpu=1, mem=6000)])
    result = fit(two_cards(), pod)
    assert result.grants is not None
    [[side], [app]] = result.grants
    assert side.uuid != app.uuid
    assert (side.usedmem, app.usedmem) == (6000, 6000)


def test_binpack_still_keeps_the_sidecar_and_the_app_container_apart_when_they_overflow() -> None:
    pod = pod_json(
        init_containers=[sidecar("s", gpu=1, mem=6000)],
        containers=[plain("a", gpu=1, mem=6000)],
        annotations={names.GPU_SCHEDULER_POLICY: "binpack"},
    )
    result = fit(two_cards(), pod)
    assert result.grants is not None
    assert result.grants[0][0].uuid != result.grants[1][0].uuid


def test_a_sidecar_counts_against_other_pods_on_the_node() -> None:
    state = two_cards()
    first = pod_json("first", init_containers=[sidecar("s", gpu=1, mem=6000)], containers=[plain("a", gpu=1, mem=6000)])
    allocation, _ = state.reserve_fit(
        uid="first", namespace="d", name="first", node="n1", request=request_of(first), now=0.0
    )
    assert allocation is not None
    # Each card now holds 6000 MiB for the pod's whole life: a 3000 MiB container fits nowhere.
    assert dict(fit(state, pod_json(containers=[plain("b", gpu=1, mem=3000)])).reasons) == {
        R.CARD_INSUFFICIENT_MEMORY: 2
    }


# --- usage: the hold per card from the grants ---------------------------------------------------------------


def grants(*containers: tuple[tuple[str, int, int], ...]) -> tuple[tuple[DeviceGrant, ...], ...]:
    return tuple(tuple(DeviceGrant(uuid=u, usedmem=m, usedcores=c) for u, m, c in entry) for entry in containers)


USAGE_CASES = [
    # (grants per container, init containers, sidecars, expected {card: (slots, MiB, cores)})
    pytest.param(
        grants((("A", 6000, 10),), (("A", 6000, 20),)), 1, {0}, {"A": (2, 12000, 30)}, id="sidecar+app-add-up"
    ),
    pytest.param(
        grants((("A", 6000, 10),), (("A", 5000, 20),)), 1, set(), {"A": (1, 6000, 20)}, id="plain-init-is-a-peak"
    ),
    pytest.param(
        grants((("A", 3000, 30),), (("A", 6000, 10),), (("A", 1000, 5),)),
        2,
        {0},
        {"A": (2, 9000, 40)},
        id="plain-init-after-a-sidecar-runs-beside-it",
    ),
    pytest.param(
        grants((("A", 6000, 10),), (("A", 3000, 30),), (("A", 1000, 5),)),
        2,
        {1},
        {"A": (2, 6000, 35)},
        id="plain-init-before-a-sidecar-runs-alone",
    ),
    pytest.param(
        grants((("A", 1000, 10),), (("A", 2000, 10),), (("A", 500, 10),), (("A", 4000, 10),)),
        3,
        {0, 1},
        {"A": (3, 7000, 30)},
        id="two-sidecars-then-plain-init-then-app",
    ),
    pytest.param(
        grants((("A", 6000, 10),), (("B", 6000, 20),)),
        1,
        {0},
        {"A": (1, 6000, 10), "B": (1, 6000, 20)},
        id="sidecar-and-app-on-different-cards",
    ),
    pytest.param(
        grants((("A", 2000, 0),), (("B", 7000, 0),), (("A", 3000, 0), ("B", 1000, 0))),
        2,
        {0},
        {"A": (2, 5000, 0), "B": (1, 7000, 0)},
        id="plain-init-on-the-other-card-than-the-sidecar",
    ),
    pytest.param(grants((), (("A", 100, 0),)), 1, {0}, {"A": (1, 100, 0)}, id="sidecar-without-gpu"),
]


@pytest.mark.parametrize(("pod_grants", "init", "sidecars", "expected"), USAGE_CASES)
def test_usage(
    pod_grants: tuple[tuple[DeviceGrant, ...], ...],
    init: int,
    sidecars: set[int],
    expected: dict[str, tuple[int, int, int]],
) -> None:
    allocation = PodAllocation(
        uid="u",
        namespace="d",
        name="p",
        node="n1",
        grants=pod_grants,
        init_containers=init,
        sidecars=frozenset(sidecars),
    )
    usage = allocation.usage()
    assert {uuid: (u.slots, u.mem, u.cores) for uuid, u in usage.items()} == expected
    assert all(isinstance(u, DeviceUsage) for u in usage.values())


# --- the hold reads the same from the reservation and from the pod's annotations ----------------------------


def test_reservation_and_annotations_agree_and_the_watch_confirms_without_a_rebuild() -> None:
    state = two_cards(devmem=16000)
    pod = pod_json(
        "p",
        uid="uid-side",
        init_containers=[sidecar("s", gpu=1, mem=6000), plain("i", gpu=1, mem=2000)],
        containers=[plain("a", gpu=1, mem=6000)],
    )
    allocation, _ = state.reserve_fit(
        uid="uid-side", namespace="default", name="p", node="n1", request=request_of(pod), now=0.0
    )
    assert allocation is not None
    assert allocation.sidecars == frozenset({0})
    annotations = commit.placement_annotations(allocation, now=NOW)
    bound = dict(pod)
    bound["metadata"] = {**pod["metadata"], "annotations": annotations}
    bound["spec"] = {**pod["spec"], "nodeName": "n1"}
    rebuilt = objects.pod_allocation(bound)
    assert rebuilt is not None
    assert (rebuilt.grants, rebuilt.init_containers, rebuilt.sidecars) == (
        allocation.grants,
        allocation.init_containers,
        allocation.sidecars,
    )
    assert rebuilt.usage() == allocation.usage()
    before = state.view("n1")
    state.apply_pod("uid-side", rebuilt)
    held = state.allocation("uid-side")
    assert held is not None
    assert not held.assumed
    assert state.view("n1") is before  # same usage: the view was not rebuilt


# --- slots: which replica each container names ------------------------------------------------------------


def slot_replicas(pod: Mapping[str, Any], **card: int) -> list[tuple[str, ...]]:
    state = one_card(**card)
    allocation, _ = state.reserve_fit(uid="u", namespace="d", name="p", node="n1", request=request_of(pod), now=0.0)
    assert allocation is not None
    return list(allocation.slots)


def test_a_sidecar_and_an_app_container_name_different_replicas() -> None:
    pod = pod_json(init_containers=[sidecar("s", gpu=1, mem=100)], containers=[plain("a", gpu=1, mem=100)])
    assert slot_replicas(pod, count=2) == [("GPU-0-0",), ("GPU-0-1",)]


def test_an_app_container_shares_a_plain_init_containers_replica_rather_than_a_sidecars() -> None:
    # Two replicas: the sidecar takes 0, the plain init container 1; the app container has none left, so it
    # shares the plain init container's (ended when it starts, and kubelet hands its device ID on).
    pod = pod_json(
        init_containers=[sidecar("s", gpu=1, mem=100), plain("i", gpu=1, mem=100)],
        containers=[plain("a", gpu=1, mem=100)],
    )
    assert slot_replicas(pod, count=2) == [("GPU-0-0",), ("GPU-0-1",), ("GPU-0-1",)]
