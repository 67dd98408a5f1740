"""The container's side of Allocate: the environment and mounts that bring its GPUs, its limits and
the interposer (HAMi's env names, which hamicore's libvgpu.so reads).

Mounts (host paths under the lib-installer's directory): ``libvgpu.so``, ``/etc/ld.so.preload`` (unless the
container sets ``CUDA_DISABLE_CONTROL=true`` in a namespace the operator allows it in), the per-container
directory ``<podUID>_<name>`` of the regions directory at the hook directory (read-write: the counters), the
container's spec next to that directory at ``/etc/hami/vgpu.spec`` (read-only, :mod:`~hami_device_plugin.core.spec`),
and for Vulkan pods the Vulkan layer manifest and ``libvgpu_vk.so``.

How the container toolkit learns the GPU set (NVIDIA's ``deviceListStrategy``): ``envvar`` (the default) puts the
UUIDs in ``NVIDIA_VISIBLE_DEVICES``; ``volume-mounts`` mounts ``/dev/null`` at
``/var/run/nvidia-container-devices/<uuid>`` per GPU, as NVIDIA's plugin does. A toolkit that accepts only those
mounts takes the GPU set from what kubelet adds through Allocate: an image's ``ENV NVIDIA_VISIBLE_DEVICES=all``
gives nothing. Both together behave as ``volume-mounts``, as in NVIDIA's plugin.

The env is what HAMi-core and libraries older than the spec read; the spec is what hamicore enforces: the
container can override env (pod env is applied after ours) but can neither write nor redirect the spec. The
region (:class:`~hami_device_plugin.core.region.RegionSpec`) and the spec are described from the same values.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable, Mapping
from typing import Final

from hami_shared import names
from hami_shared.pod_devices import ContainerDevices

from hami_device_plugin.core import spec as spec_format
from hami_device_plugin.core.pods import ContainerInfo, PodRecord
from hami_device_plugin.core.records import effective_priority
from hami_device_plugin.core.region import MAX_DEVICES, RegionDevice, RegionSpec

LIBRARY: Final = names.HOOK_LIBRARY
VULKAN_LIBRARY: Final = names.HOOK_VULKAN_LIBRARY
PRELOAD_FILE: Final = names.HOOK_PRELOAD
VULKAN_MANIFEST: Final = names.HOOK_VULKAN_MANIFEST
CONTAINER_PRELOAD: Final = "/etc/ld.so.preload"
CONTAINER_VULKAN_MANIFEST: Final = "/etc/vulkan/implicit_layer.d/hami.json"
CONTAINERS_DIR: Final = "containers"
CORE_POLICIES: Final = names.CORE_POLICIES

DEVICE_LIST_ENVVAR: Final = "envvar"
DEVICE_LIST_VOLUME_MOUNTS: Final = "volume-mounts"
DEVICE_LIST_STRATEGIES: Final = (DEVICE_LIST_ENVVAR, DEVICE_LIST_VOLUME_MOUNTS)
NVIDIA_ONLY_STRATEGIES: Final = ("cdi-annotations", "cdi-cri")
"""NVIDIA's CDI strategies: they need CDI specs of the GPUs on the node, which this plugin does not generate."""
DEVICE_LIST_MOUNT_ROOT: Final = "/var/run/nvidia-container-devices"
"""The container toolkit reads a device list from mounts of ``DEVICE_LIST_MOUNT_SOURCE`` below this directory."""
DEVICE_LIST_MOUNT_SOURCE: Final = "/dev/null"


def device_list_strategies(values: Iterable[str]) -> frozenset[str]:
    """The device list strategies named in ``values`` (NVIDIA's names); ValueError says what to write."""
    chosen: set[str] = set()
    for value in values:
        if value in NVIDIA_ONLY_STRATEGIES:
            raise ValueError(
                f"device list strategy {value!r} (NVIDIA's CDI strategy) is not supported: this plugin writes no "
                f"CDI specs; write {' or '.join(DEVICE_LIST_STRATEGIES)}"
            )
        if value not in DEVICE_LIST_STRATEGIES:
            raise ValueError(
                f"device list strategy {value[:64]!r} is not one of {', '.join(DEVICE_LIST_STRATEGIES)} "
                "(a comma list of both behaves as volume-mounts)"
            )
        chosen.add(value)
    if not chosen:
        raise ValueError(f"the device list strategy is empty; write {' or '.join(DEVICE_LIST_STRATEGIES)}")
    return frozenset(chosen)


