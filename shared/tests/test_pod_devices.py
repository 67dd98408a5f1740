"""Pod device lists and our slot annotation: documented examples, round trips, robustness."""

from __future__ import annotations

import contextlib

import pytest
from hami_shared.errors import MalformedInputError
from hami_shared.pod_devices import (
    ContainerDevice,
    consume_container,
    decode_device_slots,
    decode_pod_devices,
    encode_device_slots,
    encode_pod_devices,
    slot_id,
    split_slot_id,
)
from hypothesis import given
from hypothesis import strategies as st

# hami-control-plane.md section 1.4: one init container without GPU, then two containers.
EXAMPLE = ";GPU-aaa,NVIDIA,3000,30:;GPU-bbb,NVIDIA,5000,0:GPU-ccc,NVIDIA,5000,0:;"


def test_documented_example() -> None:
    assert decode_pod_devices(EXAMPLE) == (
        (),
        (ContainerDevice(uuid="GPU-aaa", type="NVIDIA", usedmem=3000, usedcores=30),),
        (
            ContainerDevice(uuid="GPU-bbb", type="NVIDIA", usedmem=5000, usedcores=0),
            ContainerDevice(uuid="GPU-ccc", type="NVIDIA", usedmem=5000, usedcores=0),
        ),
    )
    assert encode_pod_devices(decode_pod_devices(EXAMPLE)) == EXAMPLE


def test_consumed_entries_stay_aligned() -> None:
    pod = decode_pod_devices(EXAMPLE)
    consumed = consume_container(consume_container(pod, 1), 2)
    assert encode_pod_devices(consumed) == ";;;"
    assert decode_pod_devices(";;;") == ((), (), ())


def test_empty_string_is_no_container() -> None:
    assert decode_pod_devices("") == ()


def test_extra_fields_are_ignored_like_hami() -> None:
    assert decode_pod_devices("GPU-a,NVIDIA,1,2,extra:;") == ((ContainerDevice(uuid="GPU-a", usedmem=1, usedcores=2),),)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("GPU-a,NVIDIA,1:;", "3 fields", id="three-fields"),
        pytest.param("GPU-a,NVIDIA,x,1:;", "usedmem is 'x'", id="bad-mem"),
        pytest.param("GPU-a,NVIDIA,1,-5:;", "usedcores is '-5'", id="negative-cores"),
        pytest.param("GPU-a,NVIDIA,99999999999,1:;", "within 0..2147483647", id="overflow"),
        pytest.param("GPU-a,NVIDIA,1,101:;", "within 0..100", id="cores-over-100"),
        pytest.param(",NVIDIA,1,1:;", "empty uuid", id="empty-uuid"),
    ],
)
def test_malformed_records_name_themselves(value: str, fragment: str) -> None:
    with pytest.raises(MalformedInputError) as info:
        decode_pod_devices(value, what="hami.io/vgpu-devices-to-allocate")
    assert fragment in str(info.value)
    assert "hami.io/vgpu-devices-to-allocate" in str(info.value)


def test_constructor_refuses_separators() -> None:
    with pytest.raises(MalformedInputError):
        ContainerDevice(uuid="GPU-a:b", usedmem=1, usedcores=0)


def test_slots_round_trip_and_ids() -> None:
    slots = ((), ("GPU-aaa-3",), ("GPU-bbb-0", "GPU-ccc-9"))
    text = encode_device_slots(slots)
    assert text == ";GPU-aaa-3;GPU-bbb-0,GPU-ccc-9;"
    assert decode_device_slots(text) == slots
    assert slot_id("GPU-0fc3-e98b", 7) == "GPU-0fc3-e98b-7"
    assert split_slot_id("GPU-0fc3-e98b-7") == ("GPU-0fc3-e98b", 7)
    with pytest.raises(MalformedInputError):
        split_slot_id("GPU-0fc3-x")


_ident = st.text(
    alphabet=st.characters(blacklist_characters=",:;", blacklist_categories=["Cs"]), min_size=1, max_size=24
)
_int32 = st.integers(min_value=0, max_value=2**31 - 1)
_device = st.builds(ContainerDevice, uuid=_ident, type=_ident, usedmem=_int32, usedcores=st.integers(0, 100))
_pod = st.lists(st.lists(_device, max_size=4).map(tuple), max_size=6).map(tuple)


@given(_pod)
def test_pod_devices_round_trip(pod: tuple[tuple[ContainerDevice, ...], ...]) -> None:
    assert decode_pod_devices(encode_pod_devices(pod)) == pod


@given(st.lists(st.lists(_ident, max_size=4).map(tuple), max_size=6).map(tuple))
def test_slots_round_trip(slots: tuple[tuple[str, ...], ...]) -> None:
    assert decode_device_slots(encode_device_slots(slots)) == slots


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_our_error(value: str) -> None:
    for decode in (decode_pod_devices, decode_device_slots):
        with contextlib.suppress(MalformedInputError):
            decode(value)


@given(st.text(alphabet=",:;GPU-a0123456789NVIDIA ", max_size=80))
def test_separator_soup_raises_only_our_error(value: str) -> None:
    with contextlib.suppress(MalformedInputError):
        decode_pod_devices(value)
