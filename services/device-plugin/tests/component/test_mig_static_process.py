"""Static MIG in the real plugin process: instances made by hand through NVML (another NVML client, as an operator's
``nvidia-smi mig -cgi``) on hamicore's fake NVML (a test double keeping NVML's MIG rules; its state is shared by
processes), the plugin under ``--mig-strategy mixed`` / ``single``, and the kubelet double. ``mixed``: one endpoint per
profile resource registered with kubelet, the plain card still shared, Allocate answers the MIG UUID, a repartition
shows in kubelet's list; ``single``: ``nvidia.com/gpu`` lists the instances instead of shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import FAKE_NVML_DIR, StartPlugin
from hami_device_plugin.adapters.protos import load
from hami_shared import names

pb, _ = load()
CLIENT = Path(__file__).with_name("nvml_mig_client.py")
G0 = "GPU-12345678-9abc-4def-8123-456789abcdef"
G1 = "GPU-22345678-9abc-4def-8123-456789abcdef"


def fake_env(tmp: Path) -> dict[str, str]:
    return {
        "FAKE_GPU_NAMES": "NVIDIA A100-SXM4-40GB",
        "FAKE_GPU_MEMORY_MIB": "40960",
        "FAKE_GPU_UUIDS": f"{G0},{G1}",
        "FAKE_GPU_COUNT": "2",
        "FAKE_GPU_MIG_MODE": "1",
        "FAKE_GPU_STATE_FILE": str(tmp / "gpu.state"),
    }


def operator(tmp: Path, *ops: list[Any]) -> list[Any]:
    """NVML calls of another process (the operator partitioning by hand), through the plugin's NVML driver."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_")},
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "HAMI_TEST_NVML_LIBRARY": str(FAKE_NVML_DIR / "libnvidia-ml.so.1"),
        **fake_env(tmp),
    }
    proc = subprocess.run(
        [sys.executable, str(CLIENT), json.dumps(ops)], env=environ, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert all("ok" in r for r in results), results
    return [r["ok"] for r in results]


async def test_mixed_serves_a_resource_per_profile_and_follows_a_repartition(
    start_plugin: StartPlugin, tmp_path: Path
) -> None:
    big, small = operator(
        tmp_path,
        ["create_mig_instance", "gpu0", 14, 0],
        ["create_mig_instance", "gpu0", 19, 4],
        ["set_mig_mode", "gpu1", False],
    )[:2]
    plugin = await start_plugin(
        gpus=2, split=4, args=["--mig-strategy=mixed", "--mig-reconcile-interval=0.3"], env=fake_env(tmp_path)
    )
    # the plain card keeps its shares; the partitioned one is not shared
    shares = await plugin.wait_devices(lambda d: len(d) == 4)
    assert all(k.startswith(G1) for k in shares)
    two = await plugin.kubelet.wait_resource("nvidia.com/mig-2g.10gb", lambda d: len(d) == 1)
    one = await plugin.kubelet.wait_resource("nvidia.com/mig-1g.5gb", lambda d: len(d) == 1)
    assert list(two) == [big["mig_uuid"]]
    assert list(one) == [small["mig_uuid"]]
    stub = plugin.kubelet.resources["nvidia.com/mig-2g.10gb"]["stub"]
    answer = await stub.Allocate(
        pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[big["mig_uuid"]])]),
        timeout=10,
    )
    assert dict(answer.container_responses[0].envs) == {names.ENV_VISIBLE_DEVICES: big["mig_uuid"]}
    assert list(answer.container_responses[0].mounts) == []

    (added,) = operator(tmp_path, ["create_mig_instance", "gpu0", 19, 5])
    both = await plugin.kubelet.wait_resource("nvidia.com/mig-1g.5gb", lambda d: len(d) == 2, within=20)
    assert set(both) == {small["mig_uuid"], added["mig_uuid"]}


async def test_single_lists_the_instances_as_the_gpu_resource(start_plugin: StartPlugin, tmp_path: Path) -> None:
    made = operator(
        tmp_path,
        ["create_mig_instance", "gpu0", 14, 0],
        ["create_mig_instance", "gpu0", 14, 2],
        ["create_mig_instance", "gpu1", 14, 4],
    )
    plugin = await start_plugin(gpus=2, split=4, args=["--mig-strategy=single"], env=fake_env(tmp_path))
    listed = await plugin.wait_devices(lambda d: len(d) == 3)
    assert set(listed) == {m["mig_uuid"] for m in made}
    answer = await plugin.kubelet.stub.Allocate(
        pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[made[2]["mig_uuid"]])]),
        timeout=10,
    )
    assert dict(answer.container_responses[0].envs) == {names.ENV_VISIBLE_DEVICES: made[2]["mig_uuid"]}
