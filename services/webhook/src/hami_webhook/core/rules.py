"""The mutation rules: from a pod (Kubernetes JSON) to a :class:`Decision`, checked in this order:

1. ``hami.io/webhook=ignore`` on the pod: the operator opted it out.
2. Quantities of our resources (limits, else requests) that are not whole non-negative numbers are denied:
   the scheduler would silently drop them. A pod asking none of our resources passes untouched.
3. A pod naming another scheduler is left alone (``default-scheduler`` is taken over unless configured not).
4. Denials for what cannot work: ``spec.nodeName`` preset (skips our scheduler), privileged GPU containers
   (they see every GPU), ``gpumem-percentage`` above 100.
5. Mutations: scheduler name, default GPU count, exclusive cores for whole cards, env, runtime class.

Running the rules again on the patched pod yields no operation (the apiserver may reinvoke webhooks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from hami_shared import names
from hami_shared.errors import MalformedInputError
from hami_shared.quantity import GpuRequest, container_gpu_request

from hami_webhook.core.decision import Allowed, Decision, Denied
from hami_webhook.core.patch import PatchOperation, pointer
from hami_webhook.core.policy import DEFAULT_SCHEDULER, MutationPolicy

EXCLUSIVE_CORES: Final = 100
"""``gpucores`` that marks a card as taken exclusively (HAMi v2.7+)."""
DEFAULT_VULKAN_CAPABILITIES: Final = "compute,utility,graphics"
HIDE_GPUS: Final = "none"
NVIDIA_RESOURCE_PREFIX: Final = "nvidia.com/"
"""Extended resources of NVIDIA device plugins (ours, static MIG's ``nvidia.com/mig-<profile>``, others')."""
"""``NVIDIA_VISIBLE_DEVICES`` for containers that ask no GPU under ``overwriteEnv`` (HAMi's value)."""
"""``NVIDIA_DRIVER_CAPABILITIES`` for a Vulkan pod that set none (the toolkit's default lacks graphics)."""

_CONTAINER_KINDS: Final = ("initContainers", "containers")


@dataclasses.dataclass(frozen=True, slots=True)
class _Container:
    """One container of the pod with where it sits and what it asks."""

    kind: str  # "initContainers" or "containers"
    index: int
    body: Mapping[str, Any]
    request: GpuRequest

    @property
    def name(self) -> str:
        return str(self.body.get("name", f"{self.kind}[{self.index}]"))

    def path(self, *segments: str | int) -> str:
        return pointer("spec", self.kind, self.index, *segments)


def mutate_pod(pod: object, *, policy: MutationPolicy) -> Decision:
    """Review one pod being created; never raises for bad input (bad input is a 400 denial)."""
    try:
        return _mutate(pod, policy)
    except MalformedInputError as exc:
        return Denied(reason="invalid", code=400, message=f"{exc}; correct this value in the pod spec")


def _mutate(pod: object, policy: MutationPolicy) -> Decision:
    pod = as_mapping(pod, "the pod")
    metadata = as_mapping(pod.get("metadata"), "metadata")
    labels = as_mapping(metadata.get("labels"), "metadata.labels")
    ignored = labels.get(names.WEBHOOK_IGNORE_LABEL) == names.WEBHOOK_IGNORE_VALUE
    if ignored and not policy.overwrite_env:
        return Allowed(reason="ignore-label")
    annotations = as_mapping(metadata.get("annotations"), "metadata.annotations")
    spec = as_mapping(pod.get("spec"), "spec")

    containers = [
        _Container(kind=kind, index=index, body=body, request=container_gpu_request(body, policy.resource_names))
        for kind, index, body in pod_containers(spec, _CONTAINER_KINDS)
    ]
    # overwriteEnv hides the GPUs from every container that gets none, whatever scheduler the pod names and even
    # under the ignore label (a pod author sets both): neither changes what the node's runtime gives a container.
    hidden = _hide_gpus_operations(containers, policy)
    if ignored:
        return Allowed(reason="ignore-label", patch=tuple(hidden))
    gpu_containers = [c for c in containers if c.request.any]
    if not gpu_containers:
        return Allowed(reason="gpus-hidden", patch=tuple(hidden)) if hidden else Allowed(reason="no-gpu-request")

    current_scheduler = spec.get("schedulerName") or ""
    if not isinstance(current_scheduler, str):
        raise MalformedInputError("spec.schedulerName", repr(current_scheduler), "must be a string")
    if current_scheduler not in ("", policy.scheduler_name) and not (
        current_scheduler == DEFAULT_SCHEDULER and policy.force_overwrite_default_scheduler
    ):
        return Allowed(
            reason="other-scheduler",
            patch=tuple(hidden),
            warnings=(
                f"pod asks for GPU resources but names scheduler {current_scheduler!r}; "
                f"GPU sharing needs schedulerName {policy.scheduler_name!r}",
            ),
        )

    denial = _deny_what_cannot_work(spec, gpu_containers, policy)
    if denial is not None:
        return denial

    operations: list[PatchOperation] = []
    if current_scheduler != policy.scheduler_name:
        operations.append(PatchOperation(op="add", path=pointer("spec", "schedulerName"), value=policy.scheduler_name))
    if policy.runtime_class_name is not None and not spec.get("runtimeClassName"):
        operations.append(
            PatchOperation(op="add", path=pointer("spec", "runtimeClassName"), value=policy.runtime_class_name)
        )
    vulkan = vulkan_requested(annotations)
    for container in gpu_containers:
        operations.extend(_resource_operations(container, policy))
        env = _read_env(container)
        wanted = _wanted_env(container, env, policy, vulkan=vulkan)
        if policy.overwrite_env and _gets_no_gpu(container, policy):
            wanted[names.ENV_VISIBLE_DEVICES] = HIDE_GPUS  # one env operation per container: they would collide
        operations.extend(_env_operations(container, env, wanted))
    # The containers that ask nothing of ours (the GPU containers' hiding is in their own env operation above).
    operations.extend(_hide_gpus_operations([c for c in containers if not c.request.any], policy))
    return Allowed(reason="mutated" if operations else "already-mutated", patch=tuple(operations))


def _hide_gpus_operations(containers: Sequence[_Container], policy: MutationPolicy) -> list[PatchOperation]:
    """``NVIDIA_VISIBLE_DEVICES=none`` in each container that gets no GPU (HAMi's ``overwriteEnv``); a value the pod
    set, literal or ``valueFrom``, is replaced, and one from ``envFrom`` is overridden by the entry."""
    operations: list[PatchOperation] = []
    if not policy.overwrite_env:
        return operations
    for container in containers:
        if not _gets_no_gpu(container, policy):
            continue
        wanted = {names.ENV_VISIBLE_DEVICES: HIDE_GPUS}
        operations.extend(_env_operations(container, _read_env(container), wanted))
    return operations


def _gets_no_gpu(container: _Container, policy: MutationPolicy) -> bool:
    """Whether the kubelet gives the container no GPU device: it asks no ``nvidia.com/`` resource of another device
    plugin (static MIG's ``nvidia.com/mig-<profile>``: that plugin's list must stand), and its count of ours, after
    the default count this webhook adds, is 0 (``nvidia.com/gpu: 0``, or ``nvidia.com/priority`` alone, get no
    Allocate). A privileged container sees every device whatever the variable says, and HAMi leaves it alone."""
    security = container.body.get("securityContext")
    if isinstance(security, Mapping) and security.get("privileged") is True:
        return False
    ours = set(dataclasses.astuple(policy.resource_names))
    for key in ("limits", "requests"):
        resources = container.body.get("resources")
        asked = resources.get(key) if isinstance(resources, Mapping) else None
        if isinstance(asked, Mapping) and any(
            isinstance(name, str) and name.startswith(NVIDIA_RESOURCE_PREFIX) and name not in ours for name in asked
        ):
            return False
    request = container.request
    count = request.count
    if count is None and (
        request.memory is not None or request.memory_percentage is not None or request.cores is not None
    ):
        count = policy.default_gpu_count
    return not count


# --- reading -------------------------------------------------------------------------------


def as_mapping(value: object, what: str) -> Mapping[str, Any]:
    """``value`` as a JSON object (``None`` = empty); anything else raises :class:`MalformedInputError`."""
    # JSON objects arrive as dicts; the exact type check is several times cheaper than an ABC check.
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedInputError(what, repr(value), "must be a JSON object")
    return value


def pod_containers(spec: Mapping[str, Any], kinds: Iterable[str]) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    """``(kind, index, container)`` of each container listed under ``spec.<kind>``; malformed lists are our error."""
    for kind in kinds:
        value = spec.get(kind)
        if value is None:
            continue
        if not isinstance(value, list):
            raise MalformedInputError(f"spec.{kind}", repr(value), "must be a list of containers")
        for index, body in enumerate(value):
            yield kind, index, as_mapping(body, f"spec.{kind}[{index}]")


# --- denials -------------------------------------------------------------------------------


def _deny_what_cannot_work(
    spec: Mapping[str, Any], gpu_containers: Sequence[_Container], policy: MutationPolicy
) -> Denied | None:
    node_name = spec.get("nodeName")
    if node_name:
        return Denied(
            reason="node-name-set",
            message=(
                f"pod sets spec.nodeName={node_name!r}, which skips the scheduler, so {policy.scheduler_name!r} "
                "cannot assign it GPUs; remove spec.nodeName and pin the pod with a nodeSelector such as "
                f"kubernetes.io/hostname: {node_name}"
            ),
        )
    resource_names = policy.resource_names
    for container in gpu_containers:
        security = as_mapping(container.body.get("securityContext"), f"container {container.name!r} securityContext")
        if security.get("privileged") is True:
            asked = ", ".join(_asked_resources(container.request, policy))
            return Denied(
                reason="privileged",
                message=(
                    f"container {container.name!r} is privileged and asks for {asked}: a privileged container sees "
                    "every GPU of the node, so GPU sharing cannot limit it; remove securityContext.privileged "
                    "from the container, or remove its GPU resources"
                ),
            )
        percentage = container.request.memory_percentage
        if percentage is not None and percentage > 100:
            return Denied(
                reason="percentage-out-of-range",
                code=400,
                message=(
                    f"container {container.name!r} asks for {resource_names.memory_percentage}: {percentage}, "
                    "but a share of a card's memory is a percentage in 0..100; use a value from 0 to 100, "
                    f"or ask for an amount in MiB with {resource_names.memory}"
                ),
            )
    return None


def _asked_resources(request: GpuRequest, policy: MutationPolicy) -> list[str]:
    resource_names = policy.resource_names
    pairs = (
        (resource_names.count, request.count),
        (resource_names.memory, request.memory),
        (resource_names.memory_percentage, request.memory_percentage),
        (resource_names.cores, request.cores),
        (resource_names.priority, request.priority),
    )
    return [f"{name}: {value}" for name, value in pairs if value is not None]


# --- resources -----------------------------------------------------------------------------


def _resource_additions(request: GpuRequest, policy: MutationPolicy) -> dict[str, str]:
    """Resources to add to one container: default GPU count, exclusive cores."""
    additions: dict[str, str] = {}
    count = request.count
    if count is None and (
        request.memory is not None or request.memory_percentage is not None or request.cores is not None
    ):
        count = policy.default_gpu_count
        additions[policy.resource_names.count] = str(count)
    # Whole-card memory (no amount, or 100 %) with no cores asked: mark the card exclusive, so a
    # small pod is not placed next to it and starved (HAMi v2.7+).
    whole_card_memory = request.memory is None and request.memory_percentage in (None, 100)
    if policy.exclusive_cores_for_whole_card and count and request.cores is None and whole_card_memory:
        additions[policy.resource_names.cores] = str(EXCLUSIVE_CORES)
    return additions


def _resource_operations(container: _Container, policy: MutationPolicy) -> list[PatchOperation]:
    additions = _resource_additions(container.request, policy)
    if not additions:
        return []
    resources = as_mapping(container.body.get("resources"), f"container {container.name!r} resources")
    if not resources:
        return [PatchOperation(op="add", path=container.path("resources"), value={"limits": additions})]
    operations = _map_additions(container, "limits", resources.get("limits"), additions)
    # The apiserver copied limits into requests before calling us; extended resources need
    # requests == limits, so mirror our additions when requests already carry our resources.
    requests = resources.get("requests")
    if isinstance(requests, dict) and any(name in requests for name in policy.resource_names.all()):
        operations.extend(_map_additions(container, "requests", requests, additions))
    return operations


def _map_additions(
    container: _Container, key: str, current: object, additions: Mapping[str, str]
) -> list[PatchOperation]:
    if not current:
        return [PatchOperation(op="add", path=container.path("resources", key), value=dict(additions))]
    return [
        PatchOperation(op="add", path=container.path("resources", key, name), value=value)
        for name, value in additions.items()
    ]


# --- environment ---------------------------------------------------------------------------


MANAGED_ENV: Final = (names.ENV_TASK_PRIORITY, names.ENV_CORE_POLICY, names.ENV_VULKAN_ENABLE)
"""Interposer variables the webhook itself sets in GPU containers; a pod may carry them only with these values."""


def managed_env(request: GpuRequest, policy: MutationPolicy, *, vulkan: bool) -> dict[str, str]:
    """The :data:`MANAGED_ENV` values a container asking ``request`` gets (none when it asks no GPU)."""
    wanted: dict[str, str] = {}
    if not request.any:
        return wanted
    if request.priority is not None:
        wanted[names.ENV_TASK_PRIORITY] = str(request.priority)
    if policy.core_policy != "default":
        wanted[names.ENV_CORE_POLICY] = policy.core_policy
    if vulkan:
        wanted[names.ENV_VULKAN_ENABLE] = "1"
    return wanted


def vulkan_requested(annotations: Mapping[str, Any]) -> bool:
    """Whether the pod opted into Vulkan limits (``hami.io/vulkan: "true"``)."""
    return str(annotations.get(names.VULKAN, "")).strip().lower() == "true"


def _wanted_env(
    container: _Container, env: Sequence[Mapping[str, Any]], policy: MutationPolicy, *, vulkan: bool
) -> dict[str, str]:
    wanted = managed_env(container.request, policy, vulkan=vulkan)
    if vulkan:
        index = _last_index(env, names.ENV_DRIVER_CAPABILITIES)
        current = None if index is None else env[index]
        # A value taken from a ConfigMap or Secret (valueFrom) cannot be read here; it is left as the user set it.
        if current is None or "valueFrom" not in current:
            value = None if current is None else current.get("value")
            capabilities = merge_graphics_capability(value if isinstance(value, str) else None)
            if capabilities is not None:
                wanted[names.ENV_DRIVER_CAPABILITIES] = capabilities
    return wanted


def merge_graphics_capability(current: str | None) -> str | None:
    """``NVIDIA_DRIVER_CAPABILITIES`` with ``graphics`` merged in (unset or empty: ``compute,utility,graphics``);
    ``None`` = keep what is there (``all`` already includes graphics)."""
    if current is None or not current.strip():
        return DEFAULT_VULKAN_CAPABILITIES
    parts = [part.strip() for part in current.split(",") if part.strip()]
    if "all" in parts or "graphics" in parts:
        return None
    return ",".join([*parts, "graphics"])


def _read_env(container: _Container) -> list[Mapping[str, Any]]:
    env = container.body.get("env")
    if env is None:
        return []
    if not isinstance(env, list):
        raise MalformedInputError(f"container {container.name!r} env", repr(env), "must be a list of name/value pairs")
    entries = [as_mapping(entry, f"container {container.name!r} env[{i}]") for i, entry in enumerate(env)]
    for i, entry in enumerate(entries):
        if not isinstance(entry.get("name"), str):
            raise MalformedInputError(f"container {container.name!r} env[{i}]", repr(entry), "needs a string 'name'")
    return entries


def _env_operations(
    container: _Container, env: Sequence[Mapping[str, Any]], wanted: Mapping[str, str]
) -> list[PatchOperation]:
    if not wanted:
        return []
    if not env:
        value = [{"name": name, "value": text} for name, text in wanted.items()]
        return [PatchOperation(op="add", path=container.path("env"), value=value)]
    operations: list[PatchOperation] = []
    for name, text in wanted.items():
        index = _last_index(env, name)
        if index is None:
            operations.append(
                PatchOperation(op="add", path=container.path("env", "-"), value={"name": name, "value": text})
            )
        elif dict(env[index]) != {"name": name, "value": text}:
            # Replace the whole entry: it may carry valueFrom, which must not survive next to value.
            operations.append(
                PatchOperation(op="replace", path=container.path("env", index), value={"name": name, "value": text})
            )
    return operations


def _last_index(env: Sequence[Mapping[str, Any]], name: str) -> int | None:
    """The entry the container will see (the last one of a name wins); ``None`` when unset."""
    for index in range(len(env) - 1, -1, -1):
        if env[index].get("name") == name:
            return index
    return None
