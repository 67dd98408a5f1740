"""Size bounds and bounded parsing helpers shared by the decoders of this library.

Every value a decoder reads may have been written by a tenant, so every decoder is *total*:
for any input it returns a value or raises :class:`~hami_shared.errors.MalformedInputError`,
and it refuses an oversized input before doing work proportional to it. Lengths are counted
in characters; a character is at least one UTF-8 byte, so a value within a byte limit of
Kubernetes is always within the same limit in characters.
"""

from __future__ import annotations

from typing import Final

from hami_shared.errors import MalformedInputError

INT32_MAX: Final = 2**31 - 1  # HAMi's Go types for counts, MiB and cores are int32
# Longer numbers are refused unparsed: int() is quadratic in the digit count and raises past 4,300 digits.
MAX_INT_DIGITS: Final = len(str(INT32_MAX))
# A GPU UUID is 40 characters (GPU- and 36); HAMi v2.5-v2.7 MIG records append [<template>-<slot>].
MAX_UUID_CHARS: Final = 128
MAX_TYPE_CHARS: Final = 128  # device types, model names, modes, MIG profile names (NVIDIA-Tesla V100-PCIE-32GB: 27)
MAX_NODE_DEVICES: Final = 128  # GPUs of one node (the largest have 16 to 20), so also of one container
MAX_POD_CONTAINERS: Final = 256  # init plus regular containers of one pod

KIB: Final = 1024


def require_text(value: object, what: str, max_chars: int) -> str:
    """``value`` if it is a string of at most ``max_chars`` characters (checked before anything else)."""
    if not isinstance(value, str):
        raise MalformedInputError(what, describe(value), "expected a string")
    if len(value) > max_chars:
        raise MalformedInputError(
            what, value[:64], f"is {len(value)} characters long, more than the {max_chars} allowed"
        )
    return value


def parse_int(text: str, *, low: int, high: int, signed: bool = False, max_digits: int = MAX_INT_DIGITS) -> int | None:
    """The decimal integer ``text`` if it is one within ``low..high``, else ``None``.

    Only ASCII digits (with one leading ``-`` when ``signed``), at most ``max_digits`` of them;
    the length is checked before the digits are converted.
    """
    digits = text[1:] if signed and text.startswith("-") else text
    if not 0 < len(digits) <= max_digits or not digits.isascii() or not digits.isdigit():
        return None
    number = int(text)
    return number if low <= number <= high else None


def describe(value: object) -> str:
    """A short, bounded description of any value for error messages (never its full ``repr``)."""
    if isinstance(value, str):
        return value[:64]
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__name__}>"
