"""Codec of the node inventory annotation ``hami.io/node-nvidia-register``.

HAMi v2.8+ writes a JSON array with one object per physical GPU; every device field is
``omitempty`` in Go, so zero values and ``false`` are *absent* (an absent ``health``
means unhealthy), while the fields of a MIG profile and placement are always written
(``{"start":0,"size":8}``). Releases up to v2.7 wrote a colon-terminated list of comma-separated
records with 7 (<= v2.4) or 9 (v2.5-v2.7) fields; we decode that too so a mixed-version
cluster can be read, but we only ever write JSON.

The decoders are total (any input: a value or :class:`MalformedInputError`) and bounded (the
bounds below and :mod:`hami_shared.bounds`'s): the length and, for JSON, the nesting depth are
checked before anything is parsed, and a JSON number is converted only when it is short. The
numbers are within 0..2**31-1 (HAMi's ``int32``/``uint`` fields, never negative); ``numa`` within
the signed int32 range (HAMi up to v2.7 wrote -1 for "no NUMA").
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from hami_shared.bounds import (
    INT32_MAX,
    KIB,
    MAX_NODE_DEVICES,
    MAX_TYPE_CHARS,
    MAX_UUID_CHARS,
    parse_int,
    require_text,
)
from hami_shared.errors import MalformedInputError
from hami_shared.names import NODE_REGISTER

MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODE_MPS: Final = "mps"
KNOWN_MODES: Final = frozenset({MODE_HAMI_CORE, MODE_MIG, MODE_MPS})

# Half the 256 KiB Kubernetes allows for all of a node's annotations. A GPU's JSON object is about 200
# characters, about 1 KiB with a full MIG profile list, so even 64 MIG-mode GPUs fit.
MAX_NODE_REGISTER_CHARS: Final = 128 * KIB
# HAMi's JSON nests 6 deep (array, device, migProfiles, profile, placements, placement); the margin is for
# fields a later HAMi may add, which we ignore as Go does.
MAX_JSON_DEPTH: Final = 16
MAX_MIG_PROFILES: Final = 64  # of one GPU (an H100 offers about 10)
MAX_MIG_PLACEMENTS: Final = 64  # of one profile (at most 8 memory slices)
MAX_JSON_NUMBER_CHARS: Final = 20  # longer than any int64: out of range in any field we read, never converted


@dataclasses.dataclass(frozen=True, slots=True)
class MigPlacement:
    """A legal MIG placement: first memory slice and number of slices."""

    start: int
    size: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MigProfile:
    """A MIG profile the device plugin allows on a GPU (MIG mode only)."""

    name: str
    memory_mb: int = 0
    core: int = 0
    slice_count: int = 0
    placements: tuple[MigPlacement, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """One physical GPU as registered on the node.

    ``count`` is the split count (how many containers may share the card), ``devmem`` the
    registered memory in MiB (already scaled), ``devcore`` the registered cores (100 = one
    whole card), ``type`` the model name prefixed with ``NVIDIA-`` when needed.
    """

    id: str
    index: int = 0
    count: int = 0
    devmem: int = 0
    devcore: int = 0
    type: str = ""
    numa: int = 0
    mode: str = ""
    mig_profiles: tuple[MigProfile, ...] = ()
    health: bool = False


# JSON key order follows HAMi's Go struct so our output is byte-identical to theirs; zero values are omitted.
def _device_to_json(device: DeviceInfo) -> dict[str, Any]:
    return {"id": device.id} | _non_zero(
        ("index", device.index),
        ("count", device.count),
        ("devmem", device.devmem),
        ("devcore", device.devcore),
        ("type", device.type),
        ("numa", device.numa),
        ("mode", device.mode),
        ("migProfiles", [_profile_to_json(p) for p in device.mig_profiles]),
        ("health", device.health),
    )


def _profile_to_json(profile: MigProfile) -> dict[str, Any]:
    # HAMi's MigProfile and MigPlacement fields carry no ``omitempty``: every key is written, zeros
    # included (``{"start":0,"size":8}``), and a profile without placements has Go's nil slice, ``null``.
    return {
        "name": profile.name,
        "memoryMB": profile.memory_mb,
        "core": profile.core,
        "sliceCount": profile.slice_count,
        "placements": [{"start": p.start, "size": p.size} for p in profile.placements] or None,
    }


def _non_zero(*fields: tuple[str, Any]) -> dict[str, Any]:
    """Go's ``omitempty``."""
    return {key: value for key, value in fields if value}


def encode_node_devices(devices: Sequence[DeviceInfo]) -> str:
    """Encode the inventory in HAMi v2.8+ JSON (compact, omitempty)."""
    return json.dumps([_device_to_json(d) for d in devices], separators=(",", ":"), ensure_ascii=False)


