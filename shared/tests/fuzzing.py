"""Input generators for the decoder fuzz tests: random text, random bytes, and near-valid mutations.

A near-valid input starts from a valid encoding and applies a few mutations, each drawn from
what an attacker (or a broken writer) would try: huge and signed numbers, separators, unicode
and control characters, JSON brackets and escapes, long repetitions of a slice (long lists),
deletions and truncation.
"""

from __future__ import annotations

import copy
import random
import re
import reprlib
from collections.abc import Callable
from typing import Any, TypeVar

from hami_shared.errors import MalformedInputError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

PIECES = (
    ",",
    ":",
    ";",
    "-",
    ",,,,",
    ":::",
    ";;;",
    "9" * 5000,  # the number of issue 16: past Python's 4,300-digit int() limit
    "1" * 4000,
    "2147483648",
    "99999999999",
    "0000000000001",
    "-1",
    "+1",
    "-0",
    "١٢٣",  # Arabic-Indic digits: str.isdigit() says yes
    "²",
    "\x00",
    "\ud800",  # a lone surrogate
    "\u200b",
    "é",
    "\U0001f600",
    " ",
    "\t",
    "\n",
    "[",
    "]",
    "{",
    "}",
    '"',
    "\\",
    '\\"',
    '"\\',
    "[" * 64,
    "]" * 64,
    '{"a":' * 20,
    '"id":',
    '"migProfiles":[',
    "null",
    "true",
    "1e999",
    "1.5",
    "NaN",
    "Infinity",
    "x" * 300,
    "GPU-",
    "NVIDIA",
    "Requesting_",
    "Reported ",
    "Deleted_",
    "Ki",
    "e40",
    "e+99999",
)

_DIGITS = re.compile(r"\d+")
_KINDS = ("insert", "insert", "delete", "repeat", "number", "truncate")
_CHAR_POOLS = (
    "0123456789",
    ',:;-[]{}"\\ ',
    "GPUNVIDIAabcdef.",
    "\x00\t\n\u200b\ud800\udfff\ufeff\U0001f600éØ١٢²",
)

BATCH = 10
"""Inputs per hypothesis example: a 1,000-example test feeds 10,000 inputs to each decoder."""
FUZZ_EXAMPLES = 1_000
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
"""The same inputs on every run (derandomized: CI never flakes on a new draw)."""


_CODE_POINTS = range(0x110000)


def _random_text(rng: random.Random, max_size: int = 300) -> str:
    size = rng.randrange(max_size + 1)
    if rng.random() < 0.5:  # any code point, surrogates included
        return "".join(map(chr, rng.choices(_CODE_POINTS, k=size)))
    return "".join(rng.choices(rng.choice(_CHAR_POOLS), k=size))


def _mutate(text: str, rng: random.Random, max_repeat: int) -> str:
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(_KINDS)
        at = rng.randrange(len(text) + 1)
        piece = rng.choice(PIECES) if rng.random() < 0.8 else _random_text(rng, 6)
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + rng.randint(1, 80) :]
        elif kind == "repeat":  # a long list: one slice many times over (up to a few hundred KiB)
            times = int(max_repeat ** rng.random())
            text = text[:at] + text[at : at + rng.randint(1, 80)] * times + text[at:]
        elif kind == "number":  # one of its numbers becomes the piece
            numbers = list(_DIGITS.finditer(text))
            if numbers:
                match = rng.choice(numbers)
                text = text[: match.start()] + piece + text[match.end() :]
            else:
                text += piece
        else:
            text = text[:at]
    return text


def _non_text(rng: random.Random) -> object:
    return rng.choice([None, 0, 2**70, 1.5, True, b"GPU-a,NVIDIA,1,1:;", bytearray(b";"), ["a"], {"a": 1}, ("x",)])


def fuzz_batch(valid: str, seed: int, *, max_repeat: int = 4000) -> list[object]:
    """:data:`BATCH` inputs derived from one valid encoding: six near-valid mutations of it, two
    random texts, one random byte string decoded (UTF-8 with replacement or surrogate escapes, or
    Latin-1) and one value that is not text at all. A repeated slice is repeated up to
    ``max_repeat`` times (log-uniform: mostly a few, sometimes thousands)."""
    rng = random.Random(seed)
    out: list[object] = [_mutate(valid, rng, max_repeat) for _ in range(6)]
    out += [_random_text(rng), _random_text(rng)]
    data = rng.randbytes(rng.randrange(400))
    out.append(rng.choice(list(_CODECS.values()))(data))
    out.append(_non_text(rng))
    return out


seeds = st.integers(0, 2**64 - 1)


_CODECS: dict[str, Callable[[bytes], str]] = {
    "utf-8/replace": lambda b: b.decode("utf-8", "replace"),
    "utf-8/surrogateescape": lambda b: b.decode("utf-8", "surrogateescape"),
    "latin-1": lambda b: b.decode("latin-1"),
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**70, -(2**63), 10**30])
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
"""Arbitrary JSON-shaped values (what a decoded document may hold anywhere)."""


def decode_or_refuse(decode: Callable[[Any], T], value: Any) -> T | None:
    """The decoder's value, or None when it refused with our error; any other exception fails the test."""
    try:
        return decode(value)
    except MalformedInputError:
        return None


def _deep_list(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


_WEIRD_JSON: tuple[Callable[[], object], ...] = (
    lambda: None,
    lambda: True,
    lambda: -1,
    lambda: 2**70,
    lambda: 10**400,
    lambda: 1.5e308,
    lambda: "",
    lambda: "9" * 5000,
    lambda: "x" * 300_000,
    lambda: "\ud800",
    list,
    dict,
    lambda: _deep_list(1200),  # past Python's recursion limit (1000)
    lambda: [{"name": f"c{i}"} for i in range(400)],
    lambda: {"limits": {"nvidia.com/gpu": "9" * 5000, "nvidia.com/gpumem": 10**400}},
    lambda: {"nvidia.com/gpu": "1e40", "nvidia.com/gpucores": "1e-40", "nvidia.com/gpumem": "1Ei"},
)


def _json_paths(value: object, path: tuple[object, ...], out: list[tuple[object, ...]], budget: int = 64) -> None:
    if len(out) >= budget:
        return
    out.append(path)
    if isinstance(value, dict):
        for key, child in list(value.items())[:8]:
            _json_paths(child, (*path, key), out)
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            _json_paths(child, (*path, index), out)


def _mutate_json(value: object, rng: random.Random) -> object:
    for _ in range(rng.randint(1, 3)):
        paths: list[tuple[object, ...]] = []
        _json_paths(value, (), paths)
        path = rng.choice(paths)
        replacement = rng.choice(_WEIRD_JSON)()
        if not path:
            value = replacement
            continue
        parent: Any = value
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = replacement
    return value


def fuzz_json_batch(valid: object, seed: int) -> list[object]:
    """:data:`BATCH` JSON-shaped inputs derived from one valid document: eight structural
    mutations of it (a node replaced by a huge, deep, long, wrongly typed value, or a key
    dropped), one weird value alone, and one value that is no JSON at all."""
    rng = random.Random(seed)
    out: list[object] = [_mutate_json(copy.deepcopy(valid), rng) for _ in range(8)]
    out.append(rng.choice(_WEIRD_JSON)())
    out.append(rng.choice([b"{}", ("a",), frozenset(), object()]))
    return out


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 300


def preview(value: object) -> str:
    """A bounded ``repr`` of a fuzz input for a failure report."""
    try:
        return _REPR.repr(value) + (f" ({len(value)} characters)" if isinstance(value, str) else "")
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
