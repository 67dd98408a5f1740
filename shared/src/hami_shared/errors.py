"""The one error type for malformed wire input: every decoder of this library raises it (and nothing else) when
its input is not valid, with a message that names the offending record, for an operator to find it."""

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
