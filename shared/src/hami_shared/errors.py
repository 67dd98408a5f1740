"""The one error type for malformed wire input.

Every decoder in this library raises :class:`MalformedInputError` (and nothing else) when
its input is not valid, and the message names the offending record so an operator can
find it in the annotation or the pod spec.
"""

from __future__ import annotations


class MalformedInputError(ValueError):
    """Input that does not follow the documented wire format.

    ``what`` names the value being decoded (an annotation key, a resource name),
    ``record`` the offending part of it (a device record, a field), ``reason`` what is wrong.
    """

    def __init__(self, what: str, record: str, reason: str) -> None:
        # Clipped, to keep messages readable when a huge annotation is malformed.
        clipped = record if len(record) <= 200 else record[:200] + "..."
        super().__init__(f"{what}: {reason} (in {clipped!r})")
