"""Node inventory annotation: documented examples, round trips, and robustness."""

from __future__ import annotations

import contextlib
import json

import pytest
from hami_shared.errors import MalformedInputError
from hami_shared.node_register import (
    DeviceInfo,
    MigPlacement,
    MigProfile,
    decode_node_devices,
    decode_node_devices_json,
    decode_node_devices_legacy,
    encode_node_devices,
    model_type_name,
)
from hypothesis import given
from hypothesis import strategies as st

# The example of hami-control-plane.md section 1.1 (UUIDs shortened there; a full one here).
JSON_EXAMPLE = (
    '[{"id":"GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448","count":10,"devmem":32768,"devcore":100,'
    '"type":"NVIDIA-Tesla V100-PCIE-32GB","mode":"hami-core","health":true}]'
)
LEGACY_9 = (
    "GPU-0055e7c4-6e1c-a5b8-f9e7-d7e8a1b2c3d4,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true,0,hami-core:"
    "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,1,false,1,mig:"
)
LEGACY_7 = "GPU-aaaa,4,16384,100,NVIDIA-T4,0,true:GPU-bbbb,4,16384,100,NVIDIA-T4,1,false:"


def test_json_example_decodes_to_documented_values() -> None:
    (device,) = decode_node_devices(JSON_EXAMPLE)
    assert device == DeviceInfo(
        id="GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448",
        index=0,
        count=10,
        devmem=32768,
        devcore=100,
        type="NVIDIA-Tesla V100-PCIE-32GB",
        numa=0,
        mode="hami-core",
        health=True,
    )


def test_json_example_reencodes_byte_identical() -> None:
    assert encode_node_devices(decode_node_devices(JSON_EXAMPLE)) == JSON_EXAMPLE


def test_absent_health_means_unhealthy_and_zero_fields_are_omitted() -> None:
    (device,) = decode_node_devices('[{"id":"GPU-x","count":2}]')
    assert device.health is False
    assert device.index == 0
    assert device.numa == 0
    assert encode_node_devices([DeviceInfo(id="GPU-x", count=2)]) == '[{"id":"GPU-x","count":2}]'


def test_unknown_json_keys_are_ignored_like_go() -> None:
    (device,) = decode_node_devices('[{"id":"GPU-x","devicevendor":"NVIDIA","custominfo":{"a":1},"count":3}]')
    assert device.count == 3


def test_legacy_nine_fields() -> None:
    first, second = decode_node_devices(LEGACY_9)
    assert first.id == "GPU-0055e7c4-6e1c-a5b8-f9e7-d7e8a1b2c3d4"
    assert (first.count, first.devmem, first.devcore, first.numa, first.health) == (10, 32768, 100, 0, True)
    assert (first.index, first.mode) == (0, "hami-core")
    assert (second.numa, second.health, second.index, second.mode) == (1, False, 1, "mig")
    assert second.type == "NVIDIA-Tesla V100-PCIE-32GB"


def test_legacy_seven_fields_default_mode_hami_core() -> None:
    first, second = decode_node_devices(LEGACY_7)
    assert first == DeviceInfo(
        id="GPU-aaaa",
        count=4,
        devmem=16384,
        devcore=100,
        type="NVIDIA-T4",
        numa=0,
        health=True,
        mode="hami-core",
    )
    assert second.numa == 1
    assert second.health is False


# HAMi v2.5-v2.7 device plugins that had no operating mode set wrote an empty 9th field.
LEGACY_9_EMPTY_MODE = "GPU-e,10,24576,100,NVIDIA-Tesla T4,0,true,0,:"


def test_legacy_nine_fields_with_an_empty_mode_keep_it_empty_like_hami() -> None:
    # HAMi's DecodeNodeDevices sets mode = items[8] for 9 fields (the hami-core default is for 7 only).
    (device,) = decode_node_devices(LEGACY_9_EMPTY_MODE)
    assert device == DeviceInfo(
        id="GPU-e", count=10, devmem=24576, devcore=100, type="NVIDIA-Tesla T4", numa=0, health=True, index=0, mode=""
    )


# What HAMi v2.10's MarshalNodeDevices writes for an A100 in MIG mode (Go encoding/json of DeviceInfo: device
# fields omitempty, MigProfile/MigPlacement fields not), including the zero start of the first placement.
HAMI_MIG_JSON = (
    '[{"id":"GPU-a100","count":7,"devmem":81920,"devcore":100,"type":"NVIDIA A100-SXM4-80GB","mode":"mig",'
    '"migProfiles":[{"name":"1g.10gb","memoryMB":9728,"core":14,"sliceCount":1,'
    '"placements":[{"start":0,"size":1},{"start":1,"size":1},{"start":6,"size":1}]},'
    '{"name":"7g.80gb","memoryMB":80384,"core":100,"sliceCount":7,"placements":[{"start":0,"size":8}]}],'
    '"health":true}]'
)


def test_mig_profiles_reencode_byte_identical_to_hami_with_start_zero() -> None:
    (device,) = decode_node_devices(HAMI_MIG_JSON)
    assert device.mig_profiles[1].placements == (MigPlacement(start=0, size=8),)
    assert encode_node_devices([device]) == HAMI_MIG_JSON


