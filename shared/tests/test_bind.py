"""Bind phase and Unix times."""

from __future__ import annotations

import datetime as dt

import pytest
from hami_shared.bind import BindPhase, encode_unix_time
from hypothesis import given
from hypothesis import strategies as st


def test_bind_phase_values_are_hamis() -> None:
    assert [p.value for p in BindPhase] == ["allocating", "success", "failed"]


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_unix_time_is_the_seconds_in_decimal(seconds: int) -> None:
    assert encode_unix_time(dt.datetime.fromtimestamp(seconds, tz=dt.UTC)) == str(seconds)


def test_unix_time_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_unix_time(dt.datetime(2026, 1, 2))
