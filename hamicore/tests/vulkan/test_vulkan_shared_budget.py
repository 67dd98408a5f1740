"""One cap for CUDA and Vulkan: the layer charges the container's shared budget, in one process and across
processes, whichever accounting copy it uses (libvgpu.so's when preloaded, its own linked one otherwise).

The CUDA side is NVIDIA's cuda-bindings over libvgpu.so and the fake driver (TEST DOUBLE,
hamicore/tests/fake), which reports lavapipe's deviceUUID for GPU 0, so both APIs name the same GPU.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from vk_harness import MiB, RunProbe, SpawnProbe, finish_probe, with_libvgpu

OOM = "VK_ERROR_OUT_OF_DEVICE_MEMORY"
CUDA_OOM = "CUDA_ERROR_OUT_OF_MEMORY"


def limited(env: dict[str, str]) -> dict[str, str]:
    return {**env, "HAMI_VULKAN_ENABLE": "1", "CUDA_DEVICE_MEMORY_LIMIT": "256m"}


def test_cuda_then_vulkan_in_one_process(run_probe: RunProbe, gpu_env: dict[str, str], build_dir: Path) -> None:
    env = with_libvgpu(limited(gpu_env), build_dir)
    report = run_probe(env, "cuda_alloc:200", "alloc:100", "query", "cuda_free:0", "alloc:100", budget_ext=True)
    cuda, refused, during, freed, admitted = report.outcomes()
    assert (cuda, refused, freed, admitted) == ("ok", OOM, "ok", "ok")
    assert during["usage_v2"] == [200 * MiB]  # CUDA's bytes show in Vulkan's budget view
    assert during["budget_v2"][0] - during["usage_v2"][0] == 56 * MiB
    assert "accounting backend: libvgpu" in report.stderr


def test_vulkan_then_cuda_in_one_process(run_probe: RunProbe, gpu_env: dict[str, str], build_dir: Path) -> None:
    env = with_libvgpu(limited(gpu_env), build_dir)
    report = run_probe(env, "alloc:200", "cuda_alloc:100", "free:0", "cuda_alloc:100")
    assert report.outcomes() == ["ok", CUDA_OOM, "ok", "ok"]


def test_cuda_in_one_process_vulkan_in_another(
    spawn_probe: SpawnProbe, gpu_env: dict[str, str], build_dir: Path, tmp_path: Path
) -> None:
    holder_ready, tried = tmp_path / "holder-ready", tmp_path / "tried"
    cuda_env = with_libvgpu(limited(gpu_env), build_dir)
    holder = spawn_probe(cuda_env, "cuda_alloc:200", f"signal:{holder_ready}", f"wait:{tried}")
    # The Vulkan-only process has no libvgpu.so: the layer's own copy of the accounting core charges.
    vulkan = spawn_probe(limited(gpu_env), f"wait:{holder_ready}", "alloc:100", "query", f"signal:{tried}")
    vulkan_report, holder_report = finish_probe(vulkan), finish_probe(holder)
    assert holder_report.outcomes()[0] == "ok"
    _, refused, during, _ = vulkan_report.outcomes()
    assert refused == OOM
    assert during["usage_v2"] == [200 * MiB]
    assert "accounting backend: linked" in vulkan_report.stderr


def test_vulkan_in_one_process_cuda_in_another(
    spawn_probe: SpawnProbe, gpu_env: dict[str, str], build_dir: Path, tmp_path: Path
) -> None:
    holder_ready, tried = tmp_path / "holder-ready", tmp_path / "tried"
    holder = spawn_probe(limited(gpu_env), "alloc:200", f"signal:{holder_ready}", f"wait:{tried}")
    cuda_env = with_libvgpu(limited(gpu_env), build_dir)
    cuda = spawn_probe(cuda_env, f"wait:{holder_ready}", "cuda_alloc:100", "cuda_alloc:50", f"signal:{tried}")
    cuda_report, holder_report = finish_probe(cuda), finish_probe(holder)
    assert holder_report.outcomes()[0] == "ok"
    assert cuda_report.outcomes()[1:3] == [CUDA_OOM, "ok"]


def test_vulkan_processes_share_the_cap_and_freeing_returns_it(
    spawn_probe: SpawnProbe, gpu_env: dict[str, str], tmp_path: Path
) -> None:
    ready, tried, freed = tmp_path / "ready", tmp_path / "tried", tmp_path / "freed"
    holder = spawn_probe(limited(gpu_env), "alloc:200", f"signal:{ready}", f"wait:{tried}", "free:0", f"signal:{freed}")
    other = spawn_probe(limited(gpu_env), f"wait:{ready}", "alloc:100", f"signal:{tried}", f"wait:{freed}", "alloc:100")
    other_report, holder_report = finish_probe(other), finish_probe(holder)
    assert holder_report.outcomes()[0] == "ok"
    assert other_report.outcomes()[1] == OOM
    assert other_report.outcomes()[4] == "ok"


def test_memory_of_a_killed_process_is_reclaimed(
    spawn_probe: SpawnProbe, gpu_env: dict[str, str], tmp_path: Path
) -> None:
    ready, never = tmp_path / "ready", tmp_path / "never-created"
    victim = spawn_probe(limited(gpu_env), "alloc:200", f"signal:{ready}", f"wait:{never}")
    survivor = spawn_probe(limited(gpu_env), f"wait:{ready}", "query")
    assert finish_probe(survivor).outcomes()[1]["usage_v2"] == [200 * MiB]
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    report = finish_probe(spawn_probe(limited(gpu_env), "alloc:200"))
    assert report.outcomes() == ["ok"]
