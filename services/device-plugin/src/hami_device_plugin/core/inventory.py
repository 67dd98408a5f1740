"""From the GPUs NVML reports to what kubelet and the scheduler see.

* :func:`virtual_devices`: the device IDs advertised to kubelet through ListAndWatch, ``split_count``
  replicas per physical GPU (``<uuid>-<n>``), each with its GPU's health and, when asked, its NUMA node.
* :func:`register_devices`: the inventory for ``hami.io/node-nvidia-register`` (HAMi v2.8+ JSON through
  hami_shared.node_register): scaled memory and cores, model type, NUMA node, mode and health.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from hami_shared.node_register import DeviceInfo, model_type_name
from hami_shared.pod_devices import slot_id

from hami_device_plugin.core.config import DeviceConfig

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
MAX_DEVICE_ID_LENGTH = 63


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    """One physical GPU as discovered. ``memory_mib`` is None when NVML cannot tell (unified memory)."""

    uuid: str
    index: int
    name: str
    memory_mib: int | None
    numa: int = 0
    healthy: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class VirtualDevice:
    """One device ID as kubelet sees it."""

    id: str
    uuid: str
    healthy: bool
    numa: int | None


def usable_gpus(gpus: Iterable[Gpu], config: DeviceConfig) -> tuple[Gpu, ...]:
    """GPUs that are neither filtered out by the node config nor lacking a known memory size."""
    out = []
    for gpu in gpus:
        if config.is_filtered(gpu.uuid, gpu.index):
            continue
        if gpu.memory_mib is None and config.preconfigured_memory_mib <= 0:
            continue
        out.append(gpu)
    return tuple(sorted(out, key=lambda g: g.index))


def virtual_devices(
    gpus: Iterable[Gpu], config: DeviceConfig, counts: Mapping[str, int] | None = None
) -> tuple[VirtualDevice, ...]:
    """Every advertised device ID, GPU by GPU in index order, replicas in order; ``counts`` (GPU UUID -> replicas,
    absent = none) replaces the split count (MIG mode: the instances a card holds at most)."""
    out = []
    for gpu in usable_gpus(gpus, config):
        numa = max(gpu.numa, 0) if config.numa_topology else None
        replicas = config.split_count if counts is None else counts.get(gpu.uuid, 0)
        for replica in range(replicas):
            device_id = slot_id(gpu.uuid, replica)
            if len(device_id) > MAX_DEVICE_ID_LENGTH:
                raise ValueError(f"device ID {device_id!r} is longer than kubelet's {MAX_DEVICE_ID_LENGTH} characters")
            out.append(VirtualDevice(id=device_id, uuid=gpu.uuid, healthy=gpu.healthy, numa=numa))
    return tuple(out)


def register_devices(gpus: Iterable[Gpu], config: DeviceConfig) -> tuple[DeviceInfo, ...]:
    """The node inventory in HAMi's terms (memory in MiB after scaling, cores = 100 x scaling)."""
    out = []
    for gpu in usable_gpus(gpus, config):
        memory = gpu.memory_mib if gpu.memory_mib is not None else config.preconfigured_memory_mib
        out.append(
            DeviceInfo(
                id=gpu.uuid,
                index=gpu.index,
                count=config.split_count,
                devmem=int(memory * config.memory_scaling),
                devcore=round(config.cores_scaling * 100),
                type=model_type_name(gpu.name),
                numa=max(gpu.numa, 0),
                mode=config.mode,
                health=gpu.healthy,
            )
        )
    return tuple(out)
