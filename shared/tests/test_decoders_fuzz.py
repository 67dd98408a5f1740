"""Fuzz: 10,000 generated inputs for every decoder of hami_shared (issue 16, bounded and total parsing).

Hypothesis draws, per example, a valid encoding (structured strategies) and a seed; ``fuzzing``
derives a batch of 10 inputs from them: near-valid mutations of the encoding, random text, random
bytes decoded several ways and values that are not text at all (structural mutations for the JSON
readers). 1,000 derandomized examples give every decoder the same 10,000 inputs on every run; a
failure names the input (``note``). Whatever the input, the only
exception allowed out is ``MalformedInputError`` (``ConfigError`` for settings, ``ValueError`` for the
settings parse helpers, their documented contracts); whatever a decoder accepts re-encodes to a value
it decodes to the same thing, within the documented bounds. Inputs run up to a few hundred KiB
(repeated slices), so a decoder doing quadratic work would make these tests crawl; the explicit
time and memory bounds are in ``test_decoders_bounds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from fuzzing import FUZZ, decode_or_refuse, fuzz_batch, fuzz_json_batch, json_values, preview, seeds
from hami_shared import names
from hami_shared.bounds import INT32_MAX, MAX_NODE_DEVICES, MAX_POD_CONTAINERS, MAX_TYPE_CHARS, MAX_UUID_CHARS
from hami_shared.config import ConfigError, parse_host_port, read_config_file, setting
from hami_shared.names import ResourceNames
from hami_shared.node_register import (
    DeviceInfo,
    MigPlacement,
    MigProfile,
    decode_node_devices,
    decode_node_devices_json,
    decode_node_devices_legacy,
    encode_node_devices,
)
from hami_shared.pod_devices import (
    MAX_CONTAINER_DEVICES,
    MAX_USEDCORES,
    ContainerDevice,
    decode_device_slots,
    decode_pod_devices,
    encode_device_slots,
    encode_pod_devices,
    slot_id,
    split_slot_id,
)
from hami_shared.quantity import GpuRequest, container_gpu_request, parse_quantity, pod_gpu_requests
from hypothesis import given, note
from hypothesis import strategies as st

# --- valid encodings ----------------------------------------------------------------------------

_uuids = st.sampled_from(
    ["GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448", "GPU-aaa", "MIG-GPU-1/2/0", "GPU-x[1g.10gb-3]"]
) | (st.text(alphabet="GPU-0123456789abcdef", min_size=1, max_size=44))
_mem = st.integers(0, 100_000) | st.sampled_from([0, INT32_MAX])
_cores = st.integers(0, MAX_USEDCORES)
_device = st.builds(
    ContainerDevice, uuid=_uuids, type=st.sampled_from(["NVIDIA", "NVIDIA", "MLU"]), usedmem=_mem, usedcores=_cores
)
_pods = st.lists(st.lists(_device, max_size=3).map(tuple), max_size=4).map(tuple)
_slot_ids = st.builds(slot_id, _uuids, st.integers(0, 20) | st.just(INT32_MAX))
_pod_slots = st.lists(st.lists(_slot_ids, max_size=3).map(tuple), max_size=4).map(tuple)

_u31 = st.integers(0, 100_000) | st.just(INT32_MAX)
_profiles = st.builds(
    MigProfile,
    name=st.sampled_from(["1g.10gb", "3g.40gb", ""]),
    memory_mb=_u31,
    core=st.integers(0, 100),
    slice_count=st.integers(0, 8),
    placements=st.lists(st.builds(MigPlacement, start=st.integers(0, 7), size=st.integers(0, 8)), max_size=3).map(
        tuple
    ),
)
_node_devices = st.lists(
    st.builds(
        DeviceInfo,
        id=_uuids,
        index=st.integers(0, 16),
        count=st.integers(0, 100),
        devmem=_u31,
        devcore=st.sampled_from([0, 100, 200]),
        type=st.sampled_from(["NVIDIA-Tesla V100-PCIE-32GB", "NVIDIA A100-SXM4-80GB", "", "é\U0001f600"]),
        numa=st.integers(-1, 3),
        mode=st.sampled_from(["", "hami-core", "mig", "mps"]),
        mig_profiles=st.lists(_profiles, max_size=2).map(tuple),
        health=st.booleans(),
    ),
    max_size=4,
)


def _legacy(devices: list[DeviceInfo], nine: bool) -> str:
    out = []
    for d in devices:
        fields = [d.id, str(d.count), str(d.devmem), str(d.devcore), d.type or "T4", str(d.numa), str(d.health).lower()]
        out.append(",".join(fields + ([str(d.index), d.mode] if nine else [])) + ":")
    return "".join(out)


_legacy_texts = st.builds(_legacy, _node_devices.filter(bool), st.booleans())

_quantity_texts = st.sampled_from(
    ["1", "8000", "8k", "1Ki", "2Mi", "1e3", "1000m", "1.5k", "+7", "0", "100", "2147483647"]
)


def _check_each(check: Callable[[Any], None], batch: list[Any]) -> None:
    """``check`` on every input of the batch; a failure reports its input with the example."""
    for value in batch:
        try:
            check(value)
        except BaseException:
            note(f"failing input: {preview(value)}")
            raise


# --- pod annotations: device lists, slots, slot IDs ----------------------------------------------------

_pod_annotations = st.one_of(
    st.builds(encode_pod_devices, _pods), st.builds(encode_device_slots, _pod_slots), _slot_ids
)


@FUZZ
@given(_pod_annotations, seeds)
def test_pod_annotation_decoders_fuzz(valid: str, seed: int) -> None:
    _check_each(_check_pod_annotation, [valid, *fuzz_batch(valid, seed)])


def _check_pod_annotation(value: Any) -> None:
    for what in (names.DEVICES_ALLOCATED, names.DEVICES_TO_ALLOCATE):
        pod = decode_or_refuse(lambda v: decode_pod_devices(v, what=what), value)  # noqa: B023
        if pod is not None:
            assert len(pod) <= MAX_POD_CONTAINERS
            assert all(len(c) <= MAX_CONTAINER_DEVICES for c in pod)
            assert all(0 <= d.usedcores <= MAX_USEDCORES and 0 <= d.usedmem <= INT32_MAX for c in pod for d in c)
            assert decode_pod_devices(encode_pod_devices(pod), what=what) == pod
    slots = decode_or_refuse(decode_device_slots, value)
    if slots is not None:
        assert len(slots) <= MAX_POD_CONTAINERS
        assert decode_device_slots(encode_device_slots(slots)) == slots
    parts = decode_or_refuse(split_slot_id, value)
    if parts is not None:
        uuid, replica = parts
        assert len(uuid) <= MAX_UUID_CHARS
        assert 0 <= replica <= INT32_MAX
        assert split_slot_id(slot_id(uuid, replica)) == parts


# --- node inventory: JSON and legacy ---------------------------------------------------------------------

_node_registers = st.one_of(
    st.builds(encode_node_devices, _node_devices),
    _legacy_texts,
    st.lists(json_values, max_size=4).map(json.dumps),
)


@FUZZ
@given(_node_registers, seeds)
def test_node_register_decoders_fuzz(valid: str, seed: int) -> None:
    _check_each(_check_node_register, [valid, *fuzz_batch(valid, seed)])


def _check_node_register(value: Any) -> None:
    for decode in (decode_node_devices, decode_node_devices_json, decode_node_devices_legacy):
        devices = decode_or_refuse(decode, value)
        if devices is not None:
            assert len(devices) <= MAX_NODE_DEVICES
            assert all(0 < len(d.id) <= MAX_UUID_CHARS and len(d.type) <= MAX_TYPE_CHARS for d in devices)
            assert decode_node_devices(encode_node_devices(devices)) == devices


# --- quantities and pod specs ----------------------------------------------------------------------------

_resource_names = st.sampled_from([*ResourceNames().all(), "cpu"])
_limits = st.dictionaries(_resource_names, _quantity_texts | st.integers(0, 10**6), max_size=3)
_containers = st.fixed_dictionaries(
    {"name": st.sampled_from(["main", "sidecar"])},
    optional={"resources": st.fixed_dictionaries({}, optional={"limits": _limits, "requests": _limits})},
)
_pod_specs = st.fixed_dictionaries(
    {"containers": st.lists(_containers, min_size=1, max_size=3)},
    optional={"initContainers": st.lists(_containers, max_size=2)},
)


def _quantity(value: object) -> int:
    return parse_quantity(value, resource="nvidia.com/gpumem", container="main")


def _check_request(request: GpuRequest | None) -> None:
    if request is not None:
        values = (request.count, request.memory, request.memory_percentage, request.cores, request.priority)
        assert all(v is None or 0 <= v <= INT32_MAX for v in values)


@FUZZ
@given(_pod_specs, _quantity_texts, seeds)
def test_pod_spec_readers_fuzz(valid_spec: dict[str, Any], valid_quantity: str, seed: int) -> None:
    _check_each(_check_pod_spec, [valid_spec, *fuzz_json_batch(valid_spec, seed)])
    container = valid_spec["containers"][0]
    _check_each(lambda c: _check_request(decode_or_refuse(container_gpu_request, c)), fuzz_json_batch(container, seed))
    _check_each(_check_quantity, [valid_quantity, *fuzz_batch(valid_quantity, seed), *fuzz_json_batch(1, seed)])


def _check_pod_spec(spec: Any) -> None:
    requests = decode_or_refuse(pod_gpu_requests, spec)
    if requests is not None:
        assert len(requests.all) <= MAX_POD_CONTAINERS
        for request in requests.all:
            _check_request(request)
    containers = spec.get("containers") if isinstance(spec, dict) else None
    for container in (containers if isinstance(containers, list) else [spec])[:4]:
        _check_request(decode_or_refuse(container_gpu_request, container))


def _check_quantity(value: Any) -> None:
    number = decode_or_refuse(_quantity, value)
    assert number is None or 0 <= number <= INT32_MAX


# --- settings (operator input: ConfigError and ValueError are their documented errors) -----------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FuzzSettings:
    listen: tuple[str, int] = setting(("0.0.0.0", 8443), help="address", parse=parse_host_port)
    name: str = setting("x", help="a name")
    count: int = setting(1, help="a count")
    scaling: float = setting(1.0, help="a scale")
    enabled: bool = setting(False, help="a switch")
    level: str = setting("info", help="a choice", choices=("info", "debug"))
    path: pathlib.Path | None = setting(None, help="a path")
    items: tuple[str, ...] = setting((), help="a list")


_setting_keys = st.sampled_from([f.name for f in dataclasses.fields(_FuzzSettings)] + ["version", "x"])
_documents = st.dictionaries(_setting_keys, json_values, max_size=5)
_config_texts = st.one_of(
    _documents.map(json.dumps),
    _documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.sampled_from(["a: &x [*x]", "a: !!python/object:os.system x", "- &a [*a, *a]", "items: [a, b]\nlisten: h:1\n"]),
)


@pytest.fixture(scope="module")
def config_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield pathlib.Path(directory)


@FUZZ
@given(
    _config_texts,
    st.sampled_from([".yaml", ".json"]),
    st.sampled_from(["127.0.0.1:9000", "[::1]:8443", ":80", "0.0.0.0:65535"]),
    st.sampled_from(ResourceNames().all()),
    seeds,
)
def test_settings_readers_fuzz(
    config_dir: pathlib.Path, config: str, suffix: str, host_port: str, name: str, seed: int
) -> None:
    # Pure-Python YAML reads ~100 KiB/s, so slices repeat less here; the 256 KiB cap is in test_decoders_bounds.
    path = config_dir / f"c{suffix}"
    _check_each(lambda text: _check_config_file(path, text), [config, *fuzz_batch(config, seed, max_repeat=40)])
    _check_each(_check_host_port, [host_port, *fuzz_batch(host_port, seed)])
    _check_each(_check_resource_name, [name, *fuzz_batch(name, seed)])


def _check_config_file(path: pathlib.Path, text: Any) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else preview(text).encode())
    with contextlib.suppress(ConfigError):
        read_config_file(_FuzzSettings, path)


def _check_host_port(value: Any) -> None:
    if not isinstance(value, str):
        return  # flags and variables are always text
    try:
        host, port = parse_host_port(value)
    except ValueError:  # the documented error of a parse= helper
        return
    assert 0 <= port <= 65535
    assert parse_host_port(f"[{host}]:{port}") == (host or "0.0.0.0", port)


def _check_resource_name(value: Any) -> None:
    with contextlib.suppress(ValueError):  # ResourceNames' documented error (a settings value)
        assert ResourceNames(memory=value).memory == value
