"""Acceptance tests of libvgpu_vk.so (VK_LAYER_HAMI_vgpu) through the real Vulkan loader and Mesa lavapipe.

Covers: heap clamping on every memory-properties entry point, the allocation cap and its release,
VK_EXT_memory_budget, rollback on driver failure, manifest switches, the unmatched-GPU case, the
Khronos validation layer's verdict, the exported symbols and the manifests.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from vk_harness import MiB, RunProbe, fake_gpu_env

OOM = "VK_ERROR_OUT_OF_DEVICE_MEMORY"
LIMIT = 256 * MiB
LAVAPIPE_HEAP = 2048 * MiB  # lavapipe's one device-local heap (Mesa 22.3)


def limited(env: dict[str, str], limit: str = "256m") -> dict[str, str]:
    return {**env, "HAMI_VULKAN_ENABLE": "1", "CUDA_DEVICE_MEMORY_LIMIT": limit}


@pytest.mark.parametrize("api", ["1.0", "1.1", "1.3"])
def test_device_local_heap_reports_the_limit_on_every_entry_point(
    run_probe: RunProbe, gpu_env: dict[str, str], api: str
) -> None:
    report = run_probe(limited(gpu_env), api=api)
    assert report["layer_loaded"]
    initial = report["initial"]
    assert initial["heaps_v1"] == [LIMIT]
    assert initial["heaps_v2khr"] == [LIMIT]
    if api != "1.0":
        assert initial["heaps_v2"] == [LIMIT]


def test_vulkan_1_0_application_without_properties2_is_still_mapped_and_capped(
    run_probe: RunProbe, gpu_env: dict[str, str]
) -> None:
    # The layer needs deviceUUID, so it enables VK_KHR_get_physical_device_properties2 below itself.
    report = run_probe(limited(gpu_env), "alloc:200", "alloc:100", api="1.0", properties2=False, validation=True)
    assert report["initial"]["heaps_v1"] == [LIMIT]
    assert report.outcomes() == ["ok", OOM]
    assert [m for m in report["validation_messages"] if m["error"]] == []


def test_200_mib_fits_100_more_is_refused_and_fits_after_free(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    report = run_probe(limited(gpu_env), "alloc:200", "alloc:100", "free:0", "alloc:100")
    assert report.outcomes() == ["ok", OOM, "ok", "ok"]
    assert "refused: over the GPU memory limit" in report.stderr
    # No libvgpu.so in this process: the layer's own linked copy of the accounting core did the charging.
    assert "accounting backend: linked" in report.stderr


def test_allocation_larger_than_the_limit_is_refused(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    report = run_probe(limited(gpu_env), "alloc:257", "alloc:256")
    assert report.outcomes() == [OOM, "ok"]


def test_two_instances_in_one_process_share_the_cap(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    steps = ("alloc:200", "other:alloc:100", "other:alloc:50", "other:query", "free:0", "other:alloc:100")
    report = run_probe(limited(gpu_env), *steps, budget_ext=True, validation=True)
    first, refused, fits, seen_by_other, _, after_free = report.outcomes()
    assert (first, refused, fits, after_free) == ("ok", OOM, "ok", "ok")
    assert seen_by_other["usage_v2"] == [250 * MiB]
    assert [m for m in report["validation_messages"] if m["error"]] == []


def test_racing_threads_get_exactly_the_cap_and_return_it(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    report = run_probe(limited(gpu_env), "race:8:16", "query", "race:8:16")
    first, after, second = report.outcomes()
    assert first == {"admitted": 16, "errors": []}  # 256 MiB / 16 MiB, however the 8 threads interleave
    assert after["usage_v2"] == [0]
    assert second == {"admitted": 16, "errors": []}


def test_memory_budget_is_listed_and_reports_the_slice(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    report = run_probe(limited(gpu_env), "alloc:200", "query", "free:0", "query", budget_ext=True)
    assert report["budget_ext_listed"]
    assert report["layer_device_extensions"] == ["VK_EXT_memory_budget"]
    assert report["initial"]["budget_v2"] == [LIMIT]
    assert report["initial"]["usage_v2"] == [0]
    _, during, _, after = report.outcomes()
    for key in ("v2", "v2khr"):
        assert during[f"usage_{key}"] == [200 * MiB]
        assert during[f"budget_{key}"] == [LIMIT]  # headroom = budget - usage = what is left of the limit
        assert after[f"usage_{key}"] == [0]


def test_driver_failure_rolls_back_the_reservation(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    # The budget (300,000 GiB) admits 256 TiB; lavapipe cannot back it and fails. Nothing may stay charged.
    # 256 TiB is past the 128 TiB user address space, so the driver fails whatever vm.overcommit_memory says
    # (with overcommit_memory=1, which a kubelet sets on its node, a 1 TiB malloc succeeds).
    report = run_probe(limited(gpu_env, "300000g"), "alloc:268435456", "query", budget_ext=True)
    failed, after = report.outcomes()
    assert failed == OOM
    assert after["usage_v2"] == [0]
    assert after["heaps_v2"] == [LAVAPIPE_HEAP]  # a limit above the heap leaves the heap as it is


def test_destroying_a_device_returns_what_it_held(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    report = run_probe(limited(gpu_env), "alloc:200", "recreate_device", "alloc:200", "query")
    assert report.outcomes()[:3] == ["ok", "ok", "ok"]
    assert report.outcomes()[3]["usage_v2"] == [200 * MiB]


@pytest.mark.parametrize(
    "switches",
    [{}, {"HAMI_VULKAN_DISABLE": "1"}, {"HAMI_VULKAN_ENABLE": "1", "HAMI_VULKAN_DISABLE": "1"}],
    ids=["not-enabled", "disabled", "enabled-and-disabled"],
)
def test_layer_is_not_in_the_chain_unless_enabled(
    run_probe: RunProbe, gpu_env: dict[str, str], switches: dict[str, str]
) -> None:
    env = {**gpu_env, "CUDA_DEVICE_MEMORY_LIMIT": "256m", **switches}
    report = run_probe(env, "alloc:300")
    assert not report["layer_loaded"], "libvgpu_vk.so is mapped although the layer is off"
    assert report["initial"]["heaps_v1"] == [LAVAPIPE_HEAP]
    assert report.outcomes() == ["ok"]


def test_gpu_that_is_not_the_containers_is_neither_clamped_nor_charged(
    run_probe: RunProbe, base_env: dict[str, str], build_dir: Path
) -> None:
    env = limited({**base_env, **fake_gpu_env(build_dir, "GPU-00000000-1111-2222-3333-444444444444")})
    report = run_probe(env, "alloc:300", budget_ext=True)
    assert report["layer_loaded"]
    assert report["initial"]["heaps_v1"] == [LAVAPIPE_HEAP]
    assert report.outcomes() == ["ok"]
    assert "not a budgeted GPU of this container, not charged" in report.stderr


def test_validation_layer_reports_no_errors_with_our_layer_in_the_chain(
    run_probe: RunProbe, gpu_env: dict[str, str]
) -> None:
    steps = (
        "alloc:200",
        "alloc:100",
        "query",
        "free:0",
        "alloc:100",
        "query",
        "recreate_device",
        "alloc:10",
        "race:4:16",
    )
    report = run_probe(limited(gpu_env), *steps, validation=True, budget_ext=True)
    assert report["layer_loaded"]
    assert report.outcomes()[:2] == ["ok", OOM]
    errors = [m for m in report["validation_messages"] if m["error"]]
    # recreate_device destroys a device with live memory on purpose (the layer must return it): that one
    # report is about the probe, not the layer.
    errors = [m for m in errors if m["id"] != "VUID-vkDestroyDevice-device-00378"]
    assert errors == []


def test_validation_capture_sees_a_real_error(run_probe: RunProbe, gpu_env: dict[str, str]) -> None:
    """Control for the test above: an invalid call (allocationSize 0) is reported through our capture."""
    report = run_probe(limited(gpu_env), "alloc_bytes:0", validation=True)
    ids = {m["id"] for m in report["validation_messages"] if m["error"]}
    assert "VUID-VkMemoryAllocateInfo-allocationSize-00638" in ids


def _exported_symbols(library: Path) -> set[str]:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_layer_exports_only_the_loader_entry_points(build_dir: Path) -> None:
    assert _exported_symbols(build_dir / "libvgpu_vk.so") == {
        "vkNegotiateLoaderLayerInterfaceVersion",
        "vkGetInstanceProcAddr",
        "vkGetDeviceProcAddr",
    }


def test_libvgpu_exports_no_vulkan_symbol(build_dir: Path) -> None:
    library = build_dir / "libvgpu.so"
    assert library.is_file(), f"{library} is missing: run `make hamicore`"
    out = subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True, check=True).stdout
    assert [line for line in out.splitlines() if line.split()[-1].startswith("vk")] == []


@pytest.mark.parametrize(
    ("relative", "library_path"),
    [
        ("vulkan/implicit_layer.d/hami.json", "../../libvgpu_vk.so"),
        ("vulkan/install/hami.json", "/usr/local/vgpu/libvgpu_vk.so"),
    ],
    ids=["build", "install"],
)
def test_manifest(build_dir: Path, relative: str, library_path: str) -> None:
    manifest = json.loads((build_dir / relative).read_text())
    layer = manifest["layer"]
    assert layer["name"] == "VK_LAYER_HAMI_vgpu"
    assert layer["type"] == "INSTANCE"
    assert layer["library_path"] == library_path
    assert layer["enable_environment"] == {"HAMI_VULKAN_ENABLE": "1"}
    assert layer["disable_environment"] == {"HAMI_VULKAN_DISABLE": "1"}
    assert [e["name"] for e in layer["device_extensions"]] == ["VK_EXT_memory_budget"]
    if not library_path.startswith("/"):
        assert (build_dir / relative).parent.joinpath(library_path).resolve() == build_dir / "libvgpu_vk.so"
