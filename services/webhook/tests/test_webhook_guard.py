"""The tenant guard (POST /validate): placement annotations and interposer env are refused in every pod.

Each case replays one attack of issue 16 ("Why") at the rule level; tests/e2e/test_security_admission.py
replays them against the real apiserver.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hami_shared import names
from hami_webhook.core import admission
from hami_webhook.core.decision import Allowed, Denied
from hami_webhook.core.guard import MAX_LISTED, PLACEMENT_ANNOTATIONS, guard_ephemeral_containers, guard_pod
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.review import parse_review
from hami_webhook.core.rules import mutate_pod
from webhook_pods import apply_decision, container, pod, review

POLICY = MutationPolicy()
GPU = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}


def denied(decision: Any) -> Denied:
    assert isinstance(decision, Denied), decision
    return decision


def env(name: str, value: str = "x") -> list[dict[str, Any]]:
    return [{"name": name, "value": value}]


def test_a_plain_pod_passes() -> None:
    decision = guard_pod(pod(container(env=env("PATH", "/bin"))), namespace="t", policy=POLICY)
    assert decision == Allowed(reason="guard-passed")


@pytest.mark.parametrize("key", PLACEMENT_ANNOTATIONS)
def test_every_placement_annotation_is_refused_on_create(key: str) -> None:
    """Attack: forged placement annotations on a pod without GPUs (counts a card as full)."""
    decision = denied(guard_pod(pod(annotations={key: "x"}), namespace="t", policy=POLICY))
    assert decision.code == 403
    assert key in decision.message
    assert "remove" in decision.message


def test_the_list_matches_the_shared_annotation_keys() -> None:
    pod_keys = {
        value
        for attr, value in vars(names).items()
        if isinstance(value, str) and (value.startswith(("hami.io/vgpu-", "hami.io/bind-")))
    }
    assert set(PLACEMENT_ANNOTATIONS) == pod_keys


def test_user_annotations_of_the_hami_domain_pass() -> None:
    annotations = {names.VULKAN: "true", names.GPU_SCHEDULER_POLICY: "binpack", "hami.io/other": "x"}
    assert isinstance(guard_pod(pod(annotations=annotations), namespace="t", policy=POLICY), Allowed)


@pytest.mark.parametrize(
    "name",
    [
        "CUDA_DEVICE_MEMORY_LIMIT",
        "CUDA_DEVICE_MEMORY_LIMIT_0",
        "CUDA_DEVICE_MEMORY_LIMIT_15",
        "CUDA_DEVICE_SM_LIMIT",
        "CUDA_DEVICE_SM_LIMIT_3",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        "CUDA_OVERSUBSCRIBE",
        "HAMI_VULKAN_DISABLE",
        "HAMI_VULKAN_ENABLE",
        "CUDA_TASK_PRIORITY",
        "GPU_CORE_UTILIZATION_POLICY",
        "CUDA_DISABLE_CONTROL",
        "NVIDIA_VISIBLE_DEVICES",
    ],
)
@pytest.mark.parametrize("kind", ["containers", "initContainers", "ephemeralContainers"])
def test_interposer_variables_are_refused_in_a_pod_without_gpus(name: str, kind: str) -> None:
    """Attack: the container controls its own enforcement (CUDA_DEVICE_MEMORY_LIMIT=80g, ...,
    NVIDIA_VISIBLE_DEVICES=all in a non-GPU pod)."""
    subject = pod(container("app"))
    subject["spec"].setdefault(kind, []).append(container("sneaky", env=[{"name": "A", "value": "1"}, *env(name)]))
    decision = denied(guard_pod(subject, namespace="t", policy=POLICY))
    index = 1 if kind == "containers" else 0
    assert f"container 'sneaky' sets {name} (spec.{kind}[{index}].env[1])" in decision.message
    assert decision.code == 403


def test_value_from_does_not_hide_the_variable() -> None:
    entry = {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
    decision = guard_pod(pod(container(env=[entry])), namespace="t", policy=POLICY)
    assert "NVIDIA_VISIBLE_DEVICES" in denied(decision).message


@pytest.mark.parametrize("value", ["void", "none", "", " none "])
def test_visible_devices_may_hide_every_gpu(value: str) -> None:
    decision = guard_pod(pod(container(env=env("NVIDIA_VISIBLE_DEVICES", value))), namespace="t", policy=POLICY)
    assert isinstance(decision, Allowed)


@pytest.mark.parametrize("value", ["all", "0", "GPU-1234", "none,all"])
def test_visible_devices_naming_gpus_is_refused(value: str) -> None:
    decision = guard_pod(pod(container(env=env("NVIDIA_VISIBLE_DEVICES", value))), namespace="t", policy=POLICY)
    assert "nvidia.com/gpu" in denied(decision).message


@pytest.mark.parametrize(
    "name", ["NVIDIA_DRIVER_CAPABILITIES", "CUDA_VISIBLE_DEVICES", "LIBCUDA_LOG_LEVEL", "LD_PRELOAD", "CUDA_DEVICE"]
)
def test_variables_that_cannot_raise_a_limit_pass(name: str) -> None:
    assert isinstance(guard_pod(pod(container(env=env(name))), namespace="t", policy=POLICY), Allowed)


def test_disable_control_only_in_listed_namespaces() -> None:
    policy = MutationPolicy(disable_control_namespaces=frozenset({"gpu-admin"}))
    subject = pod(container(limits=GPU, env=env("CUDA_DISABLE_CONTROL", "true")))
    assert isinstance(guard_pod(subject, namespace="gpu-admin", policy=policy), Allowed)
    message = denied(guard_pod(subject, namespace="tenant", policy=policy)).message
    assert "--disable-control-namespaces" in message


def test_what_the_mutating_webhook_sets_passes_the_guard() -> None:
    """A pod mutated by /mutate (priority, core policy, Vulkan) passes /validate: the apiserver calls both."""
    policy = MutationPolicy(core_policy="force")
    limits = {**GPU, "nvidia.com/priority": "0"}
    subject = pod(container(limits=limits), annotations={names.VULKAN: "true"})
    mutated = apply_decision(subject, mutate_pod(subject, policy=policy))
    variables = {e["name"] for e in mutated["spec"]["containers"][0]["env"]}
    assert {"CUDA_TASK_PRIORITY", "GPU_CORE_UTILIZATION_POLICY", "HAMI_VULKAN_ENABLE"} <= variables
    assert isinstance(guard_pod(mutated, namespace="t", policy=policy), Allowed)


@pytest.mark.parametrize(
    ("name", "value"),
    [("CUDA_TASK_PRIORITY", "0"), ("GPU_CORE_UTILIZATION_POLICY", "disable"), ("HAMI_VULKAN_ENABLE", "1")],
)
def test_managed_variables_with_another_value_are_refused(name: str, value: str) -> None:
    """Priority 0 without the priority resource, a policy other than the operator's, Vulkan without the
    annotation: each would change enforcement, so each is refused (the mutating webhook may be skipped by
    the hami.io/webhook=ignore label, the guard is not)."""
    policy = MutationPolicy(core_policy="force")
    subject = pod(container(limits=GPU, env=env(name, value)))
    assert name in denied(guard_pod(subject, namespace="t", policy=policy)).message


def test_managed_variables_in_a_container_without_gpus_are_refused() -> None:
    subject = pod(container("gpu", limits=GPU), container("side", env=env("GPU_CORE_UTILIZATION_POLICY", "force")))
    message = denied(guard_pod(subject, namespace="t", policy=MutationPolicy(core_policy="force"))).message
    assert "container 'side'" in message


def test_every_refusal_is_named_up_to_a_bound() -> None:
    entries = [{"name": f"CUDA_DEVICE_MEMORY_LIMIT_{i}", "value": "80g"} for i in range(MAX_LISTED + 3)]
    message = denied(
        guard_pod(pod(container(env=entries), annotations={names.VGPU_NODE: "n"}), namespace="t", policy=POLICY)
    ).message
    assert names.VGPU_NODE in message
    assert message.count("which a pod may not set") == MAX_LISTED - 1
    assert message.endswith("and 4 more")


@pytest.mark.parametrize(
    "bad",
    [
        {"spec": {"containers": "x"}},
        {"spec": {"containers": [{"name": "c", "env": {"a": 1}}]}},
        {"spec": {"containers": [{"name": "c", "env": [{"value": "1"}]}]}},
        {"spec": {"containers": [{"name": "c", "env": [3]}]}},
        {"metadata": {"annotations": []}},
        {"spec": {"containers": [{"name": "c", "resources": 1, "env": env("CUDA_TASK_PRIORITY", "1")}]}},
    ],
)
def test_malformed_pods_are_a_400_denial(bad: dict[str, Any]) -> None:
    assert denied(guard_pod(bad, namespace="t", policy=POLICY)).code == 400


def test_ephemeral_containers_update_checks_only_ephemeral_containers() -> None:
    """Attack: kubectl debug with an ephemeral container that sets NVIDIA_VISIBLE_DEVICES=all."""
    subject = pod(container(env=env("CUDA_DEVICE_MEMORY_LIMIT", "1g")), annotations={names.VGPU_NODE: "n"})
    assert isinstance(guard_ephemeral_containers(subject, namespace="t", policy=POLICY), Allowed)
    subject["spec"]["ephemeralContainers"] = [container("debug", env=env("NVIDIA_VISIBLE_DEVICES", "all"))]
    message = denied(guard_ephemeral_containers(subject, namespace="t", policy=POLICY)).message
    assert "container 'debug' sets NVIDIA_VISIBLE_DEVICES" in message


def test_validate_dispatches_create_and_ephemeral_updates_only() -> None:
    attack = pod(container(env=env("CUDA_DEVICE_MEMORY_LIMIT", "80g")))
    assert isinstance(admission.validate(parse_review(review(attack)), policy=POLICY), Denied)
    update = parse_review(review(attack, operation="UPDATE"))
    assert admission.validate(update, policy=POLICY) == Allowed(reason="not-guarded")
    ephemeral = copy.deepcopy(attack)
    ephemeral["spec"]["ephemeralContainers"] = [container("d", env=env("CUDA_DEVICE_SM_LIMIT", "100"))]
    document = review(ephemeral, operation="UPDATE")
    document["request"]["subResource"] = "ephemeralcontainers"
    assert isinstance(admission.validate(parse_review(document), policy=POLICY), Denied)
    deployment = parse_review(review(attack, kind="Deployment", resource="deployments"))
    assert admission.validate(deployment, policy=POLICY) == Allowed(reason="not-a-pod")


def test_the_mutating_endpoint_does_not_guard() -> None:
    """/mutate keeps its contract (GPU pods only, via matchConditions); the guard is /validate's alone."""
    attack = pod(container(env=env("CUDA_DEVICE_MEMORY_LIMIT", "80g")))
    assert admission.admit(parse_review(review(attack)), policy=POLICY) == Allowed(reason="no-gpu-request")


def test_what_overwrite_env_writes_passes_the_guard() -> None:
    # The mutating webhook runs first; its NVIDIA_VISIBLE_DEVICES=none must not be refused by the guard after it.
    policy = MutationPolicy(overwrite_env=True)
    obj = pod(container("gpu", limits={"nvidia.com/gpu": "1"}), container("app"), init=[container("setup")])
    patched = apply_decision(obj, mutate_pod(obj, policy=policy))
    assert isinstance(guard_pod(patched, namespace="default", policy=policy), Allowed)
