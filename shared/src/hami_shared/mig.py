"""MIG wire formats shared by the extender and the device plugin.

Two documents:

* ``knownMigGeometries`` (HAMi's ``hami-scheduler-device`` ConfigMap, v2.5+): per GPU model, the geometries an
  operator allows, each a list of ``{name, memory, count}`` (profile name, its memory in MiB, how many instances of
  it the geometry holds). :func:`parse_known_geometries` reads it from parsed YAML/JSON and refuses what is wrong
  with the key's path.
* ``hami.io/vgpu-mig-allocations`` (HAMi HEAD, ``pkg/device/nvidia/mig_allocations.go``): the pod annotation the
  extender writes with one reservation per MIG device (container index, device index, parent GPU UUID, profile,
  placement) and the device plugin completes with the instance's runtime identity (MIG UUID, GPU instance ID,
  compute instance ID). :func:`encode_mig_allocations` writes HAMi's JSON byte for byte (Go's struct order, the
  runtime fields ``omitempty``); :func:`decode_mig_allocations` is total and bounded and applies HAMi's own checks
  (complete reservations, all-or-none runtime identity, one entry per container and device).

The allocations annotation is written by our services only (the webhook refuses a pod that sets it), but it is
read back from the API, so it is decoded as untrusted input.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import yaml

from hami_shared.bounds import (
    INT32_MAX,
    KIB,
    MAX_NODE_DEVICES,
    MAX_POD_CONTAINERS,
    MAX_TYPE_CHARS,
    MAX_UUID_CHARS,
    describe,
)
from hami_shared.errors import MalformedInputError
from hami_shared.names import MIG_ALLOCATIONS

MAX_GEOMETRY_MODELS: Final = 64  # model entries of knownMigGeometries (HAMi's chart ships about ten)
MAX_MODEL_NAMES: Final = 32  # names of one model entry
MAX_GEOMETRIES: Final = 64  # allowed geometries of one model (an H100 has about 20 useful ones)
MAX_GEOMETRY_ENTRIES: Final = 8  # profiles of one geometry (at most 7 compute slices, so 7 distinct profiles)
MAX_INSTANCES: Final = 8  # instances a GPU holds (7 compute slices)
# Memory slices of a card: 8 on A100/H100; later cards report more (HAMi's docs show a 1g.24gb at start 9).
MAX_MEMORY_SLICES: Final = 32
MAX_ALLOCATIONS_CHARS: Final = 64 * KIB  # one entry is about 250 characters
MAX_ALLOCATIONS: Final = MAX_NODE_DEVICES  # MIG devices of one pod
UINT32_MAX: Final = 2**32 - 1


class MigConfigError(ValueError):
    """``knownMigGeometries`` is wrong; the message names the key path and what to write instead."""


@dataclasses.dataclass(frozen=True, slots=True)
class GeometryEntry:
    """``count`` instances of profile ``name`` (``memory_mib`` each) in a geometry."""

    name: str
    memory_mib: int
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class ModelGeometries:
    """The geometries allowed on GPUs whose model matches one of ``models``."""

    models: tuple[str, ...]
    geometries: tuple[tuple[GeometryEntry, ...], ...]


def parse_known_geometries(raw: object, where: str = "knownMigGeometries") -> tuple[ModelGeometries, ...]:
    """``knownMigGeometries`` (parsed YAML/JSON: a list of ``{models, allowedGeometries}``) as values.

    Raises :class:`MigConfigError` naming the path of the first bad key (``knownMigGeometries[1].allowedGeometries
    [0][2].memory: expected an integer from 1 to 2147483647, got "10G"``). Unknown keys of an entry are refused too:
    a misspelt ``allowedGeometry`` would otherwise silently allow nothing.
    """
    items = _list(raw, where, MAX_GEOMETRY_MODELS)
    out: list[ModelGeometries] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        entry = _mapping(item, at, {"models", "allowedGeometries"})
        models = tuple(
            _text(m, f"{at}.models[{j}]")
            for j, m in enumerate(_list(entry.get("models"), f"{at}.models", MAX_MODEL_NAMES))
        )
        if not models:
            raise MigConfigError(f'{at}.models: list at least one GPU model name, e.g. ["A100-SXM4-40GB"]')
        geometries = tuple(
            _geometry(g, f"{at}.allowedGeometries[{j}]")
            for j, g in enumerate(_list(entry.get("allowedGeometries"), f"{at}.allowedGeometries", MAX_GEOMETRIES))
        )
        out.append(ModelGeometries(models=models, geometries=geometries))
    return tuple(out)


MAX_GEOMETRIES_TEXT_CHARS: Final = 256 * KIB


def parse_known_geometries_text(text: str, where: str = "knownMigGeometries") -> tuple[ModelGeometries, ...]:
    """:func:`parse_known_geometries` of YAML or JSON text (a setting, the ConfigMap's value); either the list
    itself or a document with a ``knownMigGeometries`` key (HAMi's ``device-config.yaml`` ``nvidia:`` section)."""
    if len(text) > MAX_GEOMETRIES_TEXT_CHARS:
        raise MigConfigError(f"{where}: {len(text)} characters, more than {MAX_GEOMETRIES_TEXT_CHARS}")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MigConfigError(f"{where}: not YAML or JSON ({str(exc)[:200]})") from None
    if isinstance(document, Mapping) and "knownMigGeometries" in document:
        document = document["knownMigGeometries"]
    return parse_known_geometries(document, where)


def _geometry(raw: object, at: str) -> tuple[GeometryEntry, ...]:
    entries: list[GeometryEntry] = []
    for k, item in enumerate(_list(raw, at, MAX_GEOMETRY_ENTRIES)):
        here = f"{at}[{k}]"
        entry = _mapping(item, here, {"name", "memory", "count"})
        entries.append(
            GeometryEntry(
                name=_text(entry.get("name"), f"{here}.name"),
                memory_mib=_number(entry.get("memory"), f"{here}.memory", INT32_MAX),
                count=_number(entry.get("count"), f"{here}.count", MAX_INSTANCES),
            )
        )
    if not entries:
        raise MigConfigError(f"{at}: a geometry lists at least one {{name, memory, count}}")
    if len({e.name for e in entries}) != len(entries):
        raise MigConfigError(f"{at}: a profile appears twice; give each profile once with its total count")
    if sum(e.count for e in entries) > MAX_INSTANCES:
        raise MigConfigError(f"{at}: more than {MAX_INSTANCES} instances in one geometry; no GPU holds that many")
    return tuple(entries)


def _list(raw: object, at: str, limit: int) -> list[Any]:
    if not isinstance(raw, list):
        raise MigConfigError(f"{at}: expected a list, got {describe(raw)}")
    if len(raw) > limit:
        raise MigConfigError(f"{at}: {len(raw)} items, more than the {limit} allowed")
    return raw


def _mapping(raw: object, at: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise MigConfigError(f"{at}: expected a mapping with keys {sorted(keys)}, got {describe(raw)}")
    unknown = sorted(str(k)[:64] for k in raw if k not in keys)
    if unknown:
        raise MigConfigError(f"{at}: unknown keys {unknown}; the keys are {sorted(keys)}")
    return raw


def _text(raw: object, at: str) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > MAX_TYPE_CHARS:
        raise MigConfigError(
            f"{at}: expected a non-empty string of at most {MAX_TYPE_CHARS} characters, got {describe(raw)}"
        )
    return raw


def _number(raw: object, at: str, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= high:
        raise MigConfigError(f"{at}: expected an integer from 1 to {high}, got {describe(raw)}")
    return raw


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MigAllocation:
    """One reserved MIG device of a pod; the runtime identity is None until the device plugin created it."""

    container_index: int
    device_index: int
    gpu_uuid: str
    profile: str
    start: int
    size: int
    mig_uuid: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None

    @property
    def realized(self) -> bool:
        return self.mig_uuid is not None

    def with_identity(self, mig_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> MigAllocation:
        return dataclasses.replace(
            self, mig_uuid=mig_uuid, gpu_instance_id=gpu_instance_id, compute_instance_id=compute_instance_id
        )


def encode_mig_allocations(allocations: Sequence[MigAllocation]) -> str:
    """HAMi's JSON: Go's field order, ``placement`` always with ``start`` and ``size``, runtime fields omitted until
    known."""
    out: list[dict[str, Any]] = []
    for a in allocations:
        item: dict[str, Any] = {
            "containerIndex": a.container_index,
            "deviceIndex": a.device_index,
            "gpuUUID": a.gpu_uuid,
            "profile": a.profile,
            "placement": {"start": a.start, "size": a.size},
        }
        if a.mig_uuid:
            item["migUUID"] = a.mig_uuid
        if a.gpu_instance_id is not None:
            item["gpuInstanceID"] = a.gpu_instance_id
        if a.compute_instance_id is not None:
            item["computeInstanceID"] = a.compute_instance_id
        out.append(item)
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def decode_mig_allocations(value: str) -> tuple[MigAllocation, ...]:
    """The reservations in ``value`` ("" = none). Raises :class:`MalformedInputError` naming what is wrong."""
    what = MIG_ALLOCATIONS
    if not value:
        return ()
    if len(value) > MAX_ALLOCATIONS_CHARS:
        raise MalformedInputError(
            what, value[:64], f"is {len(value)} characters long, more than {MAX_ALLOCATIONS_CHARS}"
        )
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise MalformedInputError(what, value[:64], f"is not JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, list) or len(doc) > MAX_ALLOCATIONS:
        raise MalformedInputError(what, value[:64], f"expected a JSON list of at most {MAX_ALLOCATIONS} reservations")
    out: list[MigAllocation] = []
    seen: set[tuple[int, int]] = set()
    for i, item in enumerate(doc):
        allocation = _allocation(item, f"{what}[{i}]")
        key = (allocation.container_index, allocation.device_index)
        if key in seen:
            raise MalformedInputError(what, value[:64], f"two reservations for container {key[0]} device {key[1]}")
        seen.add(key)
        out.append(allocation)
    return tuple(out)


def _allocation(item: object, at: str) -> MigAllocation:
    if not isinstance(item, dict):
        raise MalformedInputError(at, describe(item), "expected a JSON object")
    placement = item.get("placement")
    if not isinstance(placement, dict):
        raise MalformedInputError(f"{at}.placement", describe(placement), 'expected {"start": n, "size": n}')
    identity = (item.get("migUUID"), item.get("gpuInstanceID"), item.get("computeInstanceID"))
    present = sum(v is not None and v != "" for v in identity)
    if present not in (0, 3):
        raise MalformedInputError(
            at, describe(item), "has a partial runtime identity (migUUID, gpuInstanceID, computeInstanceID)"
        )
    size = _int_field(placement.get("size"), f"{at}.placement.size", MAX_MEMORY_SLICES)
    if size == 0:
        raise MalformedInputError(f"{at}.placement.size", "0", "a placement spans at least one memory slice")
    return MigAllocation(
        container_index=_int_field(item.get("containerIndex"), f"{at}.containerIndex", MAX_POD_CONTAINERS - 1),
        device_index=_int_field(item.get("deviceIndex"), f"{at}.deviceIndex", MAX_NODE_DEVICES - 1),
        gpu_uuid=_str_field(item.get("gpuUUID"), f"{at}.gpuUUID", MAX_UUID_CHARS),
        profile=_str_field(item.get("profile"), f"{at}.profile", MAX_TYPE_CHARS),
        start=_int_field(placement.get("start", 0), f"{at}.placement.start", MAX_MEMORY_SLICES - 1),
        size=size,
        mig_uuid=_str_field(identity[0], f"{at}.migUUID", MAX_UUID_CHARS) if present else None,
        gpu_instance_id=_int_field(identity[1], f"{at}.gpuInstanceID", UINT32_MAX) if present else None,
        compute_instance_id=_int_field(identity[2], f"{at}.computeInstanceID", UINT32_MAX) if present else None,
    )


def _int_field(raw: object, at: str, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= high:
        raise MalformedInputError(at, describe(raw), f"expected an integer from 0 to {high}")
    return raw


def _str_field(raw: object, at: str, limit: int) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > limit:
        raise MalformedInputError(at, describe(raw), f"expected a non-empty string of at most {limit} characters")
    return raw


def geometries_for_type(device_type: str, known: Sequence[ModelGeometries]) -> tuple[tuple[GeometryEntry, ...], ...]:
    """The geometries allowed on a GPU whose register ``type`` is ``device_type`` (e.g. ``NVIDIA A100-SXM4-40GB``).

    HAMi's rule (``pkg/device/nvidia/device.go GetNodeDevices``): the first entry of ``known``, in order, with a
    model name that is a substring of the type (case-sensitive, as Go's ``strings.Contains``) gives all the
    geometries; a type no entry matches allows none (the card takes no MIG pod). Put specific names before
    general ones when one contains the other.
    """
    for entry in known:
        if any(model in device_type for model in entry.models):
            return entry.geometries
    return ()


def _g(*entries: tuple[str, int, int]) -> list[dict[str, Any]]:
    return [{"name": name, "memory": memory, "count": count} for name, memory, count in entries]


# The defaults of knownMigGeometries. A30 and A100 are HAMi's chart defaults (seed 004, v2.5) with two corrections:
# NVML's own name of the A100 80GB PCIe ("NVIDIA A100 80GB PCIe"), which HAMi's spellings miss, and the A100 80GB's
# whole-card profile under its real name, 7g.80gb, with the card's 81920 MiB (HAMi's "7g.79gb", 80896 names no
# profile the driver offers, so that geometry could never be placed, and a whole-card request would not fit it); the
# H100
# and H200 entries follow the profiles of NVIDIA's MIG user guide (7 compute slices, 8 memory slices; profile
# memory as the profile's name gives it, in MiB) with the same shapes: all small, the 2g mix, two halves, a 4g+3g
# split and the whole card. The register type is NVML's name (``NVIDIA H100 80GB HBM3``, ``NVIDIA H100 PCIe``,
# ``NVIDIA H100 NVL``, ``NVIDIA H200``...), matched by substring (:func:`geometries_for_type`).
def default_known_geometries_doc() -> list[dict[str, Any]]:
    """The defaults as the document an operator writes (YAML/JSON shape), e.g. to start a ConfigMap; a fresh
    copy each call."""
    return [
        {
            "models": ["A30"],
            "allowedGeometries": [_g(("1g.6gb", 6144, 4)), _g(("2g.12gb", 12288, 2)), _g(("4g.24gb", 24576, 1))],
        },
        {
            "models": ["A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB"],
            "allowedGeometries": [
                _g(("1g.5gb", 5120, 7)),
                _g(("2g.10gb", 10240, 3), ("1g.5gb", 5120, 1)),
                _g(("3g.20gb", 20480, 2)),
                _g(("7g.40gb", 40960, 1)),
            ],
        },
        {
            "models": ["A100-SXM4-80GB", "A100-80GB-PCIe", "A100-PCIE-80GB", "A100 80GB PCIe"],
            "allowedGeometries": [
                _g(("1g.10gb", 10240, 7)),
                _g(("2g.20gb", 20480, 3), ("1g.10gb", 10240, 1)),
                _g(("3g.40gb", 40960, 2)),
                _g(("7g.80gb", 81920, 1)),
            ],
        },
        {
            "models": ["H100 NVL", "H100-NVL", "H100 94GB", "H100-94GB"],
            "allowedGeometries": [
                _g(("1g.12gb", 12288, 7)),
                _g(("1g.24gb", 24576, 4)),
                _g(("2g.24gb", 24576, 3), ("1g.12gb", 12288, 1)),
                _g(("3g.47gb", 48128, 2)),
                _g(("4g.47gb", 48128, 1), ("3g.47gb", 48128, 1)),
                _g(("7g.94gb", 96256, 1)),
            ],
        },
        {
            "models": ["H100 96GB", "H100-96GB", "GH200 480GB", "GH200-480GB"],
            "allowedGeometries": [
                _g(("1g.12gb", 12288, 7)),
                _g(("1g.24gb", 24576, 4)),
                _g(("2g.24gb", 24576, 3), ("1g.12gb", 12288, 1)),
                _g(("3g.48gb", 49152, 2)),
                _g(("4g.48gb", 49152, 1), ("3g.48gb", 49152, 1)),
                _g(("7g.96gb", 98304, 1)),
            ],
        },
        {
            "models": ["H100 80GB", "H100-SXM5-80GB", "H100 PCIe", "H100-PCIE-80GB", "H800"],
            "allowedGeometries": [
                _g(("1g.10gb", 10240, 7)),
                _g(("1g.20gb", 20480, 4)),
                _g(("2g.20gb", 20480, 3), ("1g.10gb", 10240, 1)),
                _g(("3g.40gb", 40960, 2)),
                _g(("4g.40gb", 40960, 1), ("3g.40gb", 40960, 1)),
                _g(("7g.80gb", 81920, 1)),
            ],
        },
        {
            "models": ["H200", "GH200 144G"],
            "allowedGeometries": [
                _g(("1g.18gb", 18432, 7)),
                _g(("1g.35gb", 35840, 4)),
                _g(("2g.35gb", 35840, 3), ("1g.18gb", 18432, 1)),
                _g(("3g.71gb", 72704, 2)),
                _g(("4g.71gb", 72704, 1), ("3g.71gb", 72704, 1)),
                _g(("7g.141gb", 144384, 1)),
            ],
        },
    ]


DEFAULT_KNOWN_GEOMETRIES: Final = parse_known_geometries(default_known_geometries_doc(), "DEFAULT_KNOWN_GEOMETRIES")