def decode_node_devices(value: str) -> tuple[DeviceInfo, ...]:
    """Decode either form of the annotation: JSON (v2.8+) or the legacy colon/comma form.

    Raises :class:`MalformedInputError` naming the offending record.
    """
    text = require_text(value, NODE_REGISTER, MAX_NODE_REGISTER_CHARS)
    if text.lstrip()[:1] in ("[", "{"):
        return decode_node_devices_json(text)
    return decode_node_devices_legacy(text)


def decode_node_devices_json(value: str) -> tuple[DeviceInfo, ...]:
    """Decode the HAMi v2.8+ JSON form. Unknown keys are ignored, as Go does."""
    text = require_text(value, NODE_REGISTER, MAX_NODE_REGISTER_CHARS)
    if not _json_depth_within(text, MAX_JSON_DEPTH):
        raise MalformedInputError(
            NODE_REGISTER, text, f"not valid JSON, or JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        raw = json.loads(text, parse_int=_parse_json_int, parse_constant=_refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedInputError(NODE_REGISTER, text, f"not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise MalformedInputError(NODE_REGISTER, text, "expected a JSON array of devices")
    if len(raw) > MAX_NODE_DEVICES:
        raise MalformedInputError(NODE_REGISTER, text, f"lists more than {MAX_NODE_DEVICES} devices")
    return tuple(_device_from_json(item) for item in raw)


# Everything but the brackets of a JSON text: its strings (a final unterminated one included,
# so the scan is linear whatever the input) and the characters outside them.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR: Final = re.compile(r"\[\]|\{\}")


def _json_depth_within(text: str, limit: int) -> bool:
    """Whether the brackets of ``text`` nest at most ``limit`` deep (and balance), in at most
    ``limit`` linear passes: each pass removes the innermost ``[]``/``{}`` pairs. A run of more
    than ``limit`` openers, or a pass that removes nothing, ends it early."""
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    too_deep = re.compile(rf"[\[{{]{{{limit + 1}}}")
    for _ in range(limit):
        if not skeleton:
            return True
        if too_deep.search(skeleton):
            return False
        reduced = _EMPTY_PAIR.sub("", skeleton)
        if len(reduced) == len(skeleton):
            return False  # brackets that never pair: not JSON
        skeleton = reduced
    return not skeleton


_OVERSIZED: Final = object()
"""A JSON integer too long to convert; any field that reads it refuses it."""


def _parse_json_int(text: str) -> object:
    return int(text) if len(text) <= MAX_JSON_NUMBER_CHARS else _OVERSIZED


def _refuse_json_constant(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")


class _Invalid(Exception):
    """A field of one JSON device is wrong; the device decoder adds the record to the message."""


def _device_from_json(item: Any) -> DeviceInfo:
    if not isinstance(item, dict):
        raise MalformedInputError(NODE_REGISTER, _json_preview(item), "each device must be a JSON object")
    try:
        device_id = _get_text(item, "id", MAX_UUID_CHARS)
        if not device_id:
            raise _Invalid("device has no 'id' (GPU UUID)")
        profiles_raw = _get_list(item, "migProfiles", MAX_MIG_PROFILES)
        return DeviceInfo(
            id=device_id,
            index=_get_int(item, "index"),
            count=_get_int(item, "count"),
            devmem=_get_int(item, "devmem"),
            devcore=_get_int(item, "devcore"),
            type=_get_text(item, "type", MAX_TYPE_CHARS),
            numa=_get_int(item, "numa", low=-INT32_MAX - 1),
            mode=_get_text(item, "mode", MAX_TYPE_CHARS),
            mig_profiles=tuple(_profile_from_json(p) for p in profiles_raw),
            health=_get(item, "health", bool, "true or false") or False,
        )
    except _Invalid as exc:
        raise MalformedInputError(NODE_REGISTER, _json_preview(item), str(exc)) from None


def _profile_from_json(item: Any) -> MigProfile:
    if not isinstance(item, dict):
        raise _Invalid("each MIG profile must be a JSON object")
    placements = []
    for p in _get_list(item, "placements", MAX_MIG_PLACEMENTS):
        if not isinstance(p, dict):
            raise _Invalid("each MIG placement must be a JSON object")
        placements.append(MigPlacement(start=_get_int(p, "start"), size=_get_int(p, "size")))
    return MigProfile(
        name=_get_text(item, "name", MAX_TYPE_CHARS),
        memory_mb=_get_int(item, "memoryMB"),
        core=_get_int(item, "core"),
        slice_count=_get_int(item, "sliceCount"),
        placements=tuple(placements),
    )


def _json_preview(item: Any) -> str:
    """The start of a device's JSON for an error message (depth and size are bounded already)."""
    return json.dumps(item, separators=(",", ":"), default=lambda _: "?")[:200]


def _get(item: dict[str, Any], key: str, kind: type, expected: str) -> Any:
    """``item[key]`` if it is a ``kind``, None if it is absent or null."""
    value = item.get(key)
    if value is not None and not isinstance(value, kind):
        raise _Invalid(f"field {key!r} must be {expected}")
    return value


def _get_text(item: dict[str, Any], key: str, max_chars: int) -> str:
    value: str = _get(item, key, str, "a string") or ""
    if len(value) > max_chars:
        raise _Invalid(f"field {key!r} is longer than {max_chars} characters")
    return value


def _get_int(item: dict[str, Any], key: str, *, low: int = 0) -> int:
    value = item.get(key)
    if value is None:
        return 0
    if value is _OVERSIZED:
        raise _Invalid(f"field {key!r} is out of the range {low}..{INT32_MAX}")
    # bool is a subclass of int in Python but not in JSON: keep them apart.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"field {key!r} must be an integer")
    if not low <= value <= INT32_MAX:
        raise _Invalid(f"field {key!r} is out of the range {low}..{INT32_MAX}")
    return value


def _get_list(item: dict[str, Any], key: str, max_items: int) -> list[Any]:
    value: list[Any] = _get(item, key, list, "a list") or []
    if len(value) > max_items:
        raise _Invalid(f"field {key!r} lists more than {max_items} entries")
    return value


def decode_node_devices_legacy(value: str) -> tuple[DeviceInfo, ...]:
    """Decode the pre-v2.8 form: records terminated by ``:``, fields separated by ``,``.

    7 fields (<= v2.4): uuid,count,devmem,devcore,type,numa,health
    9 fields (v2.5-v2.7): the same plus index,mode. Mode is ``hami-core`` for 7 fields; an empty 9th field
    is kept as ``""`` as HAMi does (a device any ``nvidia.com/vgpu-mode`` request matches).
    """
    text = require_text(value, NODE_REGISTER, MAX_NODE_REGISTER_CHARS)
    if ":" not in text:
        raise MalformedInputError(NODE_REGISTER, text, "neither a JSON array nor a legacy ':'-terminated device list")
    records = [record for record in text.split(":") if record]
    if not records:
        raise MalformedInputError(NODE_REGISTER, text, "legacy device list holds no device record")
    if len(records) > MAX_NODE_DEVICES:
        raise MalformedInputError(NODE_REGISTER, text, f"lists more than {MAX_NODE_DEVICES} devices")
    return tuple(_legacy_device(record) for record in records)


def _legacy_device(record: str) -> DeviceInfo:
    fields = record.split(",", 9)  # a tenth part means too many fields
    if len(fields) not in (7, 9):
        count = f"{len(fields)}" if len(fields) < 10 else "more than 9"
        raise MalformedInputError(NODE_REGISTER, record, f"legacy device record has {count} fields, expected 7 or 9")
    if not fields[0]:
        raise MalformedInputError(NODE_REGISTER, record, "legacy device record has an empty UUID")
    if len(fields[0]) > MAX_UUID_CHARS or len(fields[4]) > MAX_TYPE_CHARS:
        raise MalformedInputError(
            NODE_REGISTER, record, f"UUID or type is longer than {max(MAX_UUID_CHARS, MAX_TYPE_CHARS)} characters"
        )
    health_text = fields[6].strip().lower()
    if health_text not in ("true", "false"):
        raise MalformedInputError(NODE_REGISTER, record, f"health is {fields[6][:32]!r}, expected true or false")
    nine = len(fields) == 9
    if nine and len(fields[8]) > MAX_TYPE_CHARS:
        raise MalformedInputError(NODE_REGISTER, record, f"mode is longer than {MAX_TYPE_CHARS} characters")
    return DeviceInfo(
        id=fields[0],
        count=_legacy_int(fields[1], "count", record),
        devmem=_legacy_int(fields[2], "devmem", record),
        devcore=_legacy_int(fields[3], "devcore", record),
        type=fields[4],
        numa=_legacy_int(fields[5], "numa", record, low=-INT32_MAX - 1),
        health=health_text == "true",
        index=_legacy_int(fields[7], "index", record) if nine else 0,
        # HAMi's DecodeNodeDevices defaults the mode only for 7 fields: an empty 9th field stays "", which
        # every nvidia.com/vgpu-mode request matches (HAMi tests strings.Contains(request, mode)).
        mode=fields[8] if nine else MODE_HAMI_CORE,
    )


def _legacy_int(text: str, name: str, record: str, *, low: int = 0) -> int:
    number = parse_int(text.strip(), low=low, high=INT32_MAX, signed=low < 0)
    if number is None:
        raise MalformedInputError(
            NODE_REGISTER, record, f"{name} is {text[:32]!r}, expected an integer within {low}..{INT32_MAX}"
        )
    return number


def model_type_name(nvml_name: str) -> str:
    """HAMi's ``type`` for a model: NVML's name, prefixed with ``NVIDIA-`` unless it starts with NVIDIA."""
    return nvml_name if nvml_name.upper().startswith("NVIDIA") else f"NVIDIA-{nvml_name}"
