"""Explicit bounds of the decoders (issue 16): the attack replayed, every documented limit at and past its
edge, oversized input refused before any work, worst-case input within the limits decoded in bounded
time and memory.

Work is measured without wall clocks: memory with ``tracemalloc`` (deterministic) and time as this
process's CPU time against a ceiling hundreds of times above the expected few milliseconds, which
only quadratic behaviour could reach (a 128 KiB input squared is 10**10 steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hami_shared import names
from hami_shared.bounds import INT32_MAX, MAX_NODE_DEVICES, MAX_POD_CONTAINERS, MAX_TYPE_CHARS, MAX_UUID_CHARS
from hami_shared.config import MAX_CONFIG_FILE_BYTES, ConfigError, read_config_file, setting
from hami_shared.errors import MalformedInputError
from hami_shared.node_register import (
    MAX_JSON_DEPTH,
    MAX_MIG_PLACEMENTS,
    MAX_MIG_PROFILES,
    MAX_NODE_REGISTER_CHARS,
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
    MAX_DEVICE_SLOTS_CHARS,
    MAX_POD_DEVICES_CHARS,
    MAX_SLOT_ID_CHARS,
    MAX_USEDCORES,
    ContainerDevice,
    decode_device_slots,
    decode_pod_devices,
    encode_device_slots,
    encode_pod_devices,
    split_slot_id,
)
from hami_shared.quantity import MAX_QUANTITY_CHARS, parse_quantity, pod_gpu_requests

UUID = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
CPU_SECONDS_CEILING = 0.5
"""Every input here decodes in a few milliseconds; quadratic work on 128 KiB would take minutes."""


def _refuse(decode: Callable[[Any], object], value: object, fragment: str = "") -> MalformedInputError:
    with pytest.raises(MalformedInputError) as info:
        decode(value)
    assert fragment in str(info.value)
    return info.value


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(MalformedInputError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cpu_seconds(call: Callable[[], object]) -> float:
    start = time.process_time()
    with contextlib.suppress(MalformedInputError):
        call()
    return time.process_time() - start


# --- the attack of issue 16 -----------------------------------------------------------------------------


@pytest.mark.parametrize("what", [names.DEVICES_ALLOCATED, names.DEVICES_TO_ALLOCATE])
def test_attack_5000_digit_usedmem_is_our_error_not_valueerror(what: str) -> None:
    """Replays issue 16: a 5,000-digit number made int() raise a plain ValueError that wedged the caches."""
    value = f"{UUID},NVIDIA,{'9' * 5000},100:;"
    error = _refuse(lambda v: decode_pod_devices(v, what=what), value, "usedmem")
    assert type(error) is MalformedInputError
    assert what in str(error)
    _refuse(lambda v: decode_pod_devices(v, what=what), f"{UUID},NVIDIA,1,{'9' * 5000}:;", "usedcores")


@pytest.mark.parametrize(
    "value",
    [
        f'[{{"id":"{UUID}","devmem":{"9" * 5000}}}]',
        f'[{{"id":"{UUID}","devmem":-{"9" * 5000}}}]',
        f"{UUID},10,{'9' * 5000},100,T4,0,true:",
        f"{UUID},10,1,100,T4,--5,true:",
    ],
)
def test_attack_huge_numbers_in_node_register_are_our_error(value: str) -> None:
    assert type(_refuse(decode_node_devices, value)) is MalformedInputError


def test_huge_number_in_an_unknown_json_key_is_ignored_unconverted() -> None:
    """Go ignores unknown keys; so do we, without converting the number (no int() of 5,000 digits)."""
    assert decode_node_devices(f'[{{"id":"{UUID}","x":{"9" * 5000}}}]') == (DeviceInfo(id=UUID),)


# --- refused before any work ----------------------------------------------------------------------------

_TEXT_DECODERS: list[tuple[str, Callable[[Any], object], int]] = [
    ("pod devices", decode_pod_devices, MAX_POD_DEVICES_CHARS),
    ("device slots", decode_device_slots, MAX_DEVICE_SLOTS_CHARS),
    ("slot id", split_slot_id, MAX_SLOT_ID_CHARS),
    ("node register", decode_node_devices, MAX_NODE_REGISTER_CHARS),
    ("node register json", decode_node_devices_json, MAX_NODE_REGISTER_CHARS),
    ("node register legacy", decode_node_devices_legacy, MAX_NODE_REGISTER_CHARS),
    ("quantity", lambda v: parse_quantity(v, resource="nvidia.com/gpu", container="c"), MAX_QUANTITY_CHARS),
]


@pytest.mark.parametrize(("name", "decode", "limit"), _TEXT_DECODERS, ids=[d[0] for d in _TEXT_DECODERS])
@pytest.mark.parametrize("filler", [";", ":", ",", "9", "[", "GPU-a,NVIDIA,1,1:"])
def test_oversized_input_is_refused_before_any_work(
    name: str, decode: Callable[[Any], object], limit: int, filler: str
) -> None:
    for size in (limit + 1, 256 * 1024, 4 * 1024 * 1024):
        value = (filler * (size // len(filler) + 1))[:size]
        _refuse(decode, value, str(limit))
        # No split, copy or parse of the input: what is allocated is the error and its short message.
        assert _peak_bytes(lambda: decode(value)) < 8 * 1024, name  # noqa: B023


@pytest.mark.parametrize(("name", "decode", "limit"), _TEXT_DECODERS, ids=[d[0] for d in _TEXT_DECODERS])
def test_values_that_are_not_text_are_our_error(name: str, decode: Callable[[Any], object], limit: int) -> None:
    for value in (None, b"GPU-a,NVIDIA,1,1:;", 2**70, ["a"], {"a": 1}, 1.5):
        if name == "quantity" and isinstance(value, int):
            continue  # integer quantities are valid
        _refuse(decode, value)


# --- worst cases within the limits ----------------------------------------------------------------------


def _records(n: int, per_container: int = MAX_CONTAINER_DEVICES) -> str:
    record = f"{UUID},NVIDIA,{INT32_MAX},{MAX_USEDCORES}:"
    out = []
    for start in range(0, n, per_container):
        out.append(record * min(per_container, n - start) + ";")
    return "".join(out)


def _fill(pattern: str, limit: int, prefix: str = "", suffix: str = "") -> str:
    room = limit - len(prefix) - len(suffix)
    return prefix + (pattern * (room // len(pattern) + 1))[:room] + suffix


_POD_LIMIT = MAX_POD_DEVICES_CHARS
_NODE_LIMIT = MAX_NODE_REGISTER_CHARS
_WORST_CASES: list[tuple[str, Callable[[Any], object], str]] = [
    ("pod devices: most records", decode_pod_devices, _records(_POD_LIMIT // 80)),
    ("pod devices: one colon run", decode_pod_devices, ":" * _POD_LIMIT),
    ("pod devices: one comma run", decode_pod_devices, "," * (_POD_LIMIT - 1) + ":"),
    ("pod devices: digits", decode_pod_devices, _fill("9", _POD_LIMIT, "a,b,", ",1:")),
    ("pod devices: containers", decode_pod_devices, ";" * MAX_POD_CONTAINERS + ":" * (_POD_LIMIT - 300)),
    ("slots: commas", decode_device_slots, "," * (MAX_DEVICE_SLOTS_CHARS - 1)),
    ("slots: most slots", decode_device_slots, _fill(f"{UUID}-1,", MAX_DEVICE_SLOTS_CHARS)),
    ("json: brackets", decode_node_devices, "[" * _NODE_LIMIT),
    ("json: balanced brackets", decode_node_devices, "[" * (_NODE_LIMIT // 2) + "]" * (_NODE_LIMIT // 2)),
    ("json: pairs", decode_node_devices, _fill("[]", _NODE_LIMIT, "[", "]")),
    ("json: escaped quotes", decode_node_devices, _fill('\\"', _NODE_LIMIT, '["', '"]')),
    ("json: unterminated escapes", decode_node_devices, _fill('"\\"', _NODE_LIMIT, "[")),
    ("json: quote soup", decode_node_devices, _fill('"', _NODE_LIMIT, "[")),
    ("json: long id", decode_node_devices, _fill("a", _NODE_LIMIT, '[{"id":"', '"}]')),
    ("json: many numbers", decode_node_devices, _fill("1,", _NODE_LIMIT, '[{"id":"a","x":[', "1]}]")),
    ("json: long number", decode_node_devices, _fill("1", _NODE_LIMIT, '[{"id":"a","x":', "}]")),
    ("json: long float", decode_node_devices, _fill("1", _NODE_LIMIT, '[{"id":"a","x":0.', "}]")),
    ("json: many devices", decode_node_devices, _fill('{"id":"a"},', _NODE_LIMIT, "[", '{"id":"a"}]')),
    ("legacy: colons", decode_node_devices, ":" * _NODE_LIMIT),
    ("legacy: commas", decode_node_devices, "," * (_NODE_LIMIT - 1) + ":"),
    ("legacy: records", decode_node_devices, _fill(f"{UUID},10,1,100,T4,0,true:", _NODE_LIMIT)),
]


@pytest.mark.parametrize(("name", "decode", "value"), _WORST_CASES, ids=[c[0] for c in _WORST_CASES])
def test_worst_case_within_limits_is_bounded(name: str, decode: Callable[[Any], object], value: str) -> None:
    assert _cpu_seconds(lambda: decode(value)) < CPU_SECONDS_CEILING
    # Memory: the decoded objects (at most a few per input character) and nothing that grows faster.
    assert _peak_bytes(lambda: decode(value)) < 64 * len(value) + 64 * 1024


def test_most_records_a_pod_list_can_hold_decode() -> None:
    value = _records(_POD_LIMIT // 80)
    pod = decode_pod_devices(value)
    assert sum(len(c) for c in pod) == _POD_LIMIT // 80
    assert encode_pod_devices(pod) == value


# --- each bound at and past its edge ----------------------------------------------------------------------


def test_pod_devices_bounds_at_the_edge() -> None:
    device = ContainerDevice(uuid="u" * MAX_UUID_CHARS, type="t" * MAX_TYPE_CHARS, usedmem=INT32_MAX, usedcores=100)
    pod = ((device,) * MAX_CONTAINER_DEVICES,) + ((),) * (MAX_POD_CONTAINERS - 1)
    text = encode_pod_devices(pod)
    assert len(text) <= MAX_POD_DEVICES_CHARS
    assert decode_pod_devices(text) == pod
    _refuse(decode_pod_devices, text + ";", f"more than {MAX_POD_CONTAINERS} containers")
    _refuse(decode_pod_devices, encode_pod_devices([[device] * (MAX_CONTAINER_DEVICES + 1)]), "more than 128 devices")
    _refuse(decode_pod_devices, f"{'u' * (MAX_UUID_CHARS + 1)},NVIDIA,1,1:;", "longer than")
    _refuse(decode_pod_devices, f"u,{'t' * (MAX_TYPE_CHARS + 1)},1,1:;", "longer than")
    _refuse(decode_pod_devices, f"u,NVIDIA,{INT32_MAX + 1},1:;", "usedmem")
    _refuse(decode_pod_devices, "u,NVIDIA,1,101:;", "usedcores")
    _refuse(decode_pod_devices, "u,NVIDIA,١,1:;", "usedmem")
    _refuse(decode_pod_devices, "u,NVIDIA,+1,1:;", "usedmem")
    with pytest.raises(MalformedInputError):
        ContainerDevice(uuid="u", usedmem=1, usedcores=101)
    with pytest.raises(MalformedInputError):
        ContainerDevice(uuid="u" * (MAX_UUID_CHARS + 1), usedmem=1, usedcores=1)


def test_usedmem_zero_decodes_as_hami_writes_it() -> None:
    """HAMi's wire format allows 0 MiB, and the extender must count such a record as a held slot;
    the device plugin, which would turn 0 into "no limit", refuses it at Allocate (module docstring)."""
    (container,) = decode_pod_devices(f"{UUID},NVIDIA,0,0:;")
    assert container == (ContainerDevice(uuid=UUID, usedmem=0, usedcores=0),)


def test_slot_bounds_at_the_edge() -> None:
    slot = "u" * MAX_UUID_CHARS + "-" + str(INT32_MAX)
    assert len(slot) == MAX_SLOT_ID_CHARS
    assert split_slot_id(slot) == ("u" * MAX_UUID_CHARS, INT32_MAX)
    _refuse(split_slot_id, "u" * (MAX_UUID_CHARS + 1) + "-1")
    _refuse(split_slot_id, f"u-{INT32_MAX + 1}")
    _refuse(split_slot_id, "u-" + "9" * 5000, "long")
    slots = ((slot,) * MAX_CONTAINER_DEVICES,) + ((),) * (MAX_POD_CONTAINERS - 1)
    assert decode_device_slots(encode_device_slots(slots)) == slots
    _refuse(decode_device_slots, ",".join([slot] * (MAX_CONTAINER_DEVICES + 1)) + ";", "more than 128 device slots")
    _refuse(decode_device_slots, ";" * (MAX_POD_CONTAINERS + 1), "more than 256 containers")
    _refuse(decode_device_slots, "u" * (MAX_SLOT_ID_CHARS + 1) + ";", "1 to 139 characters")


def test_node_register_bounds_at_the_edge() -> None:
    devices = [DeviceInfo(id=f"GPU-{i:036d}", count=10, devmem=81920, devcore=100, health=True) for i in range(129)]
    assert decode_node_devices(encode_node_devices(devices[:MAX_NODE_DEVICES])) == tuple(devices[:MAX_NODE_DEVICES])
    _refuse(decode_node_devices, encode_node_devices(devices), "more than 128 devices")
    legacy = "".join(f"{d.id},10,81920,100,T4,0,true:" for d in devices)
    _refuse(decode_node_devices, legacy, "more than 128 devices")
    profile = MigProfile(name="1g.10gb", memory_mb=9728, core=14, slice_count=1, placements=(MigPlacement(1, 1),) * 64)
    mig = DeviceInfo(id=UUID, mode="mig", mig_profiles=(profile,) * MAX_MIG_PROFILES)
    assert decode_node_devices(encode_node_devices([mig])) == (mig,)
    too_many_profiles = encode_node_devices([dataclasses.replace(mig, mig_profiles=(profile,) * 65)])
    _refuse(decode_node_devices, too_many_profiles, "'migProfiles' lists more than 64")
    long_placements = dataclasses.replace(profile, placements=(MigPlacement(1, 1),) * (MAX_MIG_PLACEMENTS + 1))
    _refuse(decode_node_devices, encode_node_devices([DeviceInfo(id=UUID, mig_profiles=(long_placements,))]), "64")
    _refuse(decode_node_devices, json.dumps([{"id": "u" * (MAX_UUID_CHARS + 1)}]), "longer than 128")
    _refuse(decode_node_devices, json.dumps([{"id": "u", "type": "t" * (MAX_TYPE_CHARS + 1)}]), "longer than 128")
    _refuse(decode_node_devices, json.dumps([{"id": "u", "count": INT32_MAX + 1}]), "'count' is out of the range")
    _refuse(decode_node_devices, json.dumps([{"id": "u", "count": -1}]), "'count' is out of the range")
    assert decode_node_devices(json.dumps([{"id": "u", "numa": -1}]))[0].numa == -1
    _refuse(decode_node_devices, '[{"id":"u","count":NaN}]', "not valid JSON")
    _refuse(decode_node_devices, '[{"id":"u","count":1.0}]', "must be an integer")


def test_json_nesting_at_the_edge() -> None:
    """HAMi nests 6 deep; unknown keys may nest up to MAX_JSON_DEPTH (ignored, as Go does), no deeper."""
    inner = MAX_JSON_DEPTH - 2  # the array and the device object take two levels
    at_limit = '[{"id":"u","future":' + "[" * inner + "]" * inner + "}]"
    assert decode_node_devices(at_limit) == (DeviceInfo(id="u"),)
    past = '[{"id":"u","future":' + "[" * (inner + 1) + "]" * (inner + 1) + "}]"
    _refuse(decode_node_devices, past, f"nested deeper than {MAX_JSON_DEPTH}")
    # Brackets inside strings are text, not nesting.
    assert decode_node_devices(json.dumps([{"id": "u", "type": "[" * 100}]))[0].type == "[" * 100


def test_small_values_bounds() -> None:
    _refuse(lambda v: parse_quantity(v, resource="r", container="c"), 2**70, "larger than")
    _refuse(lambda v: parse_quantity(v, resource="r", container="c"), "١", "not a Kubernetes quantity")
    _refuse(lambda v: parse_quantity(v, resource="r", container="c" * 10_000), "x", "ccc")


def test_pod_with_more_containers_than_a_device_list_holds_is_refused() -> None:
    spec = {"containers": [{"name": f"c{i}"} for i in range(MAX_POD_CONTAINERS - 1)], "initContainers": [{}]}
    assert len(pod_gpu_requests(spec).all) == MAX_POD_CONTAINERS
    spec["initContainers"] = [{}, {}]
    _refuse(pod_gpu_requests, spec, f"at most {MAX_POD_CONTAINERS} containers")
    _refuse(pod_gpu_requests, [], "must be an object")
    _refuse(pod_gpu_requests, {"containers": [[]]}, "list of container objects")


# --- the settings file (operator input) ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
    name: str = setting("x", help="a name")
    items: tuple[str, ...] = setting((), help="a list")
    scaling: float = setting(1.0, help="a scale")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"name: " + b"x" * MAX_CONFIG_FILE_BYTES, "larger than"),
        (b"name: \xff\xfe", "not UTF-8"),
        (b"items: " + b"[" * 100_000, "nested deeper than 16"),
        (b"- " * 50_000 + b"x", "nested deeper than 16"),
        (b'name: "\\U99999999999"', "not valid YAML"),
        (  # a billion laughs: never expanded into text
            b"items: [&a [x, x, x, x], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b], [*c, *c, *c, *c]]\n",
            "expected a list of plain values",
        ),
        (b"name: &a [*a]\n", "expected str, not a list"),
        (b"scaling: " + b"9" * 400, "too large"),
        (b"version: [1]\n", "not supported"),
        (b"? [a]\n: 1\n", "not valid YAML"),
        (b"{1: 2}", "unknown setting 1"),
    ],
)
def test_config_file_is_read_within_bounds(tmp_path: pathlib.Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    start = time.process_time()
    with pytest.raises(ConfigError) as info:
        read_config_file(_Settings, path)
    assert time.process_time() - start < 5 * CPU_SECONDS_CEILING
    assert fragment in str(info.value)
    assert len(str(info.value)) < 2000


def test_config_json_nesting_is_our_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"items": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(_Settings, path)
