"""Property tests of the rules: for random pods and policies, the patch applies (RFC 6902, by the
``jsonpatch`` library) and reviewing the patched pod again yields no patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
from hami_shared.quantity import container_gpu_request
from hami_webhook.core.decision import Allowed, Denied
from hami_webhook.core.patch import patch_to_json
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.rules import mutate_pod
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OUR_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores")
ENV_NAMES = (
    "CUDA_TASK_PRIORITY",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HAMI_VULKAN_ENABLE",
    "GPU_CORE_UTILIZATION_POLICY",
    "X",
)

quantities = st.one_of(
    st.integers(min_value=0, max_value=120).map(str),
    st.sampled_from(["1", "100", "8000", "1k", "1Ki", "0", "2e3"]),
    st.integers(min_value=0, max_value=5),
)
bad_quantities = st.sampled_from(["-1", "1.5", "abc", "", "500m", "1e40", None])
resource_maps = st.dictionaries(
    st.sampled_from([*OUR_RESOURCES, "nvidia.com/priority", "cpu", "memory"]),
    st.one_of(quantities, quantities, quantities, bad_quantities),
    max_size=4,
)
env_entries = st.lists(
    st.one_of(
        st.builds(
            lambda name, value: {"name": name, "value": value},
            st.sampled_from(ENV_NAMES),
            st.sampled_from(["", "all", "compute,utility", "graphics", "0", "1", "force"]),
        ),
        st.builds(
            lambda name: {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            st.sampled_from(ENV_NAMES),
        ),
    ),
    max_size=4,
)


@st.composite
def containers(draw: st.DrawFn, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"c{index}", "image": "busybox"}
    resources: dict[str, Any] = {}
    if draw(st.booleans()):
        resources["limits"] = draw(resource_maps)
    if draw(st.booleans()):
        resources["requests"] = draw(resource_maps)
    keep_empty_resources = draw(st.booleans())
    if resources or keep_empty_resources:
        body["resources"] = resources
    if draw(st.booleans()):
        body["env"] = draw(env_entries)
    privileged = draw(st.sampled_from([None, False, True, True]))
    if privileged is not None:
        body["securityContext"] = {"privileged": privileged}
    return body


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [draw(containers(i)) for i in range(draw(st.integers(min_value=1, max_value=3)))],
    }
    init_count = draw(st.integers(min_value=0, max_value=2))
    if init_count:
        spec["initContainers"] = [draw(containers(10 + i)) for i in range(init_count)]
    scheduler = draw(st.sampled_from([None, "", "default-scheduler", "default-scheduler", "hami-scheduler", "volcano"]))
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        spec["nodeName"] = "node-1"
    runtime_class = draw(st.sampled_from([None, "", "kata"]))
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    metadata: dict[str, Any] = {"name": "p", "namespace": "ns"}
    labels = draw(st.sampled_from([None, {}, {"hami.io/webhook": "ignore"}, {"app": "x"}]))
    if labels is not None:
        metadata["labels"] = labels
    annotations = draw(st.sampled_from([None, {}, {"hami.io/vulkan": "true"}, {"hami.io/vulkan": "false"}]))
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


policies = st.builds(
    MutationPolicy,
    scheduler_name=st.sampled_from(["hami-scheduler", "gpu-sched"]),
    default_gpu_count=st.integers(min_value=1, max_value=4),
    exclusive_cores_for_whole_card=st.booleans(),
    force_overwrite_default_scheduler=st.booleans(),
    runtime_class_name=st.sampled_from([None, "nvidia"]),
    core_policy=st.sampled_from(["default", "force", "disable"]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=pods(), policy=policies)
def test_patch_applies_and_second_pass_is_empty(obj: dict[str, Any], policy: MutationPolicy) -> None:
    original = copy.deepcopy(obj)
    decision = mutate_pod(obj, policy=policy)
    assert obj == original, "the rules must not modify their input"
    if isinstance(decision, Denied):
        assert decision.message
        assert decision.code in (400, 403)
        return
    operations = patch_to_json(decision.patch)
    assert all(op["op"] in ("add", "replace") for op in operations)
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), operations)  # raises JsonPatchConflict if it does not apply
    again = mutate_pod(patched, policy=policy)
    assert isinstance(again, Allowed), again
    assert again.patch == (), f"second pass changed the pod again: {again.patch}"
    if decision.patch:
        assert patched["spec"]["schedulerName"] == policy.scheduler_name
        # Every container asking only memory or cores now names a GPU count.
        for kind in ("initContainers", "containers"):
            for body in patched["spec"].get(kind, []):
                request = container_gpu_request(body, policy.resource_names)
                if request.memory is not None or request.memory_percentage is not None or request.cores is not None:
                    assert request.count is not None


@settings(max_examples=200, deadline=None)
@given(obj=pods())
def test_pods_without_our_resources_are_never_patched(obj: dict[str, Any]) -> None:
    for kind in ("initContainers", "containers"):
        for body in obj["spec"].get(kind, []):
            for key in ("limits", "requests"):
                for name in [*OUR_RESOURCES, "nvidia.com/priority"]:
                    body.get("resources", {}).get(key, {}).pop(name, None)
    decision = mutate_pod(obj, policy=MutationPolicy())
    assert isinstance(decision, Allowed)
    assert decision.patch == ()
    assert decision.reason in ("no-gpu-request", "ignore-label")
