"""The region the plugin publishes at Allocate, used by the real hamicore (libvgpu.so in hamicore's CUDA test
client over the fake driver, test doubles of the GPU) with the environment the same Allocate injects: the limits
are the ones hamicore reads from that environment (no inconsistency reported), the GPUs are matched by the UUIDs
the plugin wrote in the container's own limit order (which here differs from the driver's order), and a region
in use is never replaced."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hami_device_plugin.adapters import files
from hami_device_plugin.core.allocation import InjectionConfig, container_allocation
from hami_device_plugin.core.pods import ContainerInfo, pod_record
from hami_device_plugin.core.region import build_region, parse_region
from hami_shared.pod_devices import ContainerDevice
from hamicore_client import PROBE, client_env
from podspecs import Ctr, pod_json

G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
G1 = "GPU-fa4e0000-0000-4000-8000-000000000001"
MIB = 1 << 20


def test_hamicore_uses_the_region_published_at_allocate(tmp_path: Path) -> None:
    if not PROBE.is_file():
        pytest.fail(f"hamicore's test client is missing at {PROBE}: run `make hamicore` first")
    pod = pod_record(pod_json("p", uid="uid-1", node="n", containers=[Ctr("main", [(G1, 300, 30, 0)])]))
    # The container's limit index 0 is the driver's GPU 1, index 1 its GPU 0.
    devices = (ContainerDevice(uuid=G1, usedmem=300, usedcores=30), ContainerDevice(uuid=G0, usedmem=200, usedcores=0))
    allocation = container_allocation(
        pod, ContainerInfo("main", False), devices, InjectionConfig(host_hook_dir=str(tmp_path))
    )
    assert allocation.region is not None
    files.prepare_container_dir(Path(allocation.cache_dir))
    region_file = Path(allocation.region_file)
    assert files.publish_region(region_file, build_region(allocation.region, 1))
    assert region_file.stat().st_mode & 0o777 == 0o666
    env = client_env(region_file, tmp_path / "gpu.state", FAKE_GPU_COUNT="2")
    env.pop("CUDA_DEVICE_MEMORY_LIMIT_0")
    env.update({k: v for k, v in allocation.envs.items() if k.startswith(("CUDA_DEVICE_", "CUDA_TASK", "GPU_CORE"))})
    env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(region_file)  # the host path of the file the container sees
    run = subprocess.run(
        [str(PROBE), "init", "ctx", "0", "info", "alloc", "150m", "alloc", "100m",
         "ctx", "1", "info", "alloc", "250m", "alloc", "100m"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    steps = [json.loads(line) for line in run.stdout.splitlines()]
    infos = [s for s in steps if s["cmd"] == "info"]
    allocs = [s["rc"] for s in steps if s["cmd"] == "alloc"]
    assert [i["total"] for i in infos] == [200 * MIB, 300 * MIB]  # driver GPU 0 = index 1, GPU 1 = index 0
    assert allocs == [0, 2, 0, 2]  # 150 of 200 MiB, then 100 more refused; 250 of 300, then 100 more refused
    assert "inconsisten" not in run.stderr.lower(), run.stderr
    snapshot = parse_region(region_file.read_bytes())
    assert [(d.uuid, d.limit_bytes) for d in snapshot.devices] == [(G1, 300 * MIB), (G0, 200 * MIB)]
    # kubelet asking again (or a restarted plugin) leaves the region in use alone.
    before = region_file.read_bytes()
    assert not files.publish_region(region_file, build_region(allocation.region, 2))
    assert region_file.read_bytes() == before
    assert [p.name for p in region_file.parent.iterdir()] == [region_file.name]
