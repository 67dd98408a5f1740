"""The tenant guard: what no pod may carry, GPU pod or not (issue 16; docs/security.md).

Runs in the validating webhook on every pod created and every ephemeral container added, after all
mutations. It refuses

* the placement annotations (``hami.io/vgpu-*``, ``hami.io/bind-*``) on a new pod: only the extender's
  Binding and the device plugin write them, and a pod setting them forges where its GPUs are (the
  ValidatingAdmissionPolicy of deploy/kustomize also guards updates; this keeps creation safe without it);
* env entries setting an interposer variable or ``NVIDIA_VISIBLE_DEVICES`` in any container: pod env is
  applied after the device plugin's, so it would replace the limit, the accounting file or the GPU list.
  Allowed: the variables the mutating webhook sets (:data:`~hami_webhook.core.rules.MANAGED_ENV`) with
  exactly its value; ``NVIDIA_VISIBLE_DEVICES`` literally ``void``, ``none`` or empty (they hide GPUs);
  ``CUDA_DISABLE_CONTROL`` in the namespaces of ``--disable-control-namespaces``.

``NVIDIA_DRIVER_CAPABILITIES``, ``CUDA_VISIBLE_DEVICES`` (narrows the set), ``LIBCUDA_LOG_LEVEL`` and
``LD_PRELOAD`` (the interposer comes from a read-only ``/etc/ld.so.preload``) stay allowed. ``envFrom``
cannot be seen at admission, so enforcement never relies on env alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from hami_shared import names
from hami_shared.errors import MalformedInputError
from hami_shared.quantity import container_gpu_request

from hami_webhook.core.decision import Allowed, Decision, Denied
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.rules import MANAGED_ENV, as_mapping, managed_env, pod_containers, vulkan_requested

PLACEMENT_ANNOTATIONS: Final = (
    names.VGPU_NODE,
    names.VGPU_TIME,
    names.DEVICES_TO_ALLOCATE,
    names.DEVICES_ALLOCATED,
    names.BIND_PHASE,
    names.BIND_TIME,
    names.DEVICE_SLOTS,
    names.MIG_ALLOCATIONS,
)
"""Pod annotations only the stack writes (the same list as the ValidatingAdmissionPolicy's)."""

HIDING_GPU_LIST: Final = frozenset({"", "void", "none"})
"""``NVIDIA_VISIBLE_DEVICES`` values that give no GPU (the toolkit's documented "no device" values)."""

MAX_LISTED: Final = 5
"""Refusals named in one message; the rest are counted (the apiserver shows the whole message to the user)."""

MAX_NAME: Final = 253
"""Characters of a container name quoted in a message."""

_CONTAINER_LISTS: Final = ("containers", "initContainers", "ephemeralContainers")


@dataclasses.dataclass(frozen=True, slots=True)
class _EnvRule:
    """Why a variable is the stack's, and what the pod author should do instead."""

    why: str
    instead: Callable[[MutationPolicy], str]


_LIMIT_RULE: Final = _EnvRule(
    "the device plugin sets the container's GPU memory limit",
    lambda p: (
        f"remove it and ask for GPU memory with the resource {p.resource_names.memory} "
        f"or {p.resource_names.memory_percentage}"
    ),
)
_SM_RULE: Final = _EnvRule(
    "the device plugin sets the container's share of the GPU's compute",
    lambda p: f"remove it and ask for a share with the resource {p.resource_names.cores}",
)
_VULKAN_RULE: Final = _EnvRule(
    "Vulkan limits are switched on per pod",
    lambda _p: f'remove it and annotate the pod {names.VULKAN}: "true" to opt in (the webhook sets the variable)',
)
_FORBIDDEN: Final[Mapping[str, _EnvRule]] = {
    names.ENV_MEMORY_LIMIT: _LIMIT_RULE,
    names.ENV_SM_LIMIT: _SM_RULE,
    names.ENV_SHARED_CACHE: _EnvRule(
        "the device plugin places the container's accounting file", lambda _p: "remove it; nothing replaces it"
    ),
    names.ENV_OVERSUBSCRIBE: _EnvRule(
        "memory oversubscription is a node setting of the device plugin",
        lambda _p: "remove it, and ask the cluster operator",
    ),
    names.ENV_VULKAN_DISABLE: _VULKAN_RULE,
    names.ENV_VULKAN_ENABLE: _VULKAN_RULE,
    names.ENV_TASK_PRIORITY: _EnvRule(
        "the task priority comes from the pod's resources",
        lambda p: f"remove it and ask for a priority with the resource {p.resource_names.priority}",
    ),
    names.ENV_CORE_POLICY: _EnvRule(
        "the core utilization policy is the cluster operator's setting", lambda _p: "remove it"
    ),
    names.ENV_DISABLE_CONTROL: _EnvRule(
        "switching the GPU limits off is allowed only in namespaces the cluster operator lists "
        "(hami-webhook --disable-control-namespaces)",
        lambda _p: "remove it, or ask the operator to list this namespace",
    ),
    names.ENV_VISIBLE_DEVICES: _EnvRule(
        "the device plugin sets the GPU list of the container",
        lambda p: (
            f"remove it and ask for GPUs with the resource {p.resource_names.count}; only the values "
            f"{', '.join(repr(v) for v in sorted(HIDING_GPU_LIST))} (no GPU) may be set"
        ),
    ),
}
_FORBIDDEN_PREFIXES: Final[Mapping[str, _EnvRule]] = {
    f"{names.ENV_MEMORY_LIMIT}_": _LIMIT_RULE,
    f"{names.ENV_SM_LIMIT}_": _SM_RULE,
}


def guard_pod(pod: object, *, namespace: str, policy: MutationPolicy) -> Decision:
    """Review a pod being created; never raises for bad input (bad input is a 400 denial)."""
    return _guard(pod, namespace, policy, placement=True, lists=_CONTAINER_LISTS)


def guard_ephemeral_containers(pod: object, *, namespace: str, policy: MutationPolicy) -> Decision:
    """Review a pod whose ephemeral containers change (``kubectl debug``): only those containers' env is
    checked, the others were checked when the pod was created."""
    return _guard(pod, namespace, policy, placement=False, lists=("ephemeralContainers",))


def _guard(pod: object, namespace: str, policy: MutationPolicy, *, placement: bool, lists: tuple[str, ...]) -> Decision:
    try:
        pod = as_mapping(pod, "the pod")
        metadata = as_mapping(pod.get("metadata"), "metadata")
        annotations = as_mapping(metadata.get("annotations"), "metadata.annotations")
        spec = as_mapping(pod.get("spec"), "spec")
        refusals = list(_placement_refusals(annotations)) if placement else []
        for kind, index, container in pod_containers(spec, lists):
            refusals.extend(_container_refusals(container, f"spec.{kind}[{index}]", annotations, namespace, policy))
    except MalformedInputError as exc:
        return Denied(reason="invalid", code=400, message=f"{exc}; correct this value in the pod spec")
    if not refusals:
        return Allowed(reason="guard-passed")
    listed = refusals[:MAX_LISTED]
    more = len(refusals) - len(listed)
    return Denied(reason="tenant-guard", message="; ".join(listed) + (f"; and {more} more" if more else ""))


def _placement_refusals(annotations: Mapping[str, Any]) -> Iterator[str]:
    for key in PLACEMENT_ANNOTATIONS:
        if key in annotations:
            yield (
                f"the pod sets the annotation {key}, which only the GPU scheduler extender and the device plugin "
                f"write; remove {key} from metadata.annotations (a pod copied from a running one carries every "
                "hami.io/vgpu-* and hami.io/bind-* annotation: remove them all)"
            )


def _container_refusals(
    container: Mapping[str, Any],
    where: str,
    annotations: Mapping[str, Any],
    namespace: str,
    policy: MutationPolicy,
) -> Iterator[str]:
    env = container.get("env")
    if env is None:
        return
    if not isinstance(env, list):
        raise MalformedInputError(f"{where}.env", repr(env), "must be a list of name/value pairs")
    # The apiserver has validated the name (a DNS label) before validating webhooks run; clipped for any other caller.
    display = f"container {str(container.get('name', where))[:MAX_NAME]!r}"
    wanted: dict[str, str] | None = None  # computed only when a managed variable shows up
    for index, raw in enumerate(env):
        entry = as_mapping(raw, f"{where}.env[{index}]")
        name = entry.get("name")
        if not isinstance(name, str):
            raise MalformedInputError(f"{where}.env[{index}]", repr(entry), "needs a string 'name'")
        rule = _rule_for(name)
        if rule is None:
            continue
        literal = entry.get("value") if "valueFrom" not in entry else None
        if name == names.ENV_VISIBLE_DEVICES and isinstance(literal, str) and literal.strip() in HIDING_GPU_LIST:
            continue
        if name == names.ENV_DISABLE_CONTROL and namespace in policy.disable_control_namespaces:
            continue
        if name in MANAGED_ENV:
            if wanted is None:
                request = container_gpu_request(container, policy.resource_names)
                wanted = managed_env(request, policy, vulkan=vulkan_requested(annotations))
            if isinstance(literal, str) and wanted.get(name) == literal:
                continue
        yield (
            f"{display} sets {name} ({where}.env[{index}]), which a pod may not set: {rule.why}; {rule.instead(policy)}"
        )


def _rule_for(name: str) -> _EnvRule | None:
    rule = _FORBIDDEN.get(name)
    if rule is not None:
        return rule
    for prefix, prefixed in _FORBIDDEN_PREFIXES.items():
        if name.startswith(prefix):
            return prefixed
    return None
