"""vk_alloc_probe (the C Vulkan client of the real-node e2e image) against lavapipe through the real loader: what
its JSON lines say with and without the layer, so the e2e test reads a client known to report correctly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from vk_harness import MiB

LIMIT = 256 * MiB
VK_SUCCESS = 0
VK_ERROR_OUT_OF_DEVICE_MEMORY = -2
STEPS = ["layers", "init", "heap", "alloc", "100m", "alloc", "156m", "alloc", "1", "free", "0", "heap", "mapped"]


def run(build_dir: Path, env: dict[str, str], *steps: str) -> list[dict[str, Any]]:
    binary = build_dir / "tests" / "vk_alloc_probe"
    assert binary.is_file(), f"{binary} is missing: run `make hamicore`"
    out = subprocess.run([str(binary), *steps], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_with_the_layer_it_reports_the_slice_the_budget_and_the_refusal(
    build_dir: Path, gpu_env: dict[str, str], lavapipe_uuid: str
) -> None:
    env = {**gpu_env, "HAMI_VULKAN_ENABLE": "1", "CUDA_DEVICE_MEMORY_LIMIT": "256m"}
    layers, init, heap, first, rest, byte, freed, heap_after, mapped = run(build_dir, env, *STEPS)
    assert layers["rc"] == VK_SUCCESS
    assert "VK_LAYER_HAMI_vgpu" in layers["names"]
    assert init["rc"] == VK_SUCCESS
    assert init["uuid"] == lavapipe_uuid.removeprefix("GPU-").replace("-", "")
    assert init["budget_ext"] is True  # listed by the layer
    assert (heap["size"], heap["budget"], heap["usage"]) == (LIMIT, LIMIT, 0)
    assert [(a["size"], a["rc"]) for a in (first, rest)] == [(100 * MiB, VK_SUCCESS), (156 * MiB, VK_SUCCESS)]
    assert (byte["size"], byte["rc"], byte["result"]) == (
        1,
        VK_ERROR_OUT_OF_DEVICE_MEMORY,
        "VK_ERROR_OUT_OF_DEVICE_MEMORY",
    )
    assert (freed["rc"], freed["id"]) == (VK_SUCCESS, 0)
    assert (heap_after["budget"], heap_after["usage"]) == (LIMIT, 156 * MiB)
    assert mapped["layer"] is True


def test_without_the_layer_it_reports_the_driver_as_is(build_dir: Path, gpu_env: dict[str, str]) -> None:
    env = {**gpu_env, "CUDA_DEVICE_MEMORY_LIMIT": "256m"}  # a limit, but no HAMI_VULKAN_ENABLE: no layer
    _layers, init, heap, first, rest, byte, _freed, _heap_after, mapped = run(build_dir, env, *STEPS)
    assert init["rc"] == VK_SUCCESS
    assert heap["size"] > LIMIT
    assert [a["rc"] for a in (first, rest, byte)] == [VK_SUCCESS] * 3
    assert mapped["layer"] is False


def test_device_commands_before_init_and_a_bad_command_line(build_dir: Path, gpu_env: dict[str, str]) -> None:
    heap, alloc, free = run(build_dir, gpu_env, "heap", "alloc", "1m", "free", "0")
    assert (heap["rc"], alloc["rc"], free["rc"]) == (-1, -1, -1)
    binary = build_dir / "tests" / "vk_alloc_probe"
    for argv in (["alloc"], ["alloc", "12x"], ["alloc", "99999999999999999999g"], ["bogus"]):
        out = subprocess.run([str(binary), *argv], env=gpu_env, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert "usage" in out.stderr
