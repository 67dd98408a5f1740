"""The region image the plugin publishes at Allocate, read back with the monitor's parser."""

from __future__ import annotations

import struct

import pytest
from hami_device_plugin.core import region
from hami_device_plugin.core.region import RegionDevice, RegionSpec, build_region, parse_region

G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
G1 = "GPU-fa4e0000-0000-4000-8000-000000000001"
MIG = "MIG-3f1c2a9e-0000-5000-8000-000000000000"


def test_image_reads_back_as_what_the_spec_says() -> None:
    spec = RegionSpec(
        devices=(RegionDevice(G1, 300 << 20, 30, total_bytes=80 << 30), RegionDevice(G0, 200 << 20, 100)),
        default_sm_limit_percent=30,
        task_priority=0,
        core_policy="force",
    )
    image = build_region(spec, created_unix_ns=1_700_000_000_000_000_000)
    assert len(image) == region.REGION_SIZE
    snapshot = parse_region(image)
    assert snapshot.version == (1, 3)
    assert (snapshot.task_priority, snapshot.core_policy) == (0, "force")
    assert [(d.uuid, d.limit_bytes, d.sm_limit_percent, d.total_bytes, d.used_bytes) for d in snapshot.devices] == [
        (G1, 300 << 20, 30, 80 << 30, 0),
        (G0, 200 << 20, 0, 0, 0),  # 100 % is no limit, as hamicore reads CUDA_DEVICE_SM_LIMIT_1=100
    ]
    assert snapshot.processes == ()
    assert struct.unpack_from("<I", image, region.DISCOVERY_STATE_OFFSET)[0] == region.DISCOVERY_DONE
    # Indices beyond the container's GPUs: no memory limit, CUDA_DEVICE_SM_LIMIT's percentage.
    spare = region.DEVICES_OFFSET + 5 * region.DEVICE_RECORD_SIZE
    assert struct.unpack_from("<Q", image, spare + 8)[0] == 0
    assert struct.unpack_from("<I", image, spare + region.LIMITER_OFFSET)[0] == 30


def test_a_gpu_without_a_gpu_uuid_leaves_discovery_to_hamicore() -> None:
    image = build_region(RegionSpec(devices=(RegionDevice(G0, 1 << 20, 0), RegionDevice(MIG, 1 << 20, 0))), 1)
    snapshot = parse_region(image)
    assert [d.uuid for d in snapshot.devices] == [G0, None]
    assert struct.unpack_from("<I", image, region.DISCOVERY_STATE_OFFSET)[0] == 0


@pytest.mark.parametrize(
    ("spec_args", "message"),
    [
        ({"devices": ()}, "1 to 16 devices"),
        ({"devices": (RegionDevice(G0, 1, 0),) * 17}, "1 to 16 devices"),
        ({"devices": (RegionDevice(G0, 1, 0),), "core_policy": "sometimes"}, "core policy"),
        ({"devices": (RegionDevice(G0, 1, 0),), "task_priority": 101}, "task priority"),
        ({"devices": (RegionDevice(G0, -1, 0),)}, "negative"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(spec_args: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegionSpec(**spec_args)  # type: ignore[arg-type]


def _kind(kind: int, device: int, nbytes: int) -> int:
    """A slot's kind_bytes entry as region_layout.h (1.3) defines it."""
    return (1 << 63) | (kind << 60) | (device << 56) | nbytes


def test_a_slot_s_context_and_module_split_is_read_per_device_and_bounded() -> None:
    lib_1_3 = (1 << 16) | 3
    entries = (_kind(0, 0, 300), _kind(1, 0, 4), _kind(0, 1, 500), _kind(1, 9, 7))  # index 9: not the container's
    # device 1's context is more than the slot holds there: bounded by it, nothing left for a module
    assert region.kind_split(lib_1_3, entries, (400, 200)) == ((300, 200), (4, 0))
    # a 1.2 (or 1.1) library's slot: entries left by a previous owner do not count
    assert region.kind_split((1 << 16) | 2, entries, (400, 200)) == ((0, 0), (0, 0))
    assert region.kind_split(0, entries, (400, 200)) == ((0, 0), (0, 0))
    assert region.kind_split(lib_1_3, (0, 0, 0, 0), (400,)) == ((0,), (0,))


def test_the_devices_split_is_the_sum_of_the_live_slots() -> None:
    image = bytearray(build_region(RegionSpec(devices=(RegionDevice(G0, 1 << 30, 0),)), created_unix_ns=1))
    struct.pack_into("<Q", image, region.DEVICES_OFFSET, 900)  # device 0's used_bytes
    lib_1_3, lib_1_2 = (1 << 16) | 3, (1 << 16) | 2
    slots = ((lib_1_3, (_kind(0, 0, 300), _kind(1, 0, 8)), 500), (lib_1_3, (_kind(0, 0, 100),), 150),
             (lib_1_2, (_kind(0, 0, 999),), 250))  # fmt: skip
    for s, (lib, kinds, used) in enumerate(slots):
        base = region.SLOTS_OFFSET + s * region.SLOT_SIZE
        struct.pack_into("<IiQiI", image, base, region.SLOT_LIVE, 10 + s, 1, 0, lib)
        struct.pack_into(f"<{len(kinds)}Q", image, base + region.SLOT_KIND_FIELD, *kinds)
        struct.pack_into("<Q", image, base + region.SLOT_USED_FIELD, used)
    snapshot = parse_region(bytes(image))
    device = snapshot.devices[0]
    assert (device.context_bytes, device.module_bytes, device.buffer_bytes) == (400, 8, 492)
    assert sorted((p.pid, p.context_bytes, p.module_bytes) for p in snapshot.processes) == [
        (10, (300,), (8,)),
        (11, (100,), (0,)),
        (12, (0,), (0,)),
    ]
    # without the slots (a header-only read) there is no split: all of used is buffer
    header_only = parse_region(bytes(image), with_processes=False).devices[0]
    assert (header_only.context_bytes, header_only.module_bytes, header_only.buffer_bytes) == (0, 0, 900)
