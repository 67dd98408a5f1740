"""The NVML driver's MIG calls (the MigDriver port) against hamicore's fake NVML, a test double that keeps the real
driver's MIG rules and error codes: capability by model, the mode and its pending state, the A100-40GB's real
profiles and placements, creating and destroying instances with NVML's return codes on NvmlError, and instances
that outlive the process which created them (a plugin restart sees them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_NVML_DIR, ROOT

CLIENT = Path(__file__).with_name("nvml_mig_client.py")
A100 = "NVIDIA A100-SXM4-40GB"
PARENT = "GPU-12345678-9abc-4def-8123-456789abcdef"
NOT_SUPPORTED, INVALID_ARGUMENT, NOT_FOUND, IN_USE, INSUFFICIENT_RESOURCES = 3, 2, 6, 19, 23


def environ(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_")},
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "HAMI_TEST_NVML_LIBRARY": str(FAKE_NVML_DIR / "libnvidia-ml.so.1"),
        "FAKE_GPU_NAMES": A100,
        "FAKE_GPU_MEMORY_MIB": "40960",
        "FAKE_GPU_UUIDS": PARENT,
        "FAKE_GPU_STATE_FILE": str(tmp / "gpu.state"),
        **extra,
    }


def calls(tmp: Path, *ops: list[Any], **extra: str) -> list[dict[str, Any]]:
    """Runs the driver calls in a fresh process (a plugin process) and returns their results."""
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").is_file():
        pytest.fail(f"hamicore's fake NVML is not built at {FAKE_NVML_DIR}: run `make hamicore` first")
    proc = subprocess.run(
        [sys.executable, str(CLIENT), json.dumps(ops)],
        env=environ(tmp, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def values(results: list[dict[str, Any]]) -> list[Any]:
    assert all("ok" in r for r in results), results
    return [r["ok"] for r in results]


def instance(gi: int, profile_id: int, profile: str, start: int, size: int, memory: int) -> dict[str, Any]:
    return {
        "parent_uuid": PARENT,
        "gpu_instance_id": gi,
        "compute_instance_id": 0,
        "profile_id": profile_id,
        "profile": profile,
        "start": start,
        "size": size,
        # the fake's documented MIG UUID: the parent's with the second group = GPU- and compute-instance IDs
        "mig_uuid": f"MIG-12345678-{gi:02x}00-4def-8123-456789abcdef",
        "memory_mib": memory,
    }


def test_capability_and_mode_by_model(tmp_path: Path) -> None:
    results = calls(
        tmp_path,
        ["mig_capable", "gpu0"],
        ["mig_capable", "gpu1"],
        ["mig_mode", "gpu0"],
        ["mig_mode", "gpu1"],
        ["set_mig_mode", "gpu0", True],
        ["mig_mode", "gpu0"],
        FAKE_GPU_COUNT="2",
        FAKE_GPU_NAMES=f"{A100},Tesla T4",
        FAKE_GPU_UUIDS=f"{PARENT},GPU-22345678-9abc-4def-8123-456789abcdef",
    )
    assert results[:3] == [{"ok": True}, {"ok": False}, {"ok": [False, False]}]
    assert results[3]["err"] == NOT_SUPPORTED
    assert "Not Supported" in results[3]["message"]
    assert results[4:] == [{"ok": True}, {"ok": [True, True]}]


def test_a_mode_change_waits_for_a_reset_or_is_refused_in_use(tmp_path: Path) -> None:
    assert calls(tmp_path, ["set_mig_mode", "gpu0", True], ["mig_mode", "gpu0"], FAKE_NVML_MIG_NEEDS_RESET="1") == [
        {"ok": False},
        {"ok": [False, True]},
    ]
    probe = ROOT / "hamicore" / "build" / "tests" / "cuda_probe"
    busy = environ(tmp_path, FAKE_GPU_STATE_FILE=str(tmp_path / "busy.state"))
    holder = subprocess.Popen([str(probe), "init", "ctx", "0", "hold"], env=busy, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        while "hold" not in holder.stdout.readline():
            pass
        [refused, mode] = calls(
            tmp_path,
            ["set_mig_mode", "gpu0", True],
            ["mig_mode", "gpu0"],
            FAKE_GPU_STATE_FILE=str(tmp_path / "busy.state"),
        )
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert refused["err"] == IN_USE
    assert "In use" in refused["message"]
    assert mode == {"ok": [False, True]}


def test_profiles_are_the_cards_with_names_without_the_mig_prefix(tmp_path: Path) -> None:
    [profiles] = values(calls(tmp_path, ["gpu_instance_profiles", "gpu0"], FAKE_GPU_MIG_MODE="1"))
    by_name = {p["name"]: p for p in profiles}
    assert sorted(by_name) == sorted(["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"])
    assert by_name["2g.10gb"] == {
        "profile_id": 14,
        "name": "2g.10gb",
        "memory_mib": 9984,
        "slice_count": 2,
        "multiprocessor_count": 28,
        "instance_count": 3,
        "placements": [{"start": 0, "size": 2}, {"start": 2, "size": 2}, {"start": 4, "size": 2}],
    }
    assert [p["start"] for p in by_name["1g.5gb"]["placements"]] == list(range(7))
    assert by_name["7g.40gb"]["placements"] == [{"start": 0, "size": 8}]
    # MIG mode off: NVML has no profiles to give
    [off] = calls(tmp_path, ["gpu_instance_profiles", "gpu0"], FAKE_GPU_STATE_FILE=str(tmp_path / "off.state"))
    assert off["err"] == NOT_SUPPORTED


def test_create_list_destroy_with_nvmls_error_codes(tmp_path: Path) -> None:
    results = calls(
        tmp_path,
        ["create_mig_instance", "gpu0", 14, 0],
        ["create_mig_instance", "gpu0", 14, 2],
        ["create_mig_instance", "gpu0", 19, 3],
        ["create_mig_instance", "gpu0", 14, 1],
        ["create_mig_instance", "gpu0", 42, 0],
        ["create_mig_instance", "gpu0", 9, 4],
        ["create_mig_instance", "gpu0", 19, 6],
        ["mig_instances", "gpu0"],
        FAKE_GPU_MIG_MODE="1",
    )
    # GPU-instance IDs follow the placement (the fake NVML keeps the driver's numbering)
    two_g = [instance(3, 14, "2g.10gb", 0, 2, 9984), instance(4, 14, "2g.10gb", 2, 2, 9984)]
    three_g = instance(2, 9, "3g.20gb", 4, 4, 20096)
    assert results[:2] == [{"ok": i} for i in two_g]
    assert [r.get("err") for r in results[2:5]] == [INSUFFICIENT_RESOURCES, INVALID_ARGUMENT, INVALID_ARGUMENT]
    assert results[5] == {"ok": three_g}
    assert results[6]["err"] == INSUFFICIENT_RESOURCES  # slice 6 is the 3g.20gb's
    assert results[7] == {"ok": [three_g, *two_g]}
    # a restarted plugin sees what the last one made; it destroys one, and an unknown ID is NOT_FOUND
    results = calls(
        tmp_path,
        ["mig_instances", "gpu0"],
        ["destroy_mig_instance", "gpu0", 4],
        ["destroy_mig_instance", "gpu0", 4],
        ["mig_instances", "gpu0"],
        FAKE_GPU_MIG_MODE="1",
    )
    assert results[0] == {"ok": [three_g, *two_g]}
    assert results[1] == {"ok": None}
    assert results[2]["err"] == NOT_FOUND
    assert results[3] == {"ok": [three_g, two_g[0]]}
    # the freed slices take a 1g.5gb; the mode cannot be turned off while instances are on the card
    results = calls(
        tmp_path, ["create_mig_instance", "gpu0", 19, 3], ["set_mig_mode", "gpu0", False], FAKE_GPU_MIG_MODE="1"
    )
    assert results[0] == {"ok": instance(10, 19, "1g.5gb", 3, 1, 4864)}
    assert results[1]["err"] == IN_USE


def test_gpu_instances_without_a_compute_instance_are_skipped_and_destroyable(tmp_path: Path) -> None:
    results = calls(
        tmp_path,
        ["raw_gpu_instance", 0, 9],
        ["mig_instances", "gpu0"],
        ["create_mig_instance", "gpu0", 9, 4],
        ["destroy_mig_instance", "gpu0", 1],
        ["mig_instances", "gpu0"],
        FAKE_GPU_MIG_MODE="1",
    )
    assert values(results) == [
        None,
        [],
        instance(2, 9, "3g.20gb", 4, 4, 20096),
        None,
        [instance(2, 9, "3g.20gb", 4, 4, 20096)],
    ]
