"""The per-container enforcement spec: what the plugin decided for a container, in the form hamicore reads.

The plugin writes it at Allocate outside the container's writable directory and mounts it read-only at
:data:`CONTAINER_PATH`, a fixed path (not named by any environment variable, which the pod controls). When it is
there, hamicore's libvgpu.so and libvgpu_vk.so take the memory limits, SM shares, priority, core policy, GPU set and
the path of the counters region and whether memory is oversubscribed (:data:`FLAG_OVERSUBSCRIBE`) from it, ignore
contradicting environment variables, and honour ``CUDA_DISABLE_CONTROL`` only when :data:`FLAG_ALLOW_DISABLE_CONTROL`
is set. It is trusted only as a read-only mount
of its own: a file of the image or one the container wrote at that path is refused (and hamicore fails closed).

The layout is hamicore/src/accounting/spec_layout.h (version 1.1, little-endian), through :mod:`.layout`. A reader
accepts any minor of its major whose size is at least its own (newer minors append or use reserved bytes, zero
meaning "not set"); another major is refused. 1.1 added :data:`FLAG_OVERSUBSCRIBE`, which a 1.0 library ignores
(it reads ``CUDA_OVERSUBSCRIBE``, which Allocate sets as well).
"""

from __future__ import annotations

import dataclasses
from typing import Final

from hami_device_plugin.core import layout
from hami_device_plugin.core import region as region_core
from hami_device_plugin.core.layout import SPEC, SPEC_DEVICE
from hami_device_plugin.core.region import CORE_POLICIES, MAX_DEVICES, RegionDevice, RegionSpec, uuid_bytes

CONTAINER_PATH: Final = layout.text("HAMI_SPEC_PATH")
MAGIC: Final = layout.constant("HAMI_SPEC_MAGIC")  # bytes "HAMISPEC" little-endian
VERSION_MAJOR: Final = layout.constant("HAMI_SPEC_VERSION_MAJOR")
VERSION_MINOR: Final = layout.constant("HAMI_SPEC_VERSION_MINOR")
REGION_PATH_BYTES: Final = layout.constant("HAMI_SPEC_REGION_PATH_BYTES")
HEADER_SIZE: Final = SPEC.offset("region_path")
DEVICE_SIZE: Final = SPEC_DEVICE.size
DEVICES_OFFSET: Final = SPEC.offset("devices")
SPEC_SIZE: Final = SPEC.size
FLAG_ALLOW_DISABLE_CONTROL: Final = layout.constant("HAMI_SPEC_ALLOW_DISABLE_CONTROL")
FLAG_VULKAN: Final = layout.constant("HAMI_SPEC_VULKAN")
FLAG_OVERSUBSCRIBE: Final = layout.constant("HAMI_SPEC_OVERSUBSCRIBE")
DEVICE_UUID_VALID: Final = layout.constant("HAMI_SPEC_UUID_VALID")

_HEADER: Final = SPEC.packer("magic", "default_sm_limit_percent")
_DEVICE: Final = SPEC_DEVICE.packer("uuid", "flags")


class SpecFormatError(ValueError):
    """The bytes are not a spec this reader understands; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerSpec:
    """A decoded spec (what hamicore enforces for the container)."""

    region: RegionSpec
    region_path: str
    allow_disable_control: bool
    vulkan: bool
    oversubscribe: bool = False


def build_spec(
    region: RegionSpec, region_path: str, *, allow_disable_control: bool, vulkan: bool, oversubscribe: bool = False
) -> bytes:
    """The spec image for a container: ``region`` gives the limits (as :func:`~.region.build_region` writes them
    for libraries older than the spec), ``region_path`` the counters region as the container sees it,
    ``oversubscribe`` whether a ``cuMemAlloc`` the card refuses spills to managed memory (memory-scaling > 1)."""
    raw_path = region_path.encode()
    if not region_path.startswith("/") or len(raw_path) >= REGION_PATH_BYTES or b"\0" in raw_path:
        raise ValueError(f"region path {region_path!r} must be absolute and shorter than {REGION_PATH_BYTES} bytes")
    image = bytearray(SPEC_SIZE)
    flags = (
        (FLAG_ALLOW_DISABLE_CONTROL if allow_disable_control else 0)
        | (FLAG_VULKAN if vulkan else 0)
        | (FLAG_OVERSUBSCRIBE if oversubscribe else 0)
    )
    _HEADER.pack_into(
        image, 0, MAGIC, VERSION_MAJOR, VERSION_MINOR, SPEC_SIZE, len(region.devices), region.task_priority,
        region_core.core_policy_code(region.core_policy), flags, region_core.sm_limit(region.default_sm_limit_percent),
    )  # fmt: skip
    image[HEADER_SIZE : HEADER_SIZE + len(raw_path)] = raw_path
    for i, device in enumerate(region.devices):
        raw = uuid_bytes(device.uuid)
        _DEVICE.pack_into(
            image,
            DEVICES_OFFSET + i * DEVICE_SIZE,
            raw or bytes(16),
            device.limit_bytes,
            region_core.sm_limit(device.sm_limit_percent),
            DEVICE_UUID_VALID if raw else 0,
        )
    return bytes(image)


def parse_spec(data: bytes) -> ContainerSpec:
    """Decode a spec image (for tests and tools; hamicore has its own reader in C). GPUs without a ``GPU-`` UUID
    come back as ``""``."""
    if len(data) < SPEC_SIZE:
        raise SpecFormatError(f"spec has {len(data)} bytes, version {VERSION_MAJOR} needs {SPEC_SIZE}")
    magic, major, minor, size, count, priority, policy, flags, default_sm = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise SpecFormatError("not a hamicore spec (bad magic)")
    if major != VERSION_MAJOR or size != len(data):
        raise SpecFormatError(f"spec version {major}.{minor} of {size} bytes; this reader reads {VERSION_MAJOR}.x")
    if not 0 < count <= MAX_DEVICES or policy not in CORE_POLICIES:
        raise SpecFormatError(f"spec names {count} GPUs and core policy {policy}")
    raw_path = data[HEADER_SIZE:DEVICES_OFFSET].split(b"\0", 1)[0]
    devices = []
    for i in range(count):
        raw, limit, sm, device_flags = _DEVICE.unpack_from(data, DEVICES_OFFSET + i * DEVICE_SIZE)
        uuid = region_core.uuid_text(raw) if device_flags & DEVICE_UUID_VALID else ""
        devices.append((uuid, limit, sm))
    try:
        region = RegionSpec(
            devices=tuple(RegionDevice(u, limit, sm) for u, limit, sm in devices),
            default_sm_limit_percent=default_sm,
            task_priority=priority,
            core_policy=CORE_POLICIES[policy],
        )
    except ValueError as exc:
        raise SpecFormatError(str(exc)) from exc
    return ContainerSpec(
        region=region,
        region_path=raw_path.decode(errors="replace"),
        allow_disable_control=bool(flags & FLAG_ALLOW_DISABLE_CONTROL),
        vulkan=bool(flags & FLAG_VULKAN),
        oversubscribe=bool(flags & FLAG_OVERSUBSCRIBE),
    )
