"""Unit tests of the mutation rules (pure core): one group per rule of issue 9."""

from __future__ import annotations

from typing import Any

import pytest
from hami_shared.names import ResourceNames
from hami_webhook.core.admission import admit
from hami_webhook.core.decision import Allowed, Denied, Outcome
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.review import parse_review
from hami_webhook.core.rules import merge_graphics_capability, mutate_pod
from webhook_pods import apply_decision, container, pod, review

POLICY = MutationPolicy()
GPU = "nvidia.com/gpu"
MEM = "nvidia.com/gpumem"
PCT = "nvidia.com/gpumem-percentage"
CORES = "nvidia.com/gpucores"
PRIO = "nvidia.com/priority"


def mutated(obj: dict[str, Any], policy: MutationPolicy = POLICY) -> dict[str, Any]:
    decision = mutate_pod(obj, policy=policy)
    assert isinstance(decision, Allowed), decision
    patched = apply_decision(obj, decision)
    again = mutate_pod(patched, policy=policy)
    assert isinstance(again, Allowed), again
    assert again.patch == (), f"second pass not empty: {again}"
    return patched


def denied(obj: dict[str, Any], policy: MutationPolicy = POLICY) -> Denied:
    decision = mutate_pod(obj, policy=policy)
    assert isinstance(decision, Denied), decision
    return decision


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# --- pass-through ----------------------------------------------------------------------------


def test_pod_without_gpu_resources_passes_untouched() -> None:
    obj = pod(container(limits={"cpu": "1", "memory": "1Gi"}))
    decision = mutate_pod(obj, policy=POLICY)
    assert decision == Allowed(reason="no-gpu-request")
    assert decision.outcome is Outcome.ALLOWED


def test_pod_without_spec_or_containers_passes() -> None:
    assert mutate_pod({"metadata": {}}, policy=POLICY) == Allowed(reason="no-gpu-request")


def test_ignore_label_skips_even_a_pod_that_would_be_denied() -> None:
    obj = pod(container(limits={GPU: "1"}, privileged=True), labels={"hami.io/webhook": "ignore"}, node_name="n1")
    assert mutate_pod(obj, policy=POLICY) == Allowed(reason="ignore-label")


def test_other_label_value_does_not_skip() -> None:
    obj = pod(container(limits={MEM: "1000"}), labels={"hami.io/webhook": "enabled"})
    assert mutated(obj)["spec"]["schedulerName"] == "hami-scheduler"


# --- scheduler name ---------------------------------------------------------------------------


@pytest.mark.parametrize("current", [None, "", "default-scheduler"], ids=["absent", "empty", "default"])
def test_scheduler_name_is_set_for_gpu_pods(current: str | None) -> None:
    obj = pod(container(limits={MEM: "3000"}), scheduler=current)
    assert mutated(obj)["spec"]["schedulerName"] == "hami-scheduler"


def test_configured_scheduler_name_is_used() -> None:
    policy = MutationPolicy(scheduler_name="gpu-scheduler")
    assert mutated(pod(container(limits={GPU: "1"})), policy)["spec"]["schedulerName"] == "gpu-scheduler"


def test_other_scheduler_is_left_alone_with_a_warning() -> None:
    decision = mutate_pod(pod(container(limits={MEM: "3000"}), scheduler="volcano"), policy=POLICY)
    assert isinstance(decision, Allowed)
    assert decision.patch == ()
    assert decision.reason == "other-scheduler"
    assert "volcano" in decision.warnings[0]
    assert "hami-scheduler" in decision.warnings[0]


def test_default_scheduler_is_left_alone_when_overwrite_is_off() -> None:
    policy = MutationPolicy(force_overwrite_default_scheduler=False)
    decision = mutate_pod(pod(container(limits={MEM: "3000"})), policy=policy)
    assert isinstance(decision, Allowed)
    assert decision.reason == "other-scheduler"
    assert decision.patch == ()


def test_pod_already_on_our_scheduler_gets_no_scheduler_operation() -> None:
    obj = pod(container(limits={GPU: "1", CORES: "30", MEM: "1000"}), scheduler="hami-scheduler")
    assert mutate_pod(obj, policy=POLICY) == Allowed(reason="already-mutated")


