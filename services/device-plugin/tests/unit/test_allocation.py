"""Allocate's env and mounts for a container."""

from __future__ import annotations

import pytest
from hami_device_plugin.core import spec
from hami_device_plugin.core.allocation import InjectionConfig, Mount, container_allocation
from hami_device_plugin.core.pods import ContainerInfo, pod_record
from hami_device_plugin.core.region import MAX_DEVICES, RegionDevice, RegionSpec
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
    # Both: the spec is what hamicore obeys; the variable serves libraries older than spec 1.1.
    assert result.envs["CUDA_OVERSUBSCRIBE"] == "true"
    assert result.spec is not None
    assert spec.parse_spec(result.spec).oversubscribe


def test_without_memory_scaling_neither_the_spec_nor_the_env_oversubscribes() -> None:
    devices = (ContainerDevice(uuid=G0, usedmem=1, usedcores=0),)
    result = container_allocation(_pod(), ContainerInfo("main", False), devices, InjectionConfig())
    assert "CUDA_OVERSUBSCRIBE" not in result.envs
    assert result.spec is not None
    assert not spec.parse_spec(result.spec).oversubscribe


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


# --- device list strategy (NVIDIA's deviceListStrategy) ---------------------------------------------------------


def _two_gpus(config: InjectionConfig):  # type: ignore[no-untyped-def]
    devices = (
        ContainerDevice(uuid=G1, usedmem=3000, usedcores=30),
        ContainerDevice(uuid=G0, usedmem=5000, usedcores=0),
    )
    return container_allocation(_pod(), ContainerInfo("main", False, priority=1), devices, config)


def test_envvar_is_the_default_and_names_the_gpus_without_device_list_mounts() -> None:
    result = _two_gpus(InjectionConfig(host_hook_dir="/host/vgpu"))
    assert result.envs["NVIDIA_VISIBLE_DEVICES"] == f"{G1},{G0}"
    assert not [m for m in result.mounts if m.container_path.startswith("/var/run/nvidia-container-devices")]
    assert result == _two_gpus(
        InjectionConfig(host_hook_dir="/host/vgpu", device_list_strategies=frozenset({"envvar"}))
    )


def test_volume_mounts_pass_each_gpu_as_a_read_only_dev_null_mount_and_the_env_names_the_directory() -> None:
    envvar = _two_gpus(InjectionConfig(host_hook_dir="/host/vgpu"))
    result = _two_gpus(InjectionConfig(host_hook_dir="/host/vgpu", device_list_strategies=frozenset({"volume-mounts"})))
    # NVIDIA's value: a toolkit that ignores the mounts finds no device of that name, rather than every GPU.
    assert result.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
    device_mounts = tuple(m for m in result.mounts if m.container_path.startswith("/var/run/nvidia-container-devices/"))
    assert device_mounts == (
        Mount(f"/var/run/nvidia-container-devices/{G1}", "/dev/null", True),
        Mount(f"/var/run/nvidia-container-devices/{G0}", "/dev/null", True),
    )
    # Everything else is what envvar gives: the limits, the interposer, the read-only spec.
    assert {k: v for k, v in result.envs.items() if k != "NVIDIA_VISIBLE_DEVICES"} == {
        k: v for k, v in envvar.envs.items() if k != "NVIDIA_VISIBLE_DEVICES"
    }
    assert tuple(m for m in result.mounts if m not in device_mounts) == envvar.mounts
    assert Mount("/etc/hami/vgpu.spec", "/host/vgpu/containers/uid-1_main.spec", True) in result.mounts
    assert (result.spec, result.region, result.spec_file) == (envvar.spec, envvar.region, envvar.spec_file)


def test_a_list_of_both_strategies_behaves_as_volume_mounts_like_nvidias_plugin() -> None:
    both = _two_gpus(InjectionConfig(device_list_strategies=frozenset({"envvar", "volume-mounts"})))
    assert both == _two_gpus(InjectionConfig(device_list_strategies=frozenset({"volume-mounts"})))
    assert both.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"


def test_volume_mounts_for_more_gpus_than_a_region_holds_name_every_gpu() -> None:
    devices = tuple(ContainerDevice(uuid=f"GPU-{i:02d}", usedmem=1, usedcores=0) for i in range(MAX_DEVICES + 2))
    config = InjectionConfig(device_list_strategies=frozenset({"volume-mounts"}))
    result = container_allocation(_pod(), ContainerInfo("main", False), devices, config)
    named = [m.container_path.rpartition("/")[2] for m in result.mounts if m.host_path == "/dev/null"]
    assert named == [d.uuid for d in devices]


@pytest.mark.parametrize("uuid", ["GPU-a/../../etc", "..", "."])
def test_a_uuid_that_would_name_another_directory_gets_no_mount(uuid: str) -> None:
    config = InjectionConfig(device_list_strategies=frozenset({"volume-mounts"}))
    with pytest.raises(ValueError, match="cannot name a device-list mount"):
        container_allocation(
            _pod(), ContainerInfo("main", False), (ContainerDevice(uuid=uuid, usedmem=1, usedcores=0),), config
        )


@pytest.mark.parametrize(
    ("strategies", "message"),
    [
        (frozenset(), "is empty"),
        (frozenset({"cdi-annotations"}), "not supported"),
        (frozenset({"cdi-cri", "envvar"}), "not supported"),
        (frozenset({"volume_mounts"}), "is not one of envvar, volume-mounts"),
    ],
)
def test_unknown_device_list_strategies_are_refused(strategies: frozenset[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InjectionConfig(device_list_strategies=strategies)
