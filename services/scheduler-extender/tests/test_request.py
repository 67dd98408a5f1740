"""Request resolution with HAMi's semantics, and the placement annotations."""

from __future__ import annotations

import pytest
from extender_builders import container, pod_json, request_of
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import (
    NO_NEED,
    ContainerNeed,
    RequestDefaults,
    placement_options,
    resolve_container,
)
from hami_shared.errors import MalformedInputError
from hami_shared.quantity import GpuRequest

D = RequestDefaults()


@pytest.mark.parametrize(
    ("request_", "defaults", "expected"),
    [
        pytest.param(GpuRequest(count=1), D, ContainerNeed(count=1, memory_percent=100), id="gpu-only-whole-card"),
        pytest.param(GpuRequest(count=2, memory=3000), D, ContainerNeed(count=2, memory=3000), id="gpumem"),
        pytest.param(
            GpuRequest(count=1, memory=3000),
            RequestDefaults(memory_factor=4),
            ContainerNeed(count=1, memory=12000),
            id="memory-factor",
        ),
        pytest.param(
            GpuRequest(count=1, memory_percentage=30), D, ContainerNeed(count=1, memory_percent=30), id="percentage"
        ),
        pytest.param(
            GpuRequest(count=1, memory_percentage=150), D, ContainerNeed(count=1, memory_percent=100), id="pct-clamped"
        ),
        pytest.param(
            GpuRequest(count=1, memory_percentage=0), D, ContainerNeed(count=1, memory_percent=100), id="pct-0-ignored"
        ),
        pytest.param(
            GpuRequest(count=1, memory=2000, memory_percentage=50),
            D,
            ContainerNeed(count=1, memory=2000),
            id="mem-wins",
        ),
        pytest.param(GpuRequest(count=1, memory=0), D, ContainerNeed(count=1, memory_percent=100), id="mem-0-unset"),
        pytest.param(
            GpuRequest(count=1),
            RequestDefaults(default_memory=5000, default_cores=20),
            ContainerNeed(count=1, memory=5000, cores=20),
            id="defaults",
        ),
        pytest.param(GpuRequest(memory=1000), D, ContainerNeed(count=1, memory=1000), id="count-defaulted"),
        pytest.param(
            GpuRequest(cores=30),
            RequestDefaults(default_gpu_num=2),
            ContainerNeed(count=2, memory_percent=100, cores=30),
            id="cores-only-default-num",
        ),
        pytest.param(
            GpuRequest(count=1, cores=250), D, ContainerNeed(count=1, memory_percent=100, cores=100), id="cores-clamped"
        ),
        pytest.param(GpuRequest(count=0, memory=1000), D, NO_NEED, id="count-zero"),
        pytest.param(GpuRequest(priority=0), D, NO_NEED, id="priority-only"),
        pytest.param(GpuRequest(), D, NO_NEED, id="nothing"),
    ],
)
def test_resolve_container(request_: GpuRequest, defaults: RequestDefaults, expected: ContainerNeed) -> None:
    assert resolve_container(request_, defaults) == expected


def test_memory_on_a_card() -> None:
    assert ContainerNeed(count=1, memory_percent=25).memory_on(16000) == 4000
    assert ContainerNeed(count=1, memory=3000).memory_on(16000) == 3000


def test_pod_request_keeps_init_containers_first() -> None:
    pod = pod_json(
        init_containers=[container("init", gpu=1, mem=500)],
        containers=[container("a"), container("b", gpu=2, mem=2000)],
    )
    request = request_of(pod)
    assert request.init_containers == 1
    assert request.needs == (
        ContainerNeed(count=1, memory=500),
        NO_NEED,
        ContainerNeed(count=2, memory=2000),
    )
    assert request.wants_gpu


def test_placement_annotations_are_read() -> None:
    options = placement_options(
        {
            "nvidia.com/use-gputype": "A100, v100",
            "nvidia.com/nouse-gputype": "T4",
            "nvidia.com/use-gpuuuid": "GPU-a,GPU-b",
            "nvidia.com/nouse-gpuuuid": " GPU-c ",
            "nvidia.com/vgpu-mode": "hami-core",
            "nvidia.com/numa-bind": "true",
            "hami.io/node-scheduler-policy": "spread",
            "hami.io/gpu-scheduler-policy": "topology-aware,binpack",
        },
        node_policy=Policy.BINPACK,
        gpu_policy=Policy.SPREAD,
    )
    assert options.use_types == ("a100", "v100")
    assert options.nouse_types == ("t4",)
    assert options.use_uuids == frozenset({"GPU-a", "GPU-b"})
    assert options.nouse_uuids == frozenset({"GPU-c"})
    assert options.vgpu_mode == "hami-core"
    assert options.numa_bind
    assert options.node_policy is Policy.SPREAD
    assert options.gpu_policy is Policy.BINPACK
    assert options.topology_aware
    assert not options.mutex


def test_defaults_apply_without_annotations() -> None:
    options = placement_options({}, node_policy=Policy.SPREAD, gpu_policy=Policy.BINPACK)
    assert options.node_policy is Policy.SPREAD
    assert options.gpu_policy is Policy.BINPACK
    assert not options.topology_aware
    assert not options.mutex
    assert not options.numa_bind
    assert options.vgpu_mode is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hami.io/node-scheduler-policy", "fastest"),
        ("hami.io/gpu-scheduler-policy", "mutx"),
        ("nvidia.com/numa-bind", "maybe"),
    ],
)
def test_bad_annotations_say_what_to_write(key: str, value: str) -> None:
    with pytest.raises(MalformedInputError, match=key):
        placement_options({key: value}, node_policy=Policy.BINPACK, gpu_policy=Policy.SPREAD)


def test_invalid_defaults_are_refused() -> None:
    with pytest.raises(ValueError, match="memory factor"):
        RequestDefaults(memory_factor=0)
    with pytest.raises(ValueError, match="default GPU number"):
        RequestDefaults(default_gpu_num=0)
