"""Allocate's env and mounts for a container."""

from __future__ import annotations

import pytest
from hami_device_plugin.core import spec
from hami_device_plugin.core.allocation import InjectionConfig, Mount, container_allocation
from hami_device_plugin.core.pods import ContainerInfo, pod_record
from hami_device_plugin.core.region import RegionDevice, RegionSpec
from hami_shared.pod_devices import ContainerDevice
from podspecs import Ctr, pod_json

G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-00000000-0000-4000-8000-000000000001"


def _pod(vulkan: bool = False):  # type: ignore[no-untyped-def]
    return pod_record(pod_json("p", uid="uid-1", node="n", containers=[Ctr("main", [(G0, 0, 1, 0)])], vulkan=vulkan))


def test_env_and_mounts_for_two_gpus() -> None:
    devices = (
        ContainerDevice(uuid=G0, usedmem=3000, usedcores=30),
        ContainerDevice(uuid=G1, usedmem=5000, usedcores=0),
    )
    config = InjectionConfig(
        host_hook_dir="/host/vgpu", container_hook_dir="/usr/local/vgpu", core_policy="force", libcuda_log_level=1
    )
    result = container_allocation(_pod(), ContainerInfo("main", False, priority=1), devices, config)
    assert dict(result.envs) == {
        "NVIDIA_VISIBLE_DEVICES": f"{G0},{G1}",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "5000m",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_SM_LIMIT_0": "30",
        "CUDA_DEVICE_SM_LIMIT_1": "0",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/usr/local/vgpu/uid-1_main.cache",
        "GPU_CORE_UTILIZATION_POLICY": "force",
        "CUDA_TASK_PRIORITY": "1",
        "LIBCUDA_LOG_LEVEL": "1",
    }
    assert result.mounts == (
        Mount("/usr/local/vgpu", "/host/vgpu/containers/uid-1_main", False),
        Mount("/usr/local/vgpu/libvgpu.so", "/host/vgpu/libvgpu.so", True),
        Mount("/etc/ld.so.preload", "/host/vgpu/ld.so.preload", True),
        Mount("/etc/hami/vgpu.spec", "/host/vgpu/containers/uid-1_main.spec", True),
    )
    assert result.cache_dir == "/host/vgpu/containers/uid-1_main"
    assert result.spec_file == "/host/vgpu/containers/uid-1_main.spec"


def test_the_spec_says_what_the_env_says_and_is_mounted_read_only_outside_the_writable_dir() -> None:
    devices = (
        ContainerDevice(uuid=G0, usedmem=3000, usedcores=30),
        ContainerDevice(uuid=G1, usedmem=5000, usedcores=100),
    )
    config = InjectionConfig(host_hook_dir="/host/vgpu", core_policy="force")
    result = container_allocation(_pod(vulkan=True), ContainerInfo("main", False, priority=0), devices, config)
    assert result.spec is not None
    assert result.spec_file is not None
    decoded = spec.parse_spec(result.spec)
    assert decoded == spec.ContainerSpec(
        region=RegionSpec(
            devices=(RegionDevice(G0, 3000 << 20, 30), RegionDevice(G1, 5000 << 20, 0)),  # 100 % = no limit
            default_sm_limit_percent=30,
            task_priority=0,
            core_policy="force",
        ),
        region_path=result.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"],  # as the container sees it
        allow_disable_control=False,
        vulkan=True,
    )
    (mount,) = [m for m in result.mounts if m.container_path == spec.CONTAINER_PATH]
    assert mount == Mount(spec.CONTAINER_PATH, result.spec_file, read_only=True)
    writable = [m for m in result.mounts if not m.read_only]
    assert writable == [Mount("/usr/local/vgpu", result.cache_dir, False)]
    assert not result.spec_file.startswith(result.cache_dir + "/")


