"""Fit and scores: every HAMi failure reason, policies, NUMA, exclusivity, init containers."""

from __future__ import annotations

import pytest
from extender_builders import container, gpu, node_json, pod_json, request_of, state_with
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.fit import fit_pod, node_priority
from hami_scheduler_extender.core.model import DeviceGrant, FailureReason, NodeView, PodAllocation, Policy
from hami_scheduler_extender.core.state import ClusterState

R = FailureReason


def view_of(state: ClusterState, name: str = "n1") -> NodeView:
    view = state.view(name)
    assert view is not None
    return view


def hold(state: ClusterState, uid: str, node: str, *grants: tuple[str, int, int]) -> None:
    state.apply_pod(
        uid,
        PodAllocation(
            uid=uid,
            namespace="default",
            name=uid,
            node=node,
            grants=(tuple(DeviceGrant(uuid=u, usedmem=m, usedcores=c) for u, m, c in grants),),
        ),
    )


def one_gpu_state(**kwargs: object) -> ClusterState:
    return state_with(node_json("n1", [gpu("GPU-0", **kwargs)]))  # type: ignore[arg-type]


def reasons_for(state: ClusterState, pod: dict[str, object]) -> dict[R, int]:
    result = fit_pod(view_of(state), request_of(pod))
    assert not result.fits
    return dict(result.reasons)


# --- each failure reason ---------------------------------------------------------------------


def test_card_not_health() -> None:
    assert reasons_for(one_gpu_state(health=False), pod_json()) == {R.CARD_NOT_HEALTH: 1}


def test_card_cordoned() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0")], cordon=["GPU-0"]))
    assert reasons_for(state, pod_json()) == {R.CARD_CORDONED: 1}


@pytest.mark.parametrize(
    "annotations",
    [
        {"nvidia.com/use-gputype": "A100"},
        {"nvidia.com/nouse-gputype": "t4"},
        {"nvidia.com/vgpu-mode": "mig"},
    ],
)
def test_card_type_mismatch(annotations: dict[str, str]) -> None:
    assert reasons_for(one_gpu_state(), pod_json(annotations=annotations)) == {R.CARD_TYPE_MISMATCH: 1}


def test_type_filter_is_a_case_insensitive_substring() -> None:
    state = one_gpu_state(type="NVIDIA A100-SXM4-80GB")
    assert fit_pod(view_of(state), request_of(pod_json(annotations={"nvidia.com/use-gputype": "a100"}))).fits


def test_mig_cards_are_not_placed() -> None:
    assert reasons_for(one_gpu_state(mode="mig"), pod_json()) == {R.CARD_TYPE_MISMATCH: 1}


@pytest.mark.parametrize(
    "annotations", [{"nvidia.com/use-gpuuuid": "GPU-other"}, {"nvidia.com/nouse-gpuuuid": "GPU-0"}]
)
def test_card_uuid_mismatch(annotations: dict[str, str]) -> None:
    assert reasons_for(one_gpu_state(), pod_json(annotations=annotations)) == {R.CARD_UUID_MISMATCH: 1}


def test_card_time_slicing_exhausted() -> None:
    state = one_gpu_state(count=2)
    hold(state, "a", "n1", ("GPU-0", 100, 0))
    hold(state, "b", "n1", ("GPU-0", 100, 0))
    assert reasons_for(state, pod_json()) == {R.CARD_TIME_SLICING_EXHAUSTED: 1}


def test_card_insufficient_memory() -> None:
    state = one_gpu_state(devmem=16000)
    hold(state, "a", "n1", ("GPU-0", 15500, 0))
    assert reasons_for(state, pod_json()) == {R.CARD_INSUFFICIENT_MEMORY: 1}


def test_card_insufficient_core() -> None:
    state = one_gpu_state()
    hold(state, "a", "n1", ("GPU-0", 1000, 80))
    assert reasons_for(state, pod_json(containers=[container(gpu=1, mem=1000, cores=30)])) == {
        R.CARD_INSUFFICIENT_CORE: 1
    }


def test_exclusive_request_needs_an_idle_card() -> None:
    state = one_gpu_state()
    hold(state, "a", "n1", ("GPU-0", 1000, 0))
    assert reasons_for(state, pod_json(containers=[container(gpu=1, mem=1000, cores=100)])) == {
        R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: 1
    }


def test_card_held_exclusively_takes_no_zero_core_request() -> None:
    state = one_gpu_state()
    hold(state, "a", "n1", ("GPU-0", 1000, 100))
    assert reasons_for(state, pod_json()) == {R.CARD_COMPUTE_UNITS_EXHAUSTED: 1}