# --- default GPU count ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", [MEM, PCT, CORES])
def test_gpu_count_is_added_when_only_memory_or_cores_are_asked(resource: str) -> None:
    obj = pod(container(limits={resource: "50"}))
    limits = mutated(obj)["spec"]["containers"][0]["resources"]["limits"]
    assert limits[GPU] == "1"


def test_default_gpu_count_is_configurable() -> None:
    obj = pod(container(limits={MEM: "1000"}))
    limits = mutated(obj, MutationPolicy(default_gpu_count=2))["spec"]["containers"][0]["resources"]["limits"]
    assert limits[GPU] == "2"


def test_explicit_gpu_count_is_kept() -> None:
    obj = pod(container(limits={GPU: "2", MEM: "1000"}))
    assert mutated(obj)["spec"]["containers"][0]["resources"]["limits"][GPU] == "2"


def test_gpu_count_is_mirrored_into_requests_that_carry_our_resources() -> None:
    # The apiserver copies limits into requests before calling webhooks; requests must equal limits.
    obj = pod(container(limits={MEM: "1000"}, requests={MEM: "1000", "cpu": "1"}))
    resources = mutated(obj)["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {MEM: "1000", GPU: "1"}
    assert resources["requests"] == {MEM: "1000", "cpu": "1", GPU: "1"}


def test_requests_without_our_resources_are_not_touched() -> None:
    obj = pod(container(limits={MEM: "1000"}, requests={"cpu": "1"}))
    assert mutated(obj)["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1"}


def test_memory_only_in_requests_gets_limits_created() -> None:
    obj = pod(container(requests={MEM: "1000"}))
    resources = mutated(obj)["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {GPU: "1"}
    assert resources["requests"] == {MEM: "1000", GPU: "1"}


def test_patch_paths_escape_the_slash_of_resource_names() -> None:
    decision = mutate_pod(pod(container(limits={MEM: "1000"})), policy=POLICY)
    assert isinstance(decision, Allowed)
    paths = [op.path for op in decision.patch]
    assert "/spec/containers/0/resources/limits/nvidia.com~1gpu" in paths


# --- exclusive cores --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "expected_cores"),
    [
        ({GPU: "1"}, "100"),
        ({GPU: "2"}, "100"),
        ({GPU: "1", PCT: "100"}, "100"),
        ({PCT: "100"}, "100"),
        ({GPU: "1", PCT: "50"}, None),
        ({GPU: "1", MEM: "4000"}, None),
        ({GPU: "1", MEM: "4000", PCT: "100"}, None),
        ({GPU: "1", CORES: "30"}, "30"),
        ({GPU: "0"}, None),
    ],
    ids=["gpu", "gpu2", "gpu+pct100", "pct100", "pct50", "mem", "mem-wins-over-pct", "cores-given", "zero-gpus"],
)
def test_whole_card_requests_get_exclusive_cores(limits: dict[str, str], expected_cores: str | None) -> None:
    result = mutated(pod(container(limits=limits)))["spec"]["containers"][0]["resources"]["limits"]
    assert result.get(CORES) == expected_cores


def test_exclusive_cores_can_be_switched_off() -> None:
    policy = MutationPolicy(exclusive_cores_for_whole_card=False)
    result = mutated(pod(container(limits={GPU: "1"})), policy)["spec"]["containers"][0]["resources"]["limits"]
    assert CORES not in result


# --- env: priority, core policy ---------------------------------------------------------------


def test_priority_becomes_cuda_task_priority() -> None:
    result = mutated(pod(container(limits={GPU: "1", PRIO: "0"})))["spec"]["containers"][0]
    assert env_of(result)["CUDA_TASK_PRIORITY"] == "0"


def test_priority_replaces_a_different_user_value_and_keeps_other_env() -> None:
    env = [{"name": "A", "value": "x"}, {"name": "CUDA_TASK_PRIORITY", "value": "1"}]
    result = mutated(pod(container(limits={GPU: "1", PRIO: "0"}, env=env)))["spec"]["containers"][0]
    assert result["env"] == [{"name": "A", "value": "x"}, {"name": "CUDA_TASK_PRIORITY", "value": "0"}]


def test_env_from_value_from_is_replaced_by_a_literal() -> None:
    env = [{"name": "CUDA_TASK_PRIORITY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    result = mutated(pod(container(limits={GPU: "1", PRIO: "1"}, env=env)))["spec"]["containers"][0]
    assert result["env"] == [{"name": "CUDA_TASK_PRIORITY", "value": "1"}]


@pytest.mark.parametrize("core_policy", ["force", "disable"])
def test_core_policy_is_injected_into_gpu_containers(core_policy: Any) -> None:
    obj = pod(container("gpu", limits={GPU: "1"}), container("side", limits={"cpu": "1"}))
    result = mutated(obj, MutationPolicy(core_policy=core_policy))["spec"]["containers"]
    assert env_of(result[0])["GPU_CORE_UTILIZATION_POLICY"] == core_policy
    assert "env" not in result[1]


def test_default_core_policy_adds_no_env() -> None:
    result = mutated(pod(container(limits={GPU: "1"})))["spec"]["containers"][0]
    assert "env" not in result


# --- runtime class ----------------------------------------------------------------------------


def test_runtime_class_is_set_when_configured_and_absent() -> None:
    policy = MutationPolicy(runtime_class_name="nvidia")
    assert mutated(pod(container(limits={GPU: "1"})), policy)["spec"]["runtimeClassName"] == "nvidia"


def test_runtime_class_of_the_pod_is_kept() -> None:
    policy = MutationPolicy(runtime_class_name="nvidia")
    obj = pod(container(limits={GPU: "1"}), runtime_class="kata")
    assert mutated(obj, policy)["spec"]["runtimeClassName"] == "kata"


def test_no_runtime_class_without_configuration() -> None:
    assert "runtimeClassName" not in mutated(pod(container(limits={GPU: "1"})))["spec"]


# --- Vulkan opt-in ----------------------------------------------------------------------------

VULKAN = {"hami.io/vulkan": "true"}


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, "compute,utility,graphics"),
        ("", "compute,utility,graphics"),
        ("  ", "compute,utility,graphics"),
        ("compute,utility", "compute,utility,graphics"),
        ("compute, video", "compute,video,graphics"),
        ("all", None),
        ("compute,all", None),
        ("graphics,compute", None),
    ],
)
def test_merge_graphics_capability(current: str | None, expected: str | None) -> None:
    assert merge_graphics_capability(current) == expected


