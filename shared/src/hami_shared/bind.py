"""Small values the scheduler extender and the device plugin exchange on pods and nodes.

- ``hami.io/bind-phase``: ``allocating`` (written at bind), then ``success`` or ``failed``
  (written by the device plugin after Allocate).
- ``hami.io/bind-time`` and ``hami.io/vgpu-time``: Unix seconds as a decimal string.
- ``hami.io/node-handshake``: ``Requesting_<YYYY-MM-DD HH:MM:SS>`` (scheduler),
  ``Reported <Go time.String()>`` (device plugins up to v2.7), ``Deleted_<timestamp>``.

The decoders are total (any input: a value or :class:`MalformedInputError`) and check the
length before anything else: a bind phase is at most ``MAX_BIND_PHASE_CHARS`` (32) characters,
a Unix time at most 12 digits and no later than ``MAX_UNIX_SECONDS`` (9999-12-31T23:59:59Z, the
last second a ``datetime`` holds), a handshake at most ``MAX_HANDSHAKE_CHARS`` (128; Go's
``time.String()`` with zone and monotonic reading is under 80).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from typing import Final

from hami_shared.bounds import describe, parse_int, require_text
from hami_shared.errors import MalformedInputError
from hami_shared.names import BIND_PHASE, BIND_TIME, NODE_HANDSHAKE

MAX_BIND_PHASE_CHARS: Final = 32
MAX_UNIX_SECONDS: Final = 253_402_300_799
MAX_HANDSHAKE_CHARS: Final = 128


class BindPhase(enum.StrEnum):
    """Where a pod is between bind and container start."""

    ALLOCATING = "allocating"
    SUCCESS = "success"
    FAILED = "failed"


def decode_bind_phase(value: str) -> BindPhase:
    text = require_text(value, BIND_PHASE, MAX_BIND_PHASE_CHARS)
    try:
        return BindPhase(text)
    except ValueError as exc:
        raise MalformedInputError(
            BIND_PHASE, text, f"unknown bind phase, expected one of {[p.value for p in BindPhase]}"
        ) from exc


def encode_unix_time(moment: dt.datetime) -> str:
    """Unix seconds (integer) of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("encode_unix_time needs a timezone-aware datetime")
    return str(int(moment.timestamp()))


def decode_unix_time(value: str, *, what: str = BIND_TIME) -> dt.datetime:
    """Parse Unix seconds into an aware UTC datetime."""
    if not isinstance(value, str) or len(value) > 12:
        raise MalformedInputError(what, describe(value), "expected Unix seconds as an integer of at most 12 digits")
    seconds = parse_int(value, low=0, high=MAX_UNIX_SECONDS, max_digits=12)
    if seconds is None:
        raise MalformedInputError(
            what, value, f"expected Unix seconds as a non-negative integer up to {MAX_UNIX_SECONDS} (year 9999)"
        )
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:  # platform limits below year 9999
        raise MalformedInputError(what, value, f"not a representable time: {exc}") from exc


class HandshakeState(enum.StrEnum):
    REQUESTING = "Requesting"
    REPORTED = "Reported"
    DELETED = "Deleted"


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    state: HandshakeState
    timestamp: dt.datetime | None
    """Naive local time for Requesting/Deleted (HAMi writes scheduler local time); aware for Reported."""


_HANDSHAKE_LAYOUT: Final = "%Y-%m-%d %H:%M:%S"
_HANDSHAKE_LAYOUT_V24: Final = "%Y.%m.%d %H:%M:%S"
# Go's time.String(): "2006-01-02 15:04:05.999999999 -0700 MST" optionally followed by " m=+1.23".
_GO_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))? ([+-]\d{4})(?: [A-Za-z0-9+-]+)?(?: m=[+-][0-9.]+)?$",
    re.ASCII,
)


def encode_handshake(state: HandshakeState, moment: dt.datetime) -> str:
    if state is HandshakeState.REPORTED:
        raise ValueError("we never write 'Reported' handshakes (device plugins of HAMi <= v2.7 did)")
    return f"{state.value}_{moment.strftime(_HANDSHAKE_LAYOUT)}"


def decode_handshake(value: str) -> Handshake:
    value = require_text(value, NODE_HANDSHAKE, MAX_HANDSHAKE_CHARS)
    if value.startswith("Reported "):
        match = _GO_TIME.match(value[len("Reported ") :])
        if not match:
            raise MalformedInputError(NODE_HANDSHAKE, value, "unreadable time after 'Reported '")
        base, fraction, offset = match.groups()
        micro = int((fraction or "0").ljust(9, "0")[:6])
        try:
            moment = dt.datetime.strptime(f"{base} {offset}", "%Y-%m-%d %H:%M:%S %z").replace(microsecond=micro)
        except ValueError as exc:
            raise MalformedInputError(NODE_HANDSHAKE, value, f"invalid time: {exc}") from exc
        return Handshake(HandshakeState.REPORTED, moment)
    for state in (HandshakeState.REQUESTING, HandshakeState.DELETED):
        prefix = f"{state.value}_"
        if value.startswith(prefix):
            text = value[len(prefix) :]
            for layout in (_HANDSHAKE_LAYOUT, _HANDSHAKE_LAYOUT_V24):
                try:
                    return Handshake(state, dt.datetime.strptime(text, layout))
                except ValueError:
                    continue
            raise MalformedInputError(NODE_HANDSHAKE, value, f"time after '{prefix}' is not 'YYYY-MM-DD HH:MM:SS'")
    raise MalformedInputError(
        NODE_HANDSHAKE, value, "expected 'Requesting_<time>', 'Deleted_<time>' or 'Reported <time>'"
    )
