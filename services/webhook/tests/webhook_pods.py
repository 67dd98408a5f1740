"""Builders of pod JSON and AdmissionReviews for the webhook tests, and a patch applier."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Mapping
from typing import Any

import jsonpatch
from hami_webhook.core.decision import Allowed, Decision
from hami_webhook.core.patch import patch_to_json


def container(
    name: str = "main",
    *,
    limits: Mapping[str, Any] | None = None,
    requests: Mapping[str, Any] | None = None,
    env: list[dict[str, Any]] | None = None,
    privileged: bool | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": "busybox"}
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if requests is not None:
        resources["requests"] = dict(requests)
    if resources:
        body["resources"] = resources
    if env is not None:
        body["env"] = env
    if privileged is not None:
        body["securityContext"] = {"privileged": privileged}
    return body


def pod(
    *containers: dict[str, Any],
    init: list[dict[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    scheduler: str | None = "default-scheduler",
    node_name: str | None = None,
    runtime_class: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    if init is not None:
        spec["initContainers"] = init
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    if node_name is not None:
        spec["nodeName"] = node_name
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    metadata: dict[str, Any] = {"name": "p", "namespace": "default"}
    if labels is not None:
        metadata["labels"] = dict(labels)
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(
    obj: Any,
    *,
    api_version: str = "admission.k8s.io/v1",
    operation: str = "CREATE",
    uid: str | None = None,
    kind: str = "Pod",
    resource: str = "pods",
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "name": "p",
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_decision(obj: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """The pod after the decision's patch (RFC 6902, by the jsonpatch library)."""
    assert isinstance(decision, Allowed), decision
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(dict(obj)), patch_to_json(decision.patch))
    return result


def apply_response_patch(obj: Mapping[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
    """The pod after the base64 patch of an AdmissionReview response."""
    if "patch" not in response:
        return copy.deepcopy(dict(obj))
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(dict(obj)), operations)
    return result