@dataclasses.dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InjectionConfig:
    """Node-wide settings of what Allocate injects."""

    host_hook_dir: str = names.HOOK_DIR
    """Where hami-lib-installer put libvgpu.so and friends on the host; per-container dirs go below it."""
    container_hook_dir: str = names.HOOK_DIR
    """Where containers see that directory (ld.so.preload and the Vulkan manifest name this path)."""
    host_regions_dir: str | None = None
    """Host directory of the per-container directories (default ``<host_hook_dir>/containers``)."""
    core_policy: str | None = None
    disable_core_limit: bool = False
    libcuda_log_level: int | None = None
    oversubscribe: bool = False
    """memory-scaling > 1: in the spec (what hamicore obeys) and ``CUDA_OVERSUBSCRIBE`` (for libraries older than
    spec 1.1; a newer one ignores the environment's value when a spec is mounted)."""
    disable_control_namespaces: frozenset[str] = frozenset()
    """Namespaces whose containers may turn hamicore off with ``CUDA_DISABLE_CONTROL=true`` (default: none)."""
    device_list_strategies: frozenset[str] = frozenset({DEVICE_LIST_ENVVAR})
    """How the container toolkit gets the GPU set: :data:`DEVICE_LIST_STRATEGIES` (see the module docstring)."""

    def __post_init__(self) -> None:
        device_list_strategies(self.device_list_strategies)
        if self.core_policy is not None and self.core_policy not in CORE_POLICIES:
            raise ValueError(f"core policy {self.core_policy!r} is not one of {CORE_POLICIES}")
        for path in (self.host_hook_dir, self.container_hook_dir, self.regions_dir):
            if not posixpath.isabs(path):
                raise ValueError(f"directory {path!r} must be an absolute path")

    @property
    def regions_dir(self) -> str:
        return self.host_regions_dir or posixpath.join(self.host_hook_dir, CONTAINERS_DIR)


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerAllocation:
    envs: Mapping[str, str]
    mounts: tuple[Mount, ...]
    cache_dir: str
    """Host path of the per-container directory (the adapter creates it)."""
    region_file: str
    """Host path of the container's accounting region (``CUDA_DEVICE_MEMORY_SHARED_CACHE`` inside)."""
    region: RegionSpec | None
    """What hamicore reads from ``envs``, for the adapter to create the region with (the same limits); None
    for a container with more GPUs than a region has records (hamicore then creates it, for the first 16)."""
    spec_file: str | None = None
    """Host path of the container's spec (mounted read-only at ``spec.CONTAINER_PATH``); None with ``region``."""
    spec: bytes | None = None
    """The spec's image, for the adapter to publish at ``spec_file`` before answering kubelet."""


def container_dir_name(pod_uid: str, container: str) -> str:
    return f"{pod_uid}_{container}"


def device_list_mounts(devices: ContainerDevices) -> list[Mount]:
    """One read-only ``/dev/null`` mount per GPU, named by its UUID, in the container's limit order."""
    mounts: list[Mount] = []
    for device in devices:
        # UUIDs matched kubelet's IDs of our own GPUs; a path separator would still name another directory.
        if "/" in device.uuid or device.uuid in (".", ".."):
            raise ValueError(f"GPU UUID {device.uuid[:64]!r} cannot name a device-list mount")
        mounts.append(Mount(posixpath.join(DEVICE_LIST_MOUNT_ROOT, device.uuid), DEVICE_LIST_MOUNT_SOURCE, True))
    return mounts