def test_vulkan_opt_in_sets_env_on_gpu_containers_only() -> None:
    obj = pod(container("gpu", limits={MEM: "2000"}), container("side"), annotations=VULKAN)
    result = mutated(obj)["spec"]["containers"]
    assert env_of(result[0]) == {"HAMI_VULKAN_ENABLE": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility,graphics"}
    assert "env" not in result[1]


@pytest.mark.parametrize(
    ("caps", "expected"),
    [("compute,utility", "compute,utility,graphics"), ("all", "all"), ("", "compute,utility,graphics")],
)
def test_vulkan_merges_into_existing_capabilities(caps: str, expected: str) -> None:
    env = [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": caps}, {"name": "X", "value": "y"}]
    result = mutated(pod(container(limits={GPU: "1"}, env=env), annotations=VULKAN))["spec"]["containers"][0]
    assert env_of(result) == {"NVIDIA_DRIVER_CAPABILITIES": expected, "X": "y", "HAMI_VULKAN_ENABLE": "1"}


def test_vulkan_capabilities_from_value_from_are_left_alone() -> None:
    entry = {"name": "NVIDIA_DRIVER_CAPABILITIES", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
    result = mutated(pod(container(limits={GPU: "1"}, env=[entry]), annotations=VULKAN))["spec"]["containers"][0]
    assert result["env"] == [entry, {"name": "HAMI_VULKAN_ENABLE", "value": "1"}]


def test_vulkan_opt_in_is_idempotent_on_an_already_opted_in_pod() -> None:
    env = [{"name": "HAMI_VULKAN_ENABLE", "value": "1"}, {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}]
    obj = pod(container(limits={GPU: "1", CORES: "100"}, env=env), annotations=VULKAN, scheduler="hami-scheduler")
    assert mutate_pod(obj, policy=POLICY) == Allowed(reason="already-mutated")


@pytest.mark.parametrize("value", ["false", "", "yes"])
def test_vulkan_needs_the_annotation_true(value: str) -> None:
    obj = pod(container(limits={GPU: "1"}), annotations={"hami.io/vulkan": value})
    assert "env" not in mutated(obj)["spec"]["containers"][0]


# --- init containers, several containers ----------------------------------------------------


def test_init_and_regular_containers_are_mutated_at_their_own_paths() -> None:
    obj = pod(
        container("app", limits={MEM: "1000"}),
        container("plain"),
        container("app2", limits={CORES: "20", PRIO: "1"}),
        init=[container("init", limits={PCT: "100"})],
    )
    result = mutated(obj)["spec"]
    assert result["initContainers"][0]["resources"]["limits"] == {PCT: "100", GPU: "1", CORES: "100"}
    assert result["containers"][0]["resources"]["limits"] == {MEM: "1000", GPU: "1"}
    assert "resources" not in result["containers"][1]
    assert result["containers"][2]["resources"]["limits"] == {CORES: "20", PRIO: "1", GPU: "1"}
    assert env_of(result["containers"][2]) == {"CUDA_TASK_PRIORITY": "1"}


def test_custom_resource_names() -> None:
    names = ResourceNames(
        count="example.com/vgpu",
        memory="example.com/vmem",
        memory_percentage="example.com/vmem-pct",
        cores="example.com/vcores",
        priority="example.com/prio",
    )
    policy = MutationPolicy(resource_names=names)
    result = mutated(pod(container(limits={"example.com/vmem": "1000"})), policy)["spec"]["containers"][0]
    assert result["resources"]["limits"] == {"example.com/vmem": "1000", "example.com/vgpu": "1"}
    # The default names mean nothing under this configuration.
    assert mutate_pod(pod(container(limits={MEM: "1000"})), policy=policy) == Allowed(reason="no-gpu-request")


# --- denials ---------------------------------------------------------------------------------


def test_privileged_gpu_container_is_denied_with_what_to_change() -> None:
    denial = denied(pod(container("cuda", limits={GPU: "1"}, privileged=True)))
    assert denial.code == 403
    assert denial.reason == "privileged"
    assert "'cuda' is privileged" in denial.message
    assert "nvidia.com/gpu: 1" in denial.message
    assert "remove securityContext.privileged" in denial.message


def test_privileged_gpu_init_container_is_denied() -> None:
    obj = pod(container(), init=[container("setup", limits={MEM: "100"}, privileged=True)])
    assert "'setup' is privileged" in denied(obj).message


def test_privileged_container_without_gpu_in_a_gpu_pod_is_allowed() -> None:
    obj = pod(container("gpu", limits={GPU: "1"}), container("net", privileged=True))
    assert mutated(obj)["spec"]["schedulerName"] == "hami-scheduler"


def test_privileged_false_is_fine() -> None:
    assert mutated(pod(container(limits={GPU: "1"}, privileged=False)))["spec"]["schedulerName"] == "hami-scheduler"


@pytest.mark.parametrize("value", ["101", "1000"])
def test_memory_percentage_above_100_is_denied(value: str) -> None:
    denial = denied(pod(container("c", limits={PCT: value})))
    assert denial.code == 400
    assert f"nvidia.com/gpumem-percentage: {value}" in denial.message
    assert "use a value from 0 to 100" in denial.message


@pytest.mark.parametrize("value", ["0", "1", "100"])
def test_memory_percentage_in_range_is_allowed(value: str) -> None:
    assert mutated(pod(container(limits={PCT: value})))["spec"]["schedulerName"] == "hami-scheduler"


@pytest.mark.parametrize(
    ("resource", "value", "expected"),
    [
        (MEM, "1.5", "must be a whole number"),
        (MEM, "-1", "must not be negative"),
        (PCT, "-5", "must not be negative"),
        (GPU, "abc", "not a Kubernetes quantity"),
        (CORES, "500m", "must be a whole number"),
        (MEM, "3e9", "larger than"),
        (PRIO, True, "quantity must be a string"),
    ],
)
def test_bad_quantities_are_denied_with_container_and_resource(resource: str, value: Any, expected: str) -> None:
    denial = denied(pod(container("worker", limits={resource: value})))
    assert denial.code == 400
    assert "'worker'" in denial.message
    assert resource in denial.message
    assert expected in denial.message
    assert "correct this value" in denial.message


def test_bad_quantity_in_requests_is_denied() -> None:
    assert "must not be negative" in denied(pod(container(requests={MEM: "-1"}))).message


def test_node_name_preset_is_denied() -> None:
    denial = denied(pod(container(limits={MEM: "1000"}), node_name="gpu-node-1"))
    assert denial.reason == "node-name-set"
    assert "spec.nodeName='gpu-node-1'" in denial.message
    assert "remove spec.nodeName" in denial.message
    assert "kubernetes.io/hostname: gpu-node-1" in denial.message


def test_node_name_without_gpu_request_is_not_our_business() -> None:
    assert mutate_pod(pod(container(), node_name="n"), policy=POLICY) == Allowed(reason="no-gpu-request")


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"spec": []},
        {"metadata": {"labels": "x"}},
        {"spec": {"containers": {"name": "a"}}},
        {"spec": {"containers": ["a"]}},
        {"spec": {"containers": [{"name": "a", "resources": [1]}]}},
        {"spec": {"containers": [{"name": "a", "resources": {"limits": [1]}}]}},
        {"spec": {"schedulerName": 5, "containers": [{"name": "a", "resources": {"limits": {GPU: "1"}}}]}},
        {"spec": {"containers": [{"name": "a", "resources": {"limits": {GPU: "1"}}, "env": "x"}]}},
        {"spec": {"containers": [{"name": "a", "resources": {"limits": {PRIO: "1"}}, "env": [{"value": "x"}]}]}},
    ],
    ids=[
        "not-object",
        "spec-list",
        "labels-string",
        "containers-object",
        "container-string",
        "resources-list",
        "limits-list",
        "scheduler-int",
        "env-string",
        "env-no-name",
    ],
)
def test_structurally_bad_pods_are_denied_with_400(obj: Any) -> None:
    denial = denied(obj)
    assert denial.code == 400
    assert denial.reason == "invalid"