def test_mig_profile_zero_fields_are_written_as_go_does() -> None:
    profile = MigProfile(name="", memory_mb=0, core=0, slice_count=0, placements=())
    text = encode_node_devices([DeviceInfo(id="GPU-z", mode="mig", mig_profiles=(profile,))])
    assert text == (
        '[{"id":"GPU-z","mode":"mig","migProfiles":[{"name":"","memoryMB":0,"core":0,"sliceCount":0,'
        '"placements":null}]}]'
    )
    (device,) = decode_node_devices(text)
    assert device.mig_profiles == (profile,)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("", "neither a JSON array", id="empty"),
        pytest.param("GPU-a,1,2,3", "neither a JSON array", id="no-colon"),
        pytest.param("GPU-a,1,2,3,T4,0:", "6 fields", id="six-fields"),
        pytest.param("GPU-a,x,2,3,T4,0,true:", "count is 'x'", id="bad-count"),
        pytest.param("GPU-a,1,2,3,T4,0,maybe:", "health", id="bad-health"),
        pytest.param("[1]", "JSON object", id="json-not-object"),
        pytest.param('[{"count":1}]', "no 'id'", id="json-no-id"),
        pytest.param('[{"id":"GPU-a","count":"10"}]', "'count' must be an integer", id="json-string-count"),
        pytest.param('[{"id":"GPU-a","health":1}]', "'health' must be true or false", id="json-int-health"),
        pytest.param('[{"id":"GPU-a","count":true}]', "'count' must be an integer", id="json-bool-count"),
        pytest.param("[", "not valid JSON", id="json-truncated"),
        pytest.param('{"id":"x"}', "expected a JSON array", id="json-object-top"),
    ],
)
def test_malformed_values_name_the_record(value: str, fragment: str) -> None:
    with pytest.raises(MalformedInputError) as info:
        decode_node_devices(value)
    assert fragment in str(info.value)
    assert "hami.io/node-nvidia-register" in str(info.value)


def test_model_type_name_prefix() -> None:
    assert model_type_name("Tesla V100-PCIE-32GB") == "NVIDIA-Tesla V100-PCIE-32GB"
    assert model_type_name("NVIDIA A100-SXM4-80GB") == "NVIDIA A100-SXM4-80GB"


# --- properties -------------------------------------------------------------------------------

_int32 = st.integers(min_value=0, max_value=2**31 - 1)
_text = st.text(min_size=1, max_size=30)
_placements = st.builds(MigPlacement, start=_int32, size=_int32)
_profiles = st.builds(
    MigProfile,
    name=st.text(max_size=12),
    memory_mb=_int32,
    core=_int32,
    slice_count=_int32,
    placements=st.lists(_placements, max_size=3).map(tuple),
)
devices = st.builds(
    DeviceInfo,
    id=_text,
    index=_int32,
    count=_int32,
    devmem=_int32,
    devcore=_int32,
    type=st.text(max_size=30),
    numa=_int32,
    mode=st.sampled_from(["", "hami-core", "mig", "mps"]),
    mig_profiles=st.lists(_profiles, max_size=2).map(tuple),
    health=st.booleans(),
)


@given(st.lists(devices, max_size=8))
def test_json_round_trip(inventory: list[DeviceInfo]) -> None:
    assert decode_node_devices(encode_node_devices(inventory)) == tuple(inventory)


_legacy_safe = st.text(
    alphabet=st.characters(blacklist_characters=",:", blacklist_categories=["Cs"]), min_size=1, max_size=20
)


@given(
    st.lists(
        st.tuples(
            _legacy_safe,
            _int32,
            _int32,
            _int32,
            _legacy_safe,
            _int32,
            st.booleans(),
            _int32,
            st.sampled_from(["hami-core", "mig", "mps"]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_legacy_round_trip(records: list[tuple[str, int, int, int, str, int, bool, int, str]], nine: bool) -> None:
    parts = []
    for uuid, count, mem, core, model, numa, health, index, mode in records:
        fields = [uuid, str(count), str(mem), str(core), model, str(numa), str(health).lower()]
        if nine:
            fields += [str(index), mode]
        parts.append(",".join(fields) + ":")
    decoded = decode_node_devices_legacy("".join(parts))
    assert len(decoded) == len(records)
    for device, (uuid, count, mem, core, model, numa, health, index, mode) in zip(decoded, records, strict=True):
        assert (
            device.id,
            device.count,
            device.devmem,
            device.devcore,
            device.type,
            device.numa,
            device.health,
        ) == (
            uuid,
            count,
            mem,
            core,
            model,
            numa,
            health,
        )
        assert device.index == (index if nine else 0)
        assert device.mode == (mode if nine else "hami-core")


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_our_error(value: str) -> None:
    with contextlib.suppress(MalformedInputError):
        decode_node_devices(value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "count", "devmem", "health", "migProfiles", "placements", "name", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(st.lists(_json_values, max_size=4))
def test_arbitrary_json_raises_only_our_error(items: list[object]) -> None:
    with contextlib.suppress(MalformedInputError):
        decode_node_devices_json(json.dumps(items))
