"""Resource names and annotation keys of HAMi v2.8+, shared by every service, and the other names and limits
two parts of the stack must agree on (container environment, scheduler names, the hook directory's files).

Resource names are configurable (HAMi's ``hami-scheduler-device`` ConfigMap lets operators
rename them), so services take a :class:`ResourceNames` value instead of using the defaults
directly. Annotation keys are part of the wire contract with HAMi and are fixed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final, Literal, get_args

# --- node annotations -------------------------------------------------------------------
NODE_REGISTER: Final = "hami.io/node-nvidia-register"
"""Node inventory written by the device plugin (JSON, HAMi v2.8+)."""
NODE_HANDSHAKE: Final = "hami.io/node-handshake"
"""HAMi's scheduler/device-plugin liveness annotation; the admission policy guards it like the others."""
NODE_SCORE: Final = "hami.io/node-nvidia-score"
"""HAMi's pair scores of the node's GPUs (JSON, hami_shared.topology_codec), for the ``topology-aware`` policy."""
NODE_TOPOLOGY: Final = "hami.io/node-nvidia-topology"
"""Ours (not HAMi's): the GPU interconnect the pair scores come from (versioned JSON, hami_shared.topology_codec)."""
DEVICE_CORDON: Final = "hami.io/device-cordon"
"""Comma-separated GPU UUIDs excluded from new allocations."""

# --- pod annotations written by the scheduler extender ------------------------------------
VGPU_NODE: Final = "hami.io/vgpu-node"
VGPU_TIME: Final = "hami.io/vgpu-time"
DEVICES_TO_ALLOCATE: Final = "hami.io/vgpu-devices-to-allocate"
DEVICES_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
BIND_PHASE: Final = "hami.io/bind-phase"
BIND_TIME: Final = "hami.io/bind-time"
DEVICE_SLOTS: Final = "hami.io/vgpu-device-slots"
"""Ours (not HAMi's): per container, the virtual device IDs (``<uuid>-<n>``) the extender
chose, so the device plugin can steer kubelet to them and identify the pod in Allocate."""
MIG_ALLOCATIONS: Final = "hami.io/vgpu-mig-allocations"
"""HAMi HEAD's MIG reservations (hami_shared.mig): written by the extender, completed by the device plugin."""

# --- user-facing pod annotations ----------------------------------------------------------
USE_GPUTYPE: Final = "nvidia.com/use-gputype"
NOUSE_GPUTYPE: Final = "nvidia.com/nouse-gputype"
USE_GPUUUID: Final = "nvidia.com/use-gpuuuid"
NOUSE_GPUUUID: Final = "nvidia.com/nouse-gpuuuid"
VGPU_MODE: Final = "nvidia.com/vgpu-mode"
NUMA_BIND: Final = "nvidia.com/numa-bind"
NODE_SCHEDULER_POLICY: Final = "hami.io/node-scheduler-policy"
GPU_SCHEDULER_POLICY: Final = "hami.io/gpu-scheduler-policy"
VULKAN: Final = "hami.io/vulkan"

# --- labels ---------------------------------------------------------------------------------
WEBHOOK_IGNORE_LABEL: Final = "hami.io/webhook"
WEBHOOK_IGNORE_VALUE: Final = "ignore"

# --- container env read by the stack --------------------------------------------------------
ENV_DISABLE_CONTROL: Final = "CUDA_DISABLE_CONTROL"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
ENV_TASK_PRIORITY: Final = "CUDA_TASK_PRIORITY"
ENV_MEMORY_LIMIT: Final = "CUDA_DEVICE_MEMORY_LIMIT"
ENV_SM_LIMIT: Final = "CUDA_DEVICE_SM_LIMIT"
ENV_SHARED_CACHE: Final = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
ENV_LOG_LEVEL: Final = "LIBCUDA_LOG_LEVEL"
ENV_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"
ENV_DRIVER_CAPABILITIES: Final = "NVIDIA_DRIVER_CAPABILITIES"
ENV_VULKAN_ENABLE: Final = "HAMI_VULKAN_ENABLE"
ENV_VULKAN_DISABLE: Final = "HAMI_VULKAN_DISABLE"
CorePolicy = Literal["default", "force", "disable"]
CORE_POLICIES: Final[tuple[CorePolicy, ...]] = get_args(CorePolicy)
"""The values of ``GPU_CORE_UTILIZATION_POLICY`` (hamicore's HAMI_CORE_POLICY_*)."""
ENV_OVERSUBSCRIBE: Final = "CUDA_OVERSUBSCRIBE"
"""Memory oversubscription: the device plugin sets it from its node setting; the webhook refuses pods that set it."""

# --- scheduler names ------------------------------------------------------------------------
SCHEDULER_NAME: Final = "hami-scheduler"
"""The stack's scheduler by default: the webhook writes it into GPU pods, the extender and the device plugin trust
placements of pods that name it."""
KUBE_DEFAULT_SCHEDULER: Final = "default-scheduler"
"""Kubernetes' scheduler name of a pod that names none."""

# --- the hook directory: hami-lib-installer installs it on the node, the device plugin mounts it into containers --
HOOK_DIR: Final = "/usr/local/vgpu"
"""On the node (the installer's destination) and, by default, in the container."""
HOOK_LIBRARY: Final = "libvgpu.so"
HOOK_VULKAN_LIBRARY: Final = "libvgpu_vk.so"
HOOK_PRELOAD: Final = "ld.so.preload"
"""The file mounted at the container's /etc/ld.so.preload: the path of libvgpu.so as the container sees it."""
HOOK_VULKAN_MANIFEST: Final = "vulkan/implicit_layer.d/hami.json"

# --- Kubernetes ------------------------------------------------------------------------------
LABEL_VALUE_MAX: Final = 63
"""The longest label value Kubernetes accepts (a longer node name cannot be written as one)."""
TERMINAL_POD_PHASES: Final = frozenset({"Succeeded", "Failed"})
"""Pod phases after which no container of the pod runs again."""

DEVICE_TYPE_NVIDIA: Final = "NVIDIA"
"""Vendor keyword used in pod device records (not the GPU model)."""

_MAX_RESOURCE_NAME_CHARS: Final = 253 + 1 + 63  # a DNS subdomain prefix, '/', a name (Kubernetes' limits)
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResourceNames:
    """The extended-resource names of the NVIDIA device family (HAMi defaults)."""

    count: str = "nvidia.com/gpu"
    memory: str = "nvidia.com/gpumem"
    memory_percentage: str = "nvidia.com/gpumem-percentage"
    cores: str = "nvidia.com/gpucores"
    priority: str = "nvidia.com/priority"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or len(value) > _MAX_RESOURCE_NAME_CHARS or not _RESOURCE_NAME.match(value):
                raise ValueError(
                    f"resource name for {field.name!r} is {str(value)[:80]!r}: it must look like "
                    "'<domain>/<name>', e.g. 'nvidia.com/gpumem'"
                )
        if len(set(self.all())) != len(self.all()):
            raise ValueError(f"resource names must be distinct, got {list(self.all())}")

    def all(self) -> tuple[str, ...]:
        """Every name, in declaration order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


DEFAULT_RESOURCE_NAMES: Final = ResourceNames()
