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
    assert snapshot.version == (1, 2)
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