def test_whole_card_request_takes_all_memory() -> None:
    state = one_gpu_state()
    hold(state, "a", "n1", ("GPU-0", 1, 0))
    assert reasons_for(state, pod_json(containers=[container(gpu=1)])) == {R.CARD_INSUFFICIENT_MEMORY: 1}


def test_node_insufficient_device() -> None:
    state = state_with(node_json("n1"))  # two GPUs
    assert reasons_for(state, pod_json(containers=[container(gpu=3, mem=100)])) == {R.NODE_INSUFFICIENT_DEVICE: 2}


def test_allocated_cards_insufficient_request() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1", health=False)]))
    reasons = reasons_for(state, pod_json(containers=[container(gpu=2, mem=100)]))
    assert reasons == {R.CARD_NOT_HEALTH: 1, R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST: 1}


def test_numa_not_fit() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", numa=0), gpu("GPU-1", numa=1)]))
    pod = pod_json(containers=[container(gpu=2, mem=100)], annotations={"nvidia.com/numa-bind": "true"})
    assert reasons_for(state, pod) == {R.NUMA_NOT_FIT: 2}
    assert fit_pod(view_of(state), request_of(pod_json(containers=[container(gpu=2, mem=100)]))).fits


def test_numa_bind_picks_cards_of_one_numa_node() -> None:
    state = state_with(
        node_json("n1", [gpu("GPU-0", numa=0), gpu("GPU-1", numa=1), gpu("GPU-2", numa=1), gpu("GPU-3", numa=0)])
    )
    hold(state, "a", "n1", ("GPU-3", 8000, 0))
    pod = pod_json(containers=[container(gpu=2, mem=100)], annotations={"nvidia.com/numa-bind": "true"})
    result = fit_pod(view_of(state), request_of(pod))
    assert result.grants is not None
    uuids = {g.uuid for g in result.grants[0]}
    assert uuids in ({"GPU-1", "GPU-2"}, {"GPU-0", "GPU-3"})
    numa = {"GPU-0": 0, "GPU-1": 1, "GPU-2": 1, "GPU-3": 0}
    assert len({numa[u] for u in uuids}) == 1


def test_node_unregistered() -> None:
    state = state_with(node_json("n1", allocatable="0"))
    result = fit_pod(view_of(state), request_of(pod_json()))
    assert result.reasons == {R.NODE_UNREGISTERED: 1}
    assert result.message.startswith("node unregistered: allocatable nvidia.com/gpu is 0")


def test_message_uses_hami_format() -> None:
    state = state_with(
        node_json("n1", [gpu("GPU-0", health=False), gpu("GPU-1", devmem=500), gpu("GPU-2", devmem=500)])
    )
    result = fit_pod(view_of(state), request_of(pod_json()))
    assert result.message == "2/3 CardInsufficientMemory, 1/3 CardNotHealth"


# --- placement --------------------------------------------------------------------------------


def test_percentage_is_of_each_card() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0", devmem=10000)]))
    result = fit_pod(view_of(state), request_of(pod_json(containers=[container(gpu=1, pct=25, cores=10)])))
    assert result.grants is not None
    assert result.grants[0][0].usedmem == 2500
    assert result.grants[0][0].usedcores == 10


def test_gpu_policy_spread_and_binpack() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1")]))
    hold(state, "a", "n1", ("GPU-1", 4000, 0))
    spread = fit_pod(view_of(state), request_of(pod_json()))
    packed = fit_pod(view_of(state), request_of(pod_json(annotations={"hami.io/gpu-scheduler-policy": "binpack"})))
    assert spread.grants is not None
    assert packed.grants is not None
    assert spread.grants[0][0].uuid == "GPU-0"
    assert packed.grants[0][0].uuid == "GPU-1"


def test_default_gpu_policy_comes_from_the_request() -> None:
    state = state_with(node_json("n1", [gpu("GPU-0"), gpu("GPU-1")]))
    hold(state, "a", "n1", ("GPU-1", 4000, 0))
    result = fit_pod(view_of(state), request_of(pod_json(), gpu_policy=Policy.BINPACK))
    assert result.grants is not None
    assert result.grants[0][0].uuid == "GPU-1"