# --- which reviews the rules apply to ---------------------------------------------------------


def test_admit_passes_other_kinds_and_operations() -> None:
    gpu_pod = pod(container(limits={GPU: "1"}))
    assert admit(parse_review(review(gpu_pod, operation="UPDATE")), policy=POLICY) == Allowed(reason="not-create")
    assert admit(parse_review(review({}, kind="Deployment", resource="deployments")), policy=POLICY) == Allowed(
        reason="not-a-pod"
    )
    decision = admit(parse_review(review(gpu_pod)), policy=POLICY)
    assert isinstance(decision, Allowed)
    assert decision.outcome is Outcome.PATCHED


# --- overwriteEnv (HAMi's key): containers that ask no GPU see none ---------------------------------------------

HIDE = MutationPolicy(overwrite_env=True)
VISIBLE = "NVIDIA_VISIBLE_DEVICES"


def test_overwrite_env_is_off_by_default_as_in_hami() -> None:
    obj = pod(container("app"))
    assert mutate_pod(obj, policy=POLICY) == Allowed(reason="no-gpu-request")


def test_overwrite_env_hides_the_gpus_of_every_container_of_a_pod_without_gpus() -> None:
    obj = pod(container("app"), container("side", env=[{"name": "A", "value": "1"}]), init=[container("setup")])
    decision = mutate_pod(obj, policy=HIDE)
    assert isinstance(decision, Allowed)
    assert decision.reason == "gpus-hidden"
    patched = mutated(obj, HIDE)
    for c in [*patched["spec"]["initContainers"], *patched["spec"]["containers"]]:
        assert env_of(c)[VISIBLE] == "none"
    assert env_of(patched["spec"]["containers"][1])["A"] == "1"
    assert "schedulerName" not in patched["spec"] or patched["spec"]["schedulerName"] == "default-scheduler"