def test_disable_control_is_ignored_outside_the_allowed_namespaces() -> None:
    devices = (ContainerDevice(uuid=G0, usedmem=1, usedcores=0),)
    asks = ContainerInfo("main", False, disable_control=True)
    for config in (InjectionConfig(), InjectionConfig(disable_control_namespaces=frozenset({"other"}))):
        result = container_allocation(_pod(), asks, devices, config)
        assert "/etc/ld.so.preload" in [m.container_path for m in result.mounts]
        assert result.spec is not None
        assert not spec.parse_spec(result.spec).allow_disable_control
    allowed = InjectionConfig(disable_control_namespaces=frozenset({"default"}))
    result = container_allocation(_pod(), asks, devices, allowed)
    assert "/etc/ld.so.preload" not in [m.container_path for m in result.mounts]
    assert result.spec is not None
    assert spec.parse_spec(result.spec).allow_disable_control
    # Allowed but not asked: hamicore is loaded as usual; the spec still says what the namespace may do.
    result = container_allocation(_pod(), ContainerInfo("main", False), devices, allowed)
    assert "/etc/ld.so.preload" in [m.container_path for m in result.mounts]


def test_disable_control_drops_preload_and_vulkan_adds_layer() -> None:
    devices = (ContainerDevice(uuid=G0, usedmem=1, usedcores=0),)
    result = container_allocation(
        _pod(vulkan=True),
        ContainerInfo("main", False, disable_control=True),
        devices,
        InjectionConfig(disable_control_namespaces=frozenset({"default"})),
    )
    paths = [m.container_path for m in result.mounts]
    assert "/etc/ld.so.preload" not in paths
    assert "/etc/vulkan/implicit_layer.d/hami.json" in paths
    assert Mount("/usr/local/vgpu/libvgpu_vk.so", "/usr/local/vgpu/libvgpu_vk.so", True) in result.mounts
    assert result.envs["HAMI_VULKAN_ENABLE"] == "1"
    assert "GPU_CORE_UTILIZATION_POLICY" not in result.envs


def test_disable_core_limit_and_oversubscribe() -> None:
    devices = (ContainerDevice(uuid=G0, usedmem=1, usedcores=0),)
    result = container_allocation(
        _pod(),
        ContainerInfo("main", False),
        devices,
        InjectionConfig(disable_core_limit=True, core_policy="force", oversubscribe=True),
    )
    assert result.envs["GPU_CORE_UTILIZATION_POLICY"] == "disable"
    assert result.envs["CUDA_OVERSUBSCRIBE"] == "true"


def test_bad_injection_config() -> None:
    with pytest.raises(ValueError, match="core policy"):
        InjectionConfig(core_policy="sometimes")
    with pytest.raises(ValueError, match="absolute"):
        InjectionConfig(host_hook_dir="vgpu")


def test_region_spec_says_what_the_env_says() -> None:
    devices = (
        ContainerDevice(uuid=G0, usedmem=3000, usedcores=30),
        ContainerDevice(uuid=G1, usedmem=5000, usedcores=100),
    )
    config = InjectionConfig(host_hook_dir="/host/vgpu", core_policy="force")
    result = container_allocation(_pod(), ContainerInfo("main", False, priority=0), devices, config)
    assert result.region_file == "/host/vgpu/containers/uid-1_main/uid-1_main.cache"
    assert result.region == RegionSpec(
        devices=(RegionDevice(G0, 3000 << 20, 30), RegionDevice(G1, 5000 << 20, 100)),
        default_sm_limit_percent=30,
        task_priority=0,
        core_policy="force",
    )
    # A priority hamicore would not accept is its default there too; no priority at all is 1.
    odd = container_allocation(_pod(), ContainerInfo("main", False, priority=500), devices, InjectionConfig())
    assert (odd.region.task_priority, odd.region.core_policy) == (1, "default")
    config = InjectionConfig(disable_core_limit=True)
    plain = container_allocation(_pod(), ContainerInfo("main", False), devices, config)
    assert (plain.region.task_priority, plain.region.core_policy) == (1, "disable")


def test_a_container_with_more_gpus_than_a_region_holds_is_still_allocated() -> None:
    devices = tuple(
        ContainerDevice(uuid=f"GPU-00000000-0000-4000-8000-{i:012x}", usedmem=10, usedcores=0) for i in range(17)
    )
    result = container_allocation(_pod(), ContainerInfo("main", False), devices, InjectionConfig())
    assert result.region is None  # hamicore creates it from the env, for the first 16
    assert result.spec is None
    assert spec.CONTAINER_PATH not in [m.container_path for m in result.mounts]
    assert result.envs["CUDA_DEVICE_MEMORY_LIMIT_16"] == "10m"
