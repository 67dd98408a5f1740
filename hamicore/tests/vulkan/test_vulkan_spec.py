"""The Vulkan layer under the device plugin's read-only spec (/etc/hami/vgpu.spec, shown in a private mount
namespace as a container sees it): the spec's limit wins over the environment, an unusable region fails closed,
and with libvgpu.so preloaded a pod's HAMI_VULKAN_DISABLE cannot unload the layer the spec asks for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vk_harness import MiB, finish_probe, probe_argv, with_libvgpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hamicore/tests: the spec mount helper
from hami_device_plugin.core import spec as spec_format
from hami_device_plugin.core.region import RegionDevice, RegionSpec
from spec_mount import with_spec

OOM = "VK_ERROR_OUT_OF_DEVICE_MEMORY"


def _spec(tmp: Path, uuid: str, region: Path, *, vulkan: bool = True) -> Path:
    image = spec_format.build_spec(
        RegionSpec(devices=(RegionDevice(uuid, 256 * MiB, 0),)), str(region), allow_disable_control=False, vulkan=vulkan
    )
    path = tmp / "vgpu.spec"
    path.write_bytes(image)
    return path


def _run(env: dict[str, str], spec: Path, *steps: str) -> dict[str, object]:
    argv, env = with_spec(probe_argv(*steps), env, spec)
    return finish_probe(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def test_the_spec_limit_wins_over_the_environment(gpu_env: dict[str, str], lavapipe_uuid: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, lavapipe_uuid, tmp_path / "vgpu.cache")
    env = {
        **gpu_env,
        "HAMI_VULKAN_ENABLE": "1",
        "CUDA_DEVICE_MEMORY_LIMIT": "80g",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / "elsewhere.cache"),
    }
    report = _run(env, spec, "alloc:200", "alloc:100")
    assert report["layer_loaded"]
    assert report["initial"]["heaps_v1"] == [256 * MiB]  # type: ignore[index]
    assert [s["outcome"] for s in report["steps"]] == ["ok", OOM]  # type: ignore[attr-defined]
    assert not (tmp_path / "elsewhere.cache").exists()


def test_an_unusable_region_fails_closed(gpu_env: dict[str, str], lavapipe_uuid: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, lavapipe_uuid, tmp_path / "missing-dir" / "vgpu.cache")
    report = _run({**gpu_env, "HAMI_VULKAN_ENABLE": "1"}, spec, "alloc:1")
    assert [s["outcome"] for s in report["steps"]] == [OOM]  # type: ignore[attr-defined]
    assert "every device memory allocation of this process is refused" in report.stderr  # type: ignore[attr-defined]


def test_the_pod_cannot_unload_the_layer_the_spec_asks_for(
    gpu_env: dict[str, str], lavapipe_uuid: str, build_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, lavapipe_uuid, tmp_path / "vgpu.cache")
    env = with_libvgpu({**gpu_env, "HAMI_VULKAN_ENABLE": "0", "HAMI_VULKAN_DISABLE": "1"}, build_dir)
    report = _run(env, spec, "alloc:200", "alloc:100")
    assert report["layer_loaded"]
    assert [s["outcome"] for s in report["steps"]] == ["ok", OOM]  # type: ignore[attr-defined]
    assert "ignoring HAMI_VULKAN_ENABLE/HAMI_VULKAN_DISABLE" in report.stderr  # type: ignore[attr-defined]
    # A spec that does not ask for Vulkan leaves the pod's choice alone.
    spec = _spec(tmp_path, lavapipe_uuid, tmp_path / "vgpu.cache", vulkan=False)
    assert not _run(env, spec, "alloc:1")["layer_loaded"]