def test_multi_gpu_container_gets_distinct_cards() -> None:
    state = state_with(node_json("n1", [gpu(f"GPU-{i}") for i in range(4)]))
    result = fit_pod(view_of(state), request_of(pod_json(containers=[container(gpu=3, mem=100)])))
    assert result.grants is not None
    assert len({g.uuid for g in result.grants[0]}) == 3


def test_app_containers_are_cumulative() -> None:
    state = one_gpu_state(devmem=10000)
    pod = pod_json(containers=[container("a", gpu=1, mem=6000), container("b", gpu=1, mem=6000)])
    assert reasons_for(state, pod) == {R.CARD_INSUFFICIENT_MEMORY: 1}


def test_init_containers_are_not_cumulative_with_app_containers() -> None:
    state = one_gpu_state(devmem=10000)
    pod = pod_json(init_containers=[container("i", gpu=1, mem=6000)], containers=[container("a", gpu=1, mem=6000)])
    result = fit_pod(view_of(state), request_of(pod))
    assert result.grants is not None
    assert [len(c) for c in result.grants] == [1, 1]
    # The hold is the larger of init and app use, not the sum.
    allocation = PodAllocation(uid="x", namespace="d", name="x", node="n1", grants=result.grants, init_containers=1)
    assert allocation.usage()["GPU-0"].mem == 6000


def test_containers_without_gpu_keep_their_position() -> None:
    state = one_gpu_state()
    result = fit_pod(
        view_of(state), request_of(pod_json(containers=[container("none"), container("g", gpu=1, mem=10)]))
    )
    assert result.grants is not None
    assert result.grants[0] == ()
    assert len(result.grants[1]) == 1


# --- node priority ----------------------------------------------------------------------------


def test_node_priority_binpack_prefers_busy_nodes_and_spread_idle_ones() -> None:
    state = state_with(node_json("idle"), node_json("busy"))
    hold(state, "a", "busy", ("GPU-busy-0", 16000, 100))
    idle, busy = state.view("idle"), state.view("busy")
    assert idle is not None
    assert busy is not None
    assert node_priority(busy, Policy.BINPACK) > node_priority(idle, Policy.BINPACK)
    assert node_priority(busy, Policy.SPREAD) < node_priority(idle, Policy.SPREAD)
    assert node_priority(idle, Policy.BINPACK) == 0
    assert node_priority(idle, Policy.SPREAD) == 10


def test_unregistered_node_scores_zero() -> None:
    state = state_with(node_json("n1", register=False))
    assert node_priority(view_of(state), Policy.SPREAD) == 0


def test_liveness_rule() -> None:
    assert objects.node_inventory(node_json("n", allocatable="20")).registered
    assert "allocatable" in objects.node_inventory(node_json("n", allocatable="0")).detail
    missing = node_json("n")
    del missing["status"]
    assert not objects.node_inventory(missing).registered
    assert "no hami.io/node-nvidia-register" in objects.node_inventory(node_json("n", register=False)).detail
    broken = node_json("n")
    broken["metadata"]["annotations"]["hami.io/node-nvidia-register"] = "[{]"
    assert "unreadable" in objects.node_inventory(broken).detail
    empty = node_json("n", [])
    assert "lists no GPU" in objects.node_inventory(empty).detail


# --- HAMi's legacy record with an empty mode -------------------------------------------------------------


@pytest.mark.parametrize("requested_mode", [None, "hami-core", "mig", "mps"])
def test_legacy_record_with_empty_mode_matches_any_vgpu_mode_like_hami(requested_mode: str | None) -> None:
    # HAMi reads the 9th field as mode "" and tests strings.Contains(<nvidia.com/vgpu-mode>, mode): always true.
    node = node_json("n1", [], allocatable="10")
    node["metadata"]["annotations"]["hami.io/node-nvidia-register"] = "GPU-e,10,24576,100,NVIDIA-Tesla T4,0,true,0,:"
    state = state_with(node)
    annotations = {} if requested_mode is None else {"nvidia.com/vgpu-mode": requested_mode}
    request = request_of(pod_json(annotations=annotations))
    result = fit_pod(view_of(state), request)
    assert result.grants is not None
    assert result.grants[0][0].uuid == "GPU-e"
    screened = state.screen(["n1"], request)  # the vectorised path agrees
    assert screened is not None
    assert screened[0] == ["n1"]


def test_hami_core_card_still_refuses_a_mig_request() -> None:
    assert reasons_for(one_gpu_state(mode="hami-core"), pod_json(annotations={"nvidia.com/vgpu-mode": "mig"})) == {
        R.CARD_TYPE_MISMATCH: 1
    }
