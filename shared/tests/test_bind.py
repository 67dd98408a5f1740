"""Bind phase, Unix times and the node handshake."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hami_shared.bind import (
    BindPhase,
    HandshakeState,
    decode_bind_phase,
    decode_handshake,
    decode_unix_time,
    encode_handshake,
    encode_unix_time,
)
from hami_shared.errors import MalformedInputError
from hypothesis import given
from hypothesis import strategies as st


def test_bind_phase_values_are_hamis() -> None:
    assert [p.value for p in BindPhase] == ["allocating", "success", "failed"]
    assert decode_bind_phase("success") is BindPhase.SUCCESS
    with pytest.raises(MalformedInputError, match="unknown bind phase"):
        decode_bind_phase("Success")


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_unix_time_round_trip(seconds: int) -> None:
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    assert decode_unix_time(encode_unix_time(moment)) == moment


@pytest.mark.parametrize("value", ["", "-1", "1.5", "abc", "١٢٣"])
def test_unix_time_refuses_garbage(value: str) -> None:
    with pytest.raises(MalformedInputError):
        decode_unix_time(value)


def test_handshake_forms() -> None:
    requesting = decode_handshake("Requesting_2026-11-23 06:35:21")
    assert requesting.state is HandshakeState.REQUESTING
    assert requesting.timestamp == dt.datetime(2026, 11, 23, 6, 35, 21)
    assert decode_handshake("Requesting_2024.01.02 03:04:05").timestamp == dt.datetime(2024, 1, 2, 3, 4, 5)
    deleted = decode_handshake("Deleted_2026-01-02 03:04:05")
    assert deleted.state is HandshakeState.DELETED
    reported = decode_handshake("Reported 2025-06-01 10:11:12.123456789 +0200 CEST m=+12.5")
    assert reported.state is HandshakeState.REPORTED
    assert reported.timestamp == dt.datetime(2025, 6, 1, 10, 11, 12, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    moment = dt.datetime(2026, 11, 23, 6, 35, 21)
    assert encode_handshake(HandshakeState.REQUESTING, moment) == "Requesting_2026-11-23 06:35:21"


@given(st.text(max_size=80))
def test_handshake_arbitrary_text_raises_only_our_error(value: str) -> None:
    with contextlib.suppress(MalformedInputError):
        decode_handshake(value)
