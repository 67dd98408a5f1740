"""Dynamic MIG over the real NVML driver and hamicore's fake NVML (a test double keeping NVML's MIG rules, its MIG
state shared by processes, so a second plugin process is a restart): the seed's pod (2 GPUs x 8000 MiB reserved as
two 2g.10gb) gets its instances and their MIG UUIDs at Allocate with the reservation patched; a restarted plugin
adopts them, reclaims the leftover of a crash and, once the pod is gone, destroys them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_NVML_DIR
from hami_shared import names
from hami_shared.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from podspecs import Ctr, pod_json

CLIENT = Path(__file__).with_name("mig_plugin_client.py")
OPERATOR = Path(__file__).with_name("nvml_mig_client.py")
NODE = "node-a"
G0 = "GPU-12345678-9abc-4def-8123-456789abcdef"
G1 = "GPU-22345678-9abc-4def-8123-456789abcdef"


def environ(tmp: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_")},
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "HAMI_TEST_NVML_LIBRARY": str(FAKE_NVML_DIR / "libnvidia-ml.so.1"),
        "FAKE_GPU_NAMES": "NVIDIA A100-SXM4-40GB",
        "FAKE_GPU_MEMORY_MIB": "40960",
        "FAKE_GPU_UUIDS": f"{G0},{G1}",
        "FAKE_GPU_COUNT": "2",
        "FAKE_GPU_STATE_FILE": str(tmp / "gpu.state"),
    }


def run(tmp: Path, script: Path, argument: Any) -> Any:
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").is_file():
        pytest.fail(f"hamicore's fake NVML is not built at {FAKE_NVML_DIR}: run `make hamicore` first")
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(argument)],
        env=environ(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seed_pod() -> dict[str, Any]:
    allocations = [
        MigAllocation(container_index=0, device_index=k, gpu_uuid=g, profile="2g.10gb", start=0, size=2)
        for k, g in enumerate((G0, G1))
    ]
    return pod_json(
        "seed",
        uid="uid-seed",
        node=NODE,
        containers=[Ctr("main", [(G0, 0, 9856, 100), (G1, 0, 9856, 100)])],
        extra_annotations={names.MIG_ALLOCATIONS: encode_mig_allocations(allocations)},
    )


def test_the_seed_pod_gets_its_instances_and_a_restart_adopts_reclaims_and_frees(tmp_path: Path) -> None:
    first = run(
        tmp_path,
        CLIENT,
        {"pods": [seed_pod()], "steps": [["adopt"], ["allocate", [f"{G0}-0", f"{G1}-0"]], ["flush"]]},
    )
    (answer,) = first["answers"]
    assert "refused" not in answer, answer
    made = sorted((i["parent_uuid"], i["profile"], i["start"]) for i in first["instances"])
    assert made == [(G0, "2g.10gb", 0), (G1, "2g.10gb", 0)]
    uuids = [i["mig_uuid"] for i in sorted(first["instances"], key=lambda i: i["parent_uuid"])]
    assert answer == {"envs": {names.ENV_VISIBLE_DEVICES: ",".join(uuids)}, "mounts": 0}
    patched = first["pods"]["seed"]
    reserved = decode_mig_allocations(patched["metadata"]["annotations"][names.MIG_ALLOCATIONS])
    assert [a.mig_uuid for a in reserved] == uuids
    assert sorted(s["mig_uuid"] for s in first["info"]) == sorted(uuids)

    # a crash left an instance no pod reserves; the plugin restarts (a new process, the same GPUs)
    run(tmp_path, OPERATOR, [["create_mig_instance", "gpu0", 19, 6]])
    restarted = run(
        tmp_path,
        CLIENT,
        {"pods": [patched], "steps": [["adopt"], ["reconcile"]]},
    )
    assert sorted(i["mig_uuid"] for i in restarted["instances"]) == sorted(uuids)
    assert restarted["managed"] == 2
    gone = run(tmp_path, CLIENT, {"pods": [patched], "steps": [["adopt"], ["delete", "seed"], ["reconcile"]]})
    assert gone["instances"] == []