def test_overwrite_env_replaces_what_the_pod_set_literal_or_from_a_secret() -> None:
    literal = container("a", env=[{"name": VISIBLE, "value": "all"}])
    secret = container("b", env=[{"name": VISIBLE, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    patched = mutated(pod(literal, secret), HIDE)
    for c in patched["spec"]["containers"]:
        assert [e for e in c["env"] if e["name"] == VISIBLE] == [{"name": VISIBLE, "value": "none"}]


def test_overwrite_env_leaves_gpu_containers_to_the_device_plugin() -> None:
    gpu_container = container("gpu", limits={GPU: "1", MEM: "1000"})
    patched = mutated(pod(gpu_container, container("sidecar")), HIDE)
    gpu_env, sidecar_env = (env_of(c) for c in patched["spec"]["containers"])
    assert VISIBLE not in gpu_env
    assert sidecar_env[VISIBLE] == "none"
    assert patched["spec"]["schedulerName"] == POLICY.scheduler_name


def test_overwrite_env_applies_to_pods_of_other_schedulers_too() -> None:
    # The scheduler does not change what the node's runtime gives a container.
    obj = pod(container("gpu", limits={GPU: "1"}), container("app"), scheduler="volcano")
    decision = mutate_pod(obj, policy=HIDE)
    assert isinstance(decision, Allowed)
    assert decision.reason == "other-scheduler"
    patched = apply_decision(obj, decision)
    assert VISIBLE not in env_of(patched["spec"]["containers"][0])
    assert env_of(patched["spec"]["containers"][1])[VISIBLE] == "none"


def test_the_ignore_label_skips_the_gpu_mutation_but_not_the_hiding() -> None:
    # The label is the pod author's: it must not keep a CUDA image's NVIDIA_VISIBLE_DEVICES=all.
    obj = pod(container("app"), container("gpu", limits={GPU: "1"}), labels={"hami.io/webhook": "ignore"})
    decision = mutate_pod(obj, policy=HIDE)
    assert isinstance(decision, Allowed)
    assert decision.reason == "ignore-label"
    patched = apply_decision(obj, decision)
    assert env_of(patched["spec"]["containers"][0])[VISIBLE] == "none"
    assert VISIBLE not in env_of(patched["spec"]["containers"][1])
    assert patched["spec"]["schedulerName"] == "default-scheduler"  # the GPU mutation is skipped
    assert mutate_pod(pod(container("app"), labels={"hami.io/webhook": "ignore"}), policy=POLICY) == Allowed(
        reason="ignore-label"
    )


@pytest.mark.parametrize(
    "limits",
    [{GPU: "0"}, {PRIO: "1"}, {GPU: "0", MEM: "1000"}],
    ids=["zero-gpus", "priority-only", "zero-gpus-with-memory"],
)
def test_containers_that_ask_our_resources_but_get_no_device_are_hidden(limits: dict[str, str]) -> None:
    # The kubelet calls no Allocate for them, so the image's NVIDIA_VISIBLE_DEVICES would stand.
    patched = mutated(pod(container("c", limits=limits)), HIDE)
    assert env_of(patched["spec"]["containers"][0])[VISIBLE] == "none"


def test_other_nvidia_device_plugins_resources_and_privileged_containers_are_not_hidden() -> None:
    # Static MIG (our plugin's migstrategy mixed) and other NVIDIA plugins set the variable at Allocate: pod env
    # would override it. A privileged container sees every device anyway (HAMi skips it too).
    mig = container("mig", limits={"nvidia.com/mig-1g.5gb": "1"})
    privileged = container("agent", privileged=True)
    decision = mutate_pod(pod(mig, privileged), policy=HIDE)
    assert decision == Allowed(reason="no-gpu-request")
