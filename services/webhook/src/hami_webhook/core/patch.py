"""RFC 6902 JSONPatch operations and RFC 6901 JSON-Pointer building.

The webhook answers with ``add`` and ``replace`` operations only. Paths are built from
segments with :func:`pointer`, which escapes ``~`` and ``/`` (resource names such as
``nvidia.com/gpu`` contain a slash and become ``nvidia.com~1gpu``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

PatchOpName = Literal["add", "replace"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PatchOperation:
    """One JSONPatch operation; ``value`` is plain JSON data."""

    op: PatchOpName
    path: str
    value: Any


def pointer(*segments: str | int) -> str:
    """A JSON Pointer from unescaped segments: ``pointer("spec", "containers", 0)`` = ``/spec/containers/0``
    (each escaped as RFC 6901 section 3 says: ``~`` first, then ``/``)."""
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in segments)


def patch_to_json(operations: Sequence[PatchOperation]) -> list[dict[str, Any]]:
    return [{"op": op.op, "path": op.path, "value": op.value} for op in operations]
