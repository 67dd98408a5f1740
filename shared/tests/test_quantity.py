"""Extended-resource quantities and GPU requests read from pod specs."""

from __future__ import annotations

import contextlib

import pytest
from hami_shared.errors import MalformedInputError
from hami_shared.names import ResourceNames
from hami_shared.quantity import GpuRequest, container_gpu_request, parse_quantity, pod_gpu_requests
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("8000", 8000),
        ("8k", 8000),
        ("1Ki", 1024),
        ("2Mi", 2 * 2**20),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1000m", 1),
        ("1.5k", 1500),
        ("+7", 7),
        (" 30 ", 30),
        ("0", 0),
        (5, 5),
        ("2147483647", 2**31 - 1),
    ],
)
def test_valid_quantities(text: str | int, expected: int) -> None:
    assert parse_quantity(text, resource="nvidia.com/gpumem", container="main") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.5", "whole number"),
        ("500m", "whole number"),
        ("-1", "negative"),
        ("2147483648", "larger than"),
        ("2Gi", "larger than"),
        ("abc", "not a Kubernetes quantity"),
        ("", "not a Kubernetes quantity"),
        ("1e999999", "out of range"),
        ("1 Gi", "not a Kubernetes quantity"),
    ],
)
def test_invalid_quantities_say_what_to_write(text: str, fragment: str) -> None:
    with pytest.raises(MalformedInputError) as info:
        parse_quantity(text, resource="nvidia.com/gpumem", container="main")
    assert fragment in str(info.value)
    assert "container 'main'" in str(info.value)
    assert "nvidia.com/gpumem" in str(info.value)


def test_booleans_and_floats_are_refused() -> None:
    for value in (True, 1.5, None, [1]):
        with pytest.raises(MalformedInputError):
            parse_quantity(value, resource="r/x", container="c")


def test_limits_first_requests_fallback_per_resource() -> None:
    container = {
        "name": "train",
        "resources": {
            "limits": {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "8000"},
            "requests": {"nvidia.com/gpumem": "4000", "nvidia.com/gpucores": "30"},
        },
    }
    assert container_gpu_request(container) == GpuRequest(count=2, memory=8000, cores=30)


def test_configurable_resource_names() -> None:
    names = ResourceNames(count="example.com/vgpu", memory="example.com/vmem")
    container = {"name": "c", "resources": {"limits": {"example.com/vgpu": "1", "nvidia.com/gpu": "3"}}}
    assert container_gpu_request(container, names) == GpuRequest(count=1)


def test_resource_names_are_validated() -> None:
    with pytest.raises(ValueError, match="must look like"):
        ResourceNames(count="gpu")
    with pytest.raises(ValueError, match="distinct"):
        ResourceNames(count="a.b/x", memory="a.b/x")


def test_pod_requests_init_first() -> None:
    spec = {
        "initContainers": [{"name": "init", "resources": {"limits": {"nvidia.com/gpumem": "100"}}}],
        "containers": [{"name": "a"}, {"name": "b", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    }
    requests = pod_gpu_requests(spec)
    assert requests.init_containers == (GpuRequest(memory=100),)
    assert requests.containers == (GpuRequest(), GpuRequest(count=1))
    assert any(r.any for r in requests.all)
    assert [r.any for r in requests.all] == [True, False, True]
    assert not any(r.any for r in pod_gpu_requests({"containers": [{"name": "x"}]}).all)


def test_malformed_spec_shapes() -> None:
    with pytest.raises(MalformedInputError, match=r"'resources\.limits' must be an object"):
        container_gpu_request({"name": "c", "resources": {"limits": ["nvidia.com/gpu"]}})
    with pytest.raises(MalformedInputError, match="'containers' must be a list"):
        pod_gpu_requests({"containers": "nope"})


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_plain_integers_round_trip(value: int) -> None:
    assert parse_quantity(str(value), resource="r/x", container="c") == value


@given(st.text(max_size=30))
def test_arbitrary_text_raises_only_our_error(text: str) -> None:
    with contextlib.suppress(MalformedInputError):
        parse_quantity(text, resource="r/x", container="c")
