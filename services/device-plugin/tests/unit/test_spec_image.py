"""The spec's bytes as hamicore reads them (spec_layout.h, version 1.1): the flags word, oversubscription among them,
and the version a 1.0 library still accepts."""

from __future__ import annotations

import struct

import pytest
from hami_device_plugin.core import spec
from hami_device_plugin.core.region import RegionDevice, RegionSpec

G0 = "GPU-00000000-0000-4000-8000-000000000000"
REGION = RegionSpec(devices=(RegionDevice(G0, 1 << 30, 30),))
FLAGS_OFFSET = 32  # struct hami_spec.flags (a static assert in spec_layout.h fixes it)


def _flags(image: bytes) -> int:
    flags: int = struct.unpack_from("<I", image, FLAGS_OFFSET)[0]
    return flags


def test_the_flag_values_are_the_headers_abi() -> None:
    # A change of any of these breaks every libvgpu.so already installed on nodes.
    assert (spec.FLAG_ALLOW_DISABLE_CONTROL, spec.FLAG_VULKAN, spec.FLAG_OVERSUBSCRIBE) == (1, 2, 4)
    assert (spec.VERSION_MAJOR, spec.VERSION_MINOR) == (1, 1)


@pytest.mark.parametrize(
    ("allow", "vulkan", "oversubscribe", "flags"),
    [(False, False, False, 0), (False, False, True, 4), (True, True, False, 3), (True, True, True, 7)],
)
def test_oversubscription_is_a_bit_of_the_flags_word(
    allow: bool, vulkan: bool, oversubscribe: bool, flags: int
) -> None:
    image = spec.build_spec(REGION, "/usr/local/vgpu/c.cache", allow_disable_control=allow, vulkan=vulkan,
                            oversubscribe=oversubscribe)  # fmt: skip
    assert _flags(image) == flags
    decoded = spec.parse_spec(image)
    assert (decoded.allow_disable_control, decoded.vulkan, decoded.oversubscribe) == (allow, vulkan, oversubscribe)


def test_without_oversubscription_the_spec_is_a_1_0_spec_but_for_the_minor() -> None:
    """Only the version's minor (offset 12) tells a 1.1 spec without the flag from what 1.0 wrote: a 1.0 library
    (which accepts any minor of its major of at least its size) reads it unchanged."""
    image = spec.build_spec(REGION, "/usr/local/vgpu/c.cache", allow_disable_control=False, vulkan=False)
    magic, major, minor, size = struct.unpack_from("<QIII", image, 0)
    assert (magic, major, minor, size) == (spec.MAGIC, 1, 1, len(image))
    assert _flags(image) == 0
    assert not spec.parse_spec(image).oversubscribe