def container_allocation(
    pod: PodRecord, container: ContainerInfo, devices: ContainerDevices, config: InjectionConfig
) -> ContainerAllocation:
    """Env and mounts for ``container`` of ``pod`` holding ``devices`` (in the annotated order)."""
    if not devices:
        raise ValueError("a container allocation needs at least one device")
    host = config.host_hook_dir
    inside = config.container_hook_dir
    dir_name = container_dir_name(pod.uid, container.name)
    cache_dir = posixpath.join(config.regions_dir, dir_name)
    region_name = f"{dir_name}.cache"
    envs: dict[str, str] = {
        names.ENV_VISIBLE_DEVICES: ",".join(d.uuid for d in devices),
        names.ENV_SM_LIMIT: str(devices[0].usedcores),
        names.ENV_SHARED_CACHE: posixpath.join(inside, region_name),
    }
    for i, device in enumerate(devices):
        envs[f"{names.ENV_MEMORY_LIMIT}_{i}"] = f"{device.usedmem}m"
        envs[f"{names.ENV_SM_LIMIT}_{i}"] = str(device.usedcores)
    core_policy = "default"
    if config.disable_core_limit:
        core_policy = envs[names.ENV_CORE_POLICY] = "disable"
    elif config.core_policy is not None:
        core_policy = envs[names.ENV_CORE_POLICY] = config.core_policy
    if container.priority is not None:
        envs[names.ENV_TASK_PRIORITY] = str(container.priority)
    if config.libcuda_log_level is not None:
        envs[names.ENV_LOG_LEVEL] = str(config.libcuda_log_level)
    if config.oversubscribe:
        envs[names.ENV_OVERSUBSCRIBE] = "true"
    mounts: list[Mount] = []
    if DEVICE_LIST_VOLUME_MOUNTS in config.device_list_strategies:
        envs[names.ENV_VISIBLE_DEVICES] = DEVICE_LIST_MOUNT_ROOT
        mounts.extend(device_list_mounts(devices))
    mounts += [
        Mount(inside, cache_dir, read_only=False),
        Mount(posixpath.join(inside, LIBRARY), posixpath.join(host, LIBRARY), read_only=True),
    ]
    disable_allowed = pod.namespace in config.disable_control_namespaces
    if not (container.disable_control and disable_allowed):
        mounts.append(Mount(CONTAINER_PRELOAD, posixpath.join(host, PRELOAD_FILE), read_only=True))
    if pod.vulkan:
        envs[names.ENV_VULKAN_ENABLE] = "1"
        mounts.append(Mount(CONTAINER_VULKAN_MANIFEST, posixpath.join(host, VULKAN_MANIFEST), read_only=True))
        mounts.append(
            Mount(posixpath.join(inside, VULKAN_LIBRARY), posixpath.join(host, VULKAN_LIBRARY), read_only=True)
        )
    # hamicore reads a priority outside 0..100 as the default, 1 (and says so in the container's log).
    priority = effective_priority(container.priority)
    region = spec_image = spec_file = None
    if len(devices) <= MAX_DEVICES:
        region = RegionSpec(
            devices=tuple(RegionDevice(d.uuid, d.usedmem << 20, d.usedcores) for d in devices),
            default_sm_limit_percent=devices[0].usedcores,
            task_priority=priority,
            core_policy=core_policy,
        )
        # Next to the per-container directory, not in it: the container can write that directory.
        spec_file = f"{cache_dir}.spec"
        spec_image = spec_format.build_spec(
            region,
            envs[names.ENV_SHARED_CACHE],
            allow_disable_control=disable_allowed,
            vulkan=pod.vulkan,
            oversubscribe=config.oversubscribe,
        )
        mounts.append(Mount(spec_format.CONTAINER_PATH, spec_file, read_only=True))
    return ContainerAllocation(
        envs=envs,
        mounts=tuple(mounts),
        cache_dir=cache_dir,
        region_file=posixpath.join(cache_dir, region_name),
        region=region,
        spec_file=spec_file,
        spec=spec_image,
    )
