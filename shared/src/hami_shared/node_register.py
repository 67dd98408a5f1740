"""Codec of the node inventory annotation ``hami.io/node-nvidia-register``.

HAMi v2.8+ writes a JSON array with one object per physical GPU; every field is
``omitempty`` in Go, so zero values and ``false`` are *absent* (an absent ``health``
means unhealthy). Releases up to v2.7 wrote a colon-terminated list of comma-separated
records with 7 (<= v2.4) or 9 (v2.5-v2.7) fields; we decode that too so a mixed-version
cluster can be read, but we only ever write JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

from hami_shared.errors import MalformedInputError
from hami_shared.names import NODE_REGISTER

MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODE_MPS: Final = "mps"
KNOWN_MODES: Final = frozenset({MODE_HAMI_CORE, MODE_MIG, MODE_MPS})

_INT32_MAX: Final = 2**31 - 1
_T = TypeVar("_T")


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


# JSON key order follows HAMi's Go struct so our output is byte-identical to theirs.
def _device_to_json(device: DeviceInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"id": device.id}
    if device.index:
        out["index"] = device.index
    if device.count:
        out["count"] = device.count
    if device.devmem:
        out["devmem"] = device.devmem
    if device.devcore:
        out["devcore"] = device.devcore
    if device.type:
        out["type"] = device.type
    if device.numa:
        out["numa"] = device.numa
    if device.mode:
        out["mode"] = device.mode
    if device.mig_profiles:
        out["migProfiles"] = [_profile_to_json(p) for p in device.mig_profiles]
    if device.health:
        out["health"] = True
    return out


def _profile_to_json(profile: MigProfile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if profile.name:
        out["name"] = profile.name
    if profile.memory_mb:
        out["memoryMB"] = profile.memory_mb
    if profile.core:
        out["core"] = profile.core
    if profile.slice_count:
        out["sliceCount"] = profile.slice_count
    if profile.placements:
        out["placements"] = [{k: v for k, v in (("start", p.start), ("size", p.size)) if v} for p in profile.placements]
    return out


def encode_node_devices(devices: Sequence[DeviceInfo]) -> str:
    """Encode the inventory in HAMi v2.8+ JSON (compact, omitempty)."""
    return json.dumps([_device_to_json(d) for d in devices], separators=(",", ":"), ensure_ascii=False)


def decode_node_devices(value: str) -> tuple[DeviceInfo, ...]:
    """Decode either form of the annotation: JSON (v2.8+) or the legacy colon/comma form.

    Raises :class:`MalformedInputError` naming the offending record.
    """
    if value.lstrip()[:1] in ("[", "{"):
        return decode_node_devices_json(value)
    return decode_node_devices_legacy(value)


def decode_node_devices_json(value: str) -> tuple[DeviceInfo, ...]:
    """Decode the HAMi v2.8+ JSON form. Unknown keys are ignored, as Go does."""
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise MalformedInputError(NODE_REGISTER, value, f"not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise MalformedInputError(NODE_REGISTER, value, "expected a JSON array of devices")
    return tuple(_device_from_json(item) for item in raw)


def _device_from_json(item: Any) -> DeviceInfo:
    record = _json_record(item)
    if not isinstance(item, Mapping):
        raise MalformedInputError(NODE_REGISTER, record, "each device must be a JSON object")
    device_id = _get(item, "id", str, record, "")
    if not device_id:
        raise MalformedInputError(NODE_REGISTER, record, "device has no 'id' (GPU UUID)")
    profiles_raw = _get(item, "migProfiles", list, record, [])
    return DeviceInfo(
        id=device_id,
        index=_get_int(item, "index", record),
        count=_get_int(item, "count", record),
        devmem=_get_int(item, "devmem", record),
        devcore=_get_int(item, "devcore", record),
        type=_get(item, "type", str, record, ""),
        numa=_get_int(item, "numa", record),
        mode=_get(item, "mode", str, record, ""),
        mig_profiles=tuple(_profile_from_json(p, record) for p in profiles_raw),
        health=_get(item, "health", bool, record, False),
    )


def _profile_from_json(item: Any, record: str) -> MigProfile:
    if not isinstance(item, Mapping):
        raise MalformedInputError(NODE_REGISTER, record, "each MIG profile must be a JSON object")
    placements_raw = _get(item, "placements", list, record, [])
    placements = []
    for p in placements_raw:
        if not isinstance(p, Mapping):
            raise MalformedInputError(NODE_REGISTER, record, "each MIG placement must be a JSON object")
        placements.append(MigPlacement(start=_get_int(p, "start", record), size=_get_int(p, "size", record)))
    return MigProfile(
        name=_get(item, "name", str, record, ""),
        memory_mb=_get_int(item, "memoryMB", record),
        core=_get_int(item, "core", record),
        slice_count=_get_int(item, "sliceCount", record),
        placements=tuple(placements),
    )


def _json_record(item: Any) -> str:
    try:
        return json.dumps(item, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return repr(item)


def _get(item: Mapping[str, Any], key: str, kind: type[_T], record: str, default: _T) -> _T:
    value = item.get(key)
    if value is None:
        return default
    # bool is a subclass of int in Python but not in JSON: keep them apart.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise MalformedInputError(NODE_REGISTER, record, f"field {key!r} must be {_kind_name(kind)}")
    return value


def _get_int(item: Mapping[str, Any], key: str, record: str) -> int:
    value = _get(item, key, int, record, 0)
    if not -_INT32_MAX - 1 <= value <= _INT32_MAX:
        raise MalformedInputError(NODE_REGISTER, record, f"field {key!r} is out of the int32 range")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list"}.get(kind, kind.__name__)


def decode_node_devices_legacy(value: str) -> tuple[DeviceInfo, ...]:
    """Decode the pre-v2.8 form: records terminated by ``:``, fields separated by ``,``.

    7 fields (<= v2.4): uuid,count,devmem,devcore,type,numa,health
    9 fields (v2.5-v2.7): the same plus index,mode. Mode defaults to ``hami-core``.
    """
    if ":" not in value:
        raise MalformedInputError(NODE_REGISTER, value, "neither a JSON array nor a legacy ':'-terminated device list")
    devices = []
    for record in value.split(":"):
        if not record:
            continue
        fields = record.split(",")
        if len(fields) not in (7, 9):
            raise MalformedInputError(
                NODE_REGISTER, record, f"legacy device record has {len(fields)} fields, expected 7 or 9"
            )
        if not fields[0]:
            raise MalformedInputError(NODE_REGISTER, record, "legacy device record has an empty UUID")
        health_text = fields[6].strip().lower()
        if health_text not in ("true", "false"):
            raise MalformedInputError(NODE_REGISTER, record, f"health is {fields[6]!r}, expected true or false")
        devices.append(
            DeviceInfo(
                id=fields[0],
                count=_legacy_int(fields[1], "count", record),
                devmem=_legacy_int(fields[2], "devmem", record),
                devcore=_legacy_int(fields[3], "devcore", record),
                type=fields[4],
                numa=_legacy_int(fields[5], "numa", record),
                health=health_text == "true",
                index=_legacy_int(fields[7], "index", record) if len(fields) == 9 else 0,
                mode=(fields[8] or MODE_HAMI_CORE) if len(fields) == 9 else MODE_HAMI_CORE,
            )
        )
    if not devices:
        raise MalformedInputError(NODE_REGISTER, value, "legacy device list holds no device record")
    return tuple(devices)


def _legacy_int(text: str, name: str, record: str) -> int:
    stripped = text.strip()
    if not stripped.lstrip("-").isdigit() or not stripped.isascii():
        raise MalformedInputError(NODE_REGISTER, record, f"{name} is {text!r}, expected an integer")
    number = int(stripped)
    if not -_INT32_MAX - 1 <= number <= _INT32_MAX:
        raise MalformedInputError(NODE_REGISTER, record, f"{name} is out of the int32 range")
    return number


def model_type_name(nvml_name: str) -> str:
    """HAMi's ``type`` for a model: NVML's name, prefixed with ``NVIDIA-`` unless it starts with NVIDIA."""
    return nvml_name if nvml_name.upper().startswith("NVIDIA") else f"NVIDIA-{nvml_name}"
