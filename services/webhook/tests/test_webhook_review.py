"""AdmissionReview parsing and response building, v1 and v1beta1."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hami_webhook.core.decision import Allowed, Denied
from hami_webhook.core.patch import PatchOperation, pointer
from hami_webhook.core.review import (
    MalformedReviewError,
    ReviewVersion,
    decode_review,
    errored_response,
    parse_review,
    review_response,
)
from webhook_pods import container, pod, review


@pytest.mark.parametrize("version", list(ReviewVersion))
def test_parse_keeps_version_uid_and_object(version: ReviewVersion) -> None:
    obj = pod(container(limits={"nvidia.com/gpu": "1"}))
    request = parse_review(review(obj, api_version=str(version), uid="abc-1"))
    assert request.api_version is version
    assert request.uid == "abc-1"
    assert request.operation == "CREATE"
    assert request.is_pod
    assert request.object == obj
    assert request.namespace == "default"


@pytest.mark.parametrize("version", list(ReviewVersion))
def test_response_is_in_the_version_of_the_request(version: ReviewVersion) -> None:
    request = parse_review(review({}, api_version=str(version), uid="u1"))
    patch = (PatchOperation(op="add", path=pointer("spec", "schedulerName"), value="hami-scheduler"),)
    answer = review_response(request, Allowed(reason="mutated", patch=patch))
    assert answer["apiVersion"] == str(version)
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "u1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"}
    ]


def test_allowed_without_patch_has_no_patch_fields_and_carries_warnings() -> None:
    request = parse_review(review({}))
    response = review_response(request, Allowed(reason="other-scheduler", warnings=("w1",)))["response"]
    assert response == {"uid": request.uid, "allowed": True, "warnings": ["w1"]}


def test_denial_carries_status_with_code_and_message() -> None:
    request = parse_review(review({}))
    response = review_response(request, Denied(reason="privileged", message="remove privileged"))["response"]
    assert response["allowed"] is False
    assert response["status"] == {
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": "remove privileged",
    }
    assert response["auditAnnotations"] == {"denial-reason": "privileged"}


def test_errored_response() -> None:
    request = parse_review(review({}, api_version="admission.k8s.io/v1beta1"))
    answer = errored_response(request, "boom")
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 500
    assert answer["response"]["status"]["message"] == "boom"


def test_delete_review_without_object_parses() -> None:
    document = review(None, operation="DELETE")
    assert parse_review(document).object is None


def _with(path: str, value: Any) -> dict[str, Any]:
    document = review(pod())
    target: Any = document
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return document


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "must be a JSON object"),
        (_with("apiVersion", "admission.k8s.io/v2"), "send admission.k8s.io/v1 or admission.k8s.io/v1beta1"),
        (_with("apiVersion", None), "is not supported"),
        (_with("kind", "Pod"), "must be 'AdmissionReview'"),
        (_with("request", KeyError), "no request to answer"),
        (_with("request.uid", ""), "request.uid"),
        (_with("request.uid", 7), "request.uid"),
        (_with("request.kind", "Pod"), "request.kind"),
        (_with("request.kind.kind", None), "request.kind.kind"),
        (_with("request.resource", KeyError), "request.resource"),
        (_with("request.operation", 1), "request.operation"),
        (_with("request.object", None), "required for a CREATE review"),
        (_with("request.object", [1]), "request.object"),
        (_with("request.namespace", 5), "request.namespace"),
        (_with("request.dryRun", "yes"), "request.dryRun"),
    ],
)
def test_malformed_reviews_say_what_is_wrong(document: Any, expected: str) -> None:
    with pytest.raises(MalformedReviewError, match=expected.replace(".", r"\.")):
        parse_review(document)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "is not JSON"),
        (b"{", "is not JSON"),
        (b"\xff\xfe\x00", "is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|is not JSON"),
        (b" " * (3 * 1024 * 1024 + 1), "larger than"),
    ],
    ids=["empty", "truncated", "binary", "deep", "huge"],
)
def test_decode_rejects_bodies_that_are_not_json(body: bytes, expected: str) -> None:
    with pytest.raises(MalformedReviewError, match=expected):
        decode_review(body)
