"""Small values the scheduler extender writes on pods for the device plugin.

- ``hami.io/bind-phase``: ``allocating`` (written at bind), then ``success`` or ``failed``
  (written by the device plugin after Allocate).
- ``hami.io/bind-time`` and ``hami.io/vgpu-time``: Unix seconds as a decimal string.
"""

from __future__ import annotations

import datetime as dt
import enum


class BindPhase(enum.StrEnum):
    """Where a pod is between bind and container start."""

    ALLOCATING = "allocating"
    SUCCESS = "success"
    FAILED = "failed"


def encode_unix_time(moment: dt.datetime) -> str:
    """Unix seconds (integer) of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("encode_unix_time needs a timezone-aware datetime")
    return str(int(moment.timestamp()))
