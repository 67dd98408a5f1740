"""What a pod asks for, resolved with HAMi's semantics, plus its placement options.

Resolution of one container (HAMi ``GenerateResourceRequests``):

- ``nvidia.com/gpu`` is the number of physical cards, each a slice of a distinct card.
  When only memory, percentage or cores are given, the count is ``default_gpu_num`` (1).
- Memory per card: ``gpumem`` (x ``memory_factor``) when set and > 0; else
  ``gpumem-percentage`` of each card (values <= 0 ignored, > 100 clamped); else
  ``default_memory`` when non-zero; else 100 % of the card. So ``nvidia.com/gpu`` alone
  means the whole card's memory.
- Cores: ``gpucores`` (clamped to 100), else ``default_cores`` (0). 100 = exclusive card.

Placement options come from pod annotations: type and UUID allow/deny lists, the operating
mode, NUMA binding, and per-pod node/GPU policies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hami_shared import names
from hami_shared.errors import MalformedInputError
from hami_shared.quantity import GpuRequest, PodGpuRequests

from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.policy import (
    DEFAULT_WEIGHTS,
    DEVICE_SCORING_WEIGHTS,
    GpuPolicy,
    ScoringWeights,
    SortKey,
    parse_gpu_policy,
    parse_scoring_weights,
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestDefaults:
    """Operator defaults (HAMi's device ConfigMap ``nvidia:`` keys)."""

    default_memory: int = 0
    default_cores: int = 0
    default_gpu_num: int = 1
    memory_factor: int = 1

    def __post_init__(self) -> None:
        if self.default_memory < 0 or not 0 <= self.default_cores <= 100:
            raise ValueError("default memory must be >= 0 and default cores within 0..100")
        if self.default_gpu_num < 1:
            raise ValueError("default GPU number must be at least 1")
        if self.memory_factor < 1:
            raise ValueError("memory factor must be at least 1")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ContainerNeed:
    """One container's resolved need: ``count`` cards, each with cores and either ``memory`` (MiB) or
    ``memory_percent``."""

    count: int
    memory: int | None = None
    memory_percent: int | None = None
    cores: int = 0

    def memory_on(self, total_mem: int) -> int:
        """MiB this container takes on a card of ``total_mem`` MiB."""
        if self.memory is not None:
            return self.memory
        return total_mem * (self.memory_percent or 0) // 100


NO_NEED = ContainerNeed(count=0)


def resolve_container(request: GpuRequest, defaults: RequestDefaults) -> ContainerNeed:
    """HAMi's resolution of one container's request (see the module docstring)."""
    asks_share = any(v is not None for v in (request.memory, request.memory_percentage, request.cores))
    if request.count is not None:
        count = request.count
    elif asks_share:
        count = defaults.default_gpu_num
    else:
        return NO_NEED
    if count <= 0:
        return NO_NEED
    cores = min(request.cores if request.cores is not None else defaults.default_cores, 100)
    if request.memory is not None and request.memory > 0:
        return ContainerNeed(count=count, memory=request.memory * defaults.memory_factor, cores=cores)
    if request.memory_percentage is not None and request.memory_percentage > 0:
        return ContainerNeed(count=count, memory_percent=min(request.memory_percentage, 100), cores=cores)
    if defaults.default_memory > 0:
        return ContainerNeed(count=count, memory=defaults.default_memory, cores=cores)
    return ContainerNeed(count=count, memory_percent=100, cores=cores)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlacementOptions:
    """Per-pod constraints and policies from annotations (lists hold lower-cased entries for types)."""

    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: frozenset[str] = frozenset()
    nouse_uuids: frozenset[str] = frozenset()
    vgpu_mode: str | None = None
    numa_bind: bool = False
    node_policy: Policy = Policy.BINPACK
    gpu_policy: Policy = Policy.SPREAD
    # The whole chain (core/policy.py); None: just ``gpu_policy`` (the operator's default, or a test's choice).
    gpu_chain: GpuPolicy | None = None
    weights: ScoringWeights = DEFAULT_WEIGHTS

    @property
    def chain(self) -> GpuPolicy:
        """The GPU policy chain in force: the pod's, else the default policy alone."""
        if self.gpu_chain is not None:
            return self.gpu_chain
        return GpuPolicy(keys=(SortKey(self.gpu_policy.value),))

    @property
    def mutex(self) -> bool:
        return self.gpu_chain is not None and self.gpu_chain.mutex

    @property
    def topology_aware(self) -> bool:
        return self.gpu_chain is not None and self.gpu_chain.topology_aware


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PodRequest:
    """Everything the fit needs about a pod: needs per container (init first), options, and the positions
    of the restartable init containers (``sidecars``)."""

    needs: tuple[ContainerNeed, ...]
    init_containers: int
    options: PlacementOptions
    sidecars: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.init_containers <= len(self.needs):
            raise ValueError("init_containers must be within the number of containers")
        if any(not 0 <= p < self.init_containers for p in self.sidecars):
            raise ValueError("sidecars must be positions of init containers")

    @property
    def wants_gpu(self) -> bool:
        return any(n.count > 0 for n in self.needs)


def resolve_pod(
    requests: PodGpuRequests,
    annotations: Mapping[str, str],
    *,
    defaults: RequestDefaults,
    node_policy: Policy,
    gpu_policy: Policy,
    gpu_chain: GpuPolicy | None = None,
) -> PodRequest:
    """Resolve every container and read the placement annotations; :class:`MalformedInputError` names an
    annotation that cannot be honoured and the accepted values. ``gpu_chain``: the operator's default chain
    when it is more than ``gpu_policy`` (e.g. ``topology-aware``)."""
    return PodRequest(
        needs=tuple(resolve_container(r, defaults) for r in requests.all),
        init_containers=len(requests.init_containers),
        sidecars=requests.sidecars,
        options=placement_options(annotations, node_policy=node_policy, gpu_policy=gpu_policy, gpu_chain=gpu_chain),
    )


def _comma_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _node_policy(annotations: Mapping[str, str], default: Policy) -> Policy:
    key = names.NODE_SCHEDULER_POLICY
    value = annotations.get(key)
    if value is None or not value.strip():
        return default
    part = value.strip().lower()
    if part in (Policy.BINPACK, Policy.SPREAD):
        return Policy(part)
    raise MalformedInputError(key, value, "supported node policies are 'binpack' and 'spread'")


def _gpu_chain(
    annotations: Mapping[str, str], default: Policy, default_chain: GpuPolicy | None
) -> tuple[Policy, GpuPolicy | None]:
    value = annotations.get(names.GPU_SCHEDULER_POLICY)
    if value is None or not value.strip():
        if default_chain is not None:
            return Policy(default_chain.primary.value), default_chain
        return default, None
    chain = parse_gpu_policy(value)
    return Policy(chain.primary.value), chain


def _weights(annotations: Mapping[str, str]) -> ScoringWeights:
    value = annotations.get(DEVICE_SCORING_WEIGHTS)
    if value is None:
        return DEFAULT_WEIGHTS
    return parse_scoring_weights(value)


def placement_options(
    annotations: Mapping[str, str], *, node_policy: Policy, gpu_policy: Policy, gpu_chain: GpuPolicy | None = None
) -> PlacementOptions:
    """Read the user-facing placement annotations (HAMi names)."""
    numa_text = annotations.get(names.NUMA_BIND, "").strip().lower()
    if numa_text not in ("", "true", "false", "1", "0"):
        raise MalformedInputError(names.NUMA_BIND, numa_text, "expected 'true' or 'false'")
    mode = annotations.get(names.VGPU_MODE, "").strip()
    primary, chain = _gpu_chain(annotations, gpu_policy, gpu_chain)
    return PlacementOptions(
        use_types=tuple(t.lower() for t in _comma_list(annotations.get(names.USE_GPUTYPE))),
        nouse_types=tuple(t.lower() for t in _comma_list(annotations.get(names.NOUSE_GPUTYPE))),
        use_uuids=frozenset(_comma_list(annotations.get(names.USE_GPUUUID))),
        nouse_uuids=frozenset(_comma_list(annotations.get(names.NOUSE_GPUUUID))),
        vgpu_mode=mode or None,
        numa_bind=numa_text in ("true", "1"),
        node_policy=_node_policy(annotations, node_policy),
        gpu_policy=primary,
        gpu_chain=chain,
        weights=_weights(annotations),
    )
