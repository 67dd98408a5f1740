"""What the operator configured the mutation rules to do (a pure value, built by the app).

Defaults follow HAMi v2.7+: GPU pods go to ``hami-scheduler`` (overwriting ``default-scheduler``), one GPU
is added when only memory or cores are asked, whole-card requests get ``gpucores: 100`` (exclusive).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from hami_shared import names
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames

CorePolicy = names.CorePolicy
CORE_POLICIES: Final = names.CORE_POLICIES
DEFAULT_SCHEDULER: Final = names.KUBE_DEFAULT_SCHEDULER
"""The name the apiserver fills in when a pod names no scheduler."""

# A scheduler name or runtime class name is a DNS subdomain (RFC 1123), at most 253 characters.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MutationPolicy:
    """Knobs of the mutation rules; validated on construction (``ValueError`` says what to change)."""

    scheduler_name: str = names.SCHEDULER_NAME
    resource_names: ResourceNames = DEFAULT_RESOURCE_NAMES
    default_gpu_count: int = 1
    exclusive_cores_for_whole_card: bool = True
    force_overwrite_default_scheduler: bool = True
    runtime_class_name: str | None = None
    core_policy: CorePolicy = "default"
    disable_control_namespaces: frozenset[str] = frozenset()
    """Namespaces whose pods may set ``CUDA_DISABLE_CONTROL`` (run without the interposer); empty = none."""
    overwrite_env: bool = False
    """HAMi's ``overwriteEnv``: containers that ask no GPU get ``NVIDIA_VISIBLE_DEVICES=none``, so a node whose
    default runtime is NVIDIA's gives them no GPU even when their image sets ``NVIDIA_VISIBLE_DEVICES=all`` (CUDA
    images do)."""

    def __post_init__(self) -> None:
        _check_dns_subdomain("scheduler name", self.scheduler_name)
        if self.runtime_class_name is not None:
            _check_dns_subdomain("runtime class name", self.runtime_class_name)
        if isinstance(self.default_gpu_count, bool) or not 1 <= self.default_gpu_count <= 128:
            raise ValueError(f"default GPU count {self.default_gpu_count!r} must be a whole number in 1..128")
        if self.core_policy not in CORE_POLICIES:
            raise ValueError(f"core policy {self.core_policy!r} must be one of {', '.join(CORE_POLICIES)}")
        for namespace in sorted(self.disable_control_namespaces):
            if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
                raise ValueError(f"namespace {namespace!r} must be a lowercase DNS label such as 'gpu-admin'")


def _check_dns_subdomain(what: str, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{what} {value!r} must be a lowercase DNS name such as 'hami-scheduler'")
