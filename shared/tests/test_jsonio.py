"""hami_shared.jsonio: orjson's speed, the standard parser's answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hami_shared import jsonio
from hypothesis import given
from hypothesis import strategies as st

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_reads_what_the_standard_parser_reads(value: Any) -> None:
    text = json.dumps(value)
    assert jsonio.loads(text.encode()) == json.loads(text)
    assert jsonio.loads(bytearray(text.encode())) == json.loads(text)
    assert jsonio.loads(memoryview(text.encode())) == json.loads(text)


@pytest.mark.parametrize("text", ["[NaN]", "[Infinity]", "[-Infinity]", '["\\ud800"]'])
def test_what_orjson_refuses_is_read_by_the_standard_parser(text: str) -> None:
    assert repr(jsonio.loads(text.encode())) == repr(json.loads(text))


def test_integers_beyond_64_bits_come_back_as_floats() -> None:
    # orjson's rule, documented in the module: the one answer that differs from the standard parser's.
    assert jsonio.loads(b"[123456789012345678901234567890]") == [1.2345678901234568e29]
    assert jsonio.loads(b"[9223372036854775807, -9223372036854775808]") == [2**63 - 1, -(2**63)]


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1,]"])
def test_what_both_refuse_raises_the_standard_parsers_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        jsonio.loads(text.encode())


def test_deep_nesting_raises_recursion_error_not_a_crash() -> None:
    with pytest.raises((RecursionError, json.JSONDecodeError)):
        jsonio.loads(b"[" * 100_000 + b"]" * 100_000)
