"""AdmissionReview documents (``admission.k8s.io/v1`` and ``v1beta1``) to typed values and back.

Both versions share the shapes we use; the answer goes back in the apiVersion the request came in. A
document that is not a usable review raises :class:`MalformedReviewError` (HTTP 400 with the message).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.errors import MalformedInputError

from hami_webhook.core.decision import Allowed, Decision, Denied
from hami_webhook.core.patch import patch_to_json

REVIEW_KIND: Final = "AdmissionReview"
MAX_REVIEW_BYTES: Final = 3 * 1024 * 1024
"""The apiserver caps request bodies at 3 MiB; a pod cannot be larger than that."""


class ReviewVersion(enum.StrEnum):
    V1 = "admission.k8s.io/v1"
    V1BETA1 = "admission.k8s.io/v1beta1"


_VERSIONS: Final = frozenset(version.value for version in ReviewVersion)


class MalformedReviewError(MalformedInputError):
    """The body is not an AdmissionReview we can answer (HTTP 400)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionRequest:
    """The parts of ``request`` the webhook uses; ``object`` is the raw pod JSON."""

    api_version: ReviewVersion
    uid: str
    kind: str
    resource_group: str
    resource: str
    sub_resource: str
    operation: str
    namespace: str
    name: str
    dry_run: bool
    object: Mapping[str, Any] | None

    @property
    def is_pod(self) -> bool:
        """A review of the pod itself (no subresource)."""
        return self.is_pod_resource and self.sub_resource == ""

    @property
    def is_pod_resource(self) -> bool:
        """A review whose object is a Pod: the pod itself or a subresource that carries the whole pod
        (``ephemeralcontainers``, ``status``)."""
        return self.resource_group == "" and self.resource == "pods" and self.kind == "Pod"


def decode_review(body: bytes) -> AdmissionRequest:
    """Parse a request body; raises :class:`MalformedReviewError` with what to send instead."""
    if len(body) > MAX_REVIEW_BYTES:
        raise MalformedReviewError("request body", f"{len(body)} bytes", f"is larger than {MAX_REVIEW_BYTES} bytes")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedReviewError(
            "request body", body[:80].decode("utf-8", "replace"), f"is not JSON ({exc}); send an AdmissionReview"
        ) from exc
    except RecursionError as exc:
        raise MalformedReviewError(
            "request body", body[:80].decode("utf-8", "replace"), "is nested too deeply"
        ) from exc
    return parse_review(document)


def parse_review(document: object) -> AdmissionRequest:
    """Typed request from a decoded AdmissionReview document (JSON objects as dicts)."""
    if not isinstance(document, dict):
        raise MalformedReviewError("request body", repr(document), "must be a JSON object (an AdmissionReview)")
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str) or api_version not in _VERSIONS:
        raise MalformedReviewError(
            "apiVersion", repr(api_version), f"is not supported; send {ReviewVersion.V1} or {ReviewVersion.V1BETA1}"
        )
    version = ReviewVersion(api_version)
    if document.get("kind") != REVIEW_KIND:
        raise MalformedReviewError("kind", repr(document.get("kind")), f"must be {REVIEW_KIND!r}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise MalformedReviewError("request", repr(request), "must be an object; the review has no request to answer")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReviewError("request.uid", repr(uid), "must be a non-empty string")
    _, kind = _group_and_name(request, "kind")
    resource_group, resource = _group_and_name(request, "resource")
    operation = _string(request, "operation", required=True)
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise MalformedReviewError("request.object", repr(obj), "must be an object")
    if operation in ("CREATE", "UPDATE") and obj is None:
        raise MalformedReviewError("request.object", "null", f"is required for a {operation} review")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise MalformedReviewError("request.dryRun", repr(dry_run), "must be true or false")
    return AdmissionRequest(
        api_version=version,
        uid=uid,
        kind=kind,
        resource_group=resource_group,
        resource=resource,
        sub_resource=_string(request, "subResource"),
        operation=operation,
        namespace=_string(request, "namespace"),
        name=_string(request, "name"),
        dry_run=dry_run,
        object=obj,
    )


def _group_and_name(request: Mapping[str, Any], key: str) -> tuple[str, str]:
    """The group and the name of ``request.kind`` or ``request.resource`` (its version is only checked)."""
    value = request.get(key)
    if not isinstance(value, dict):
        raise MalformedReviewError(f"request.{key}", repr(value), "must be an object")
    where = f"request.{key}"
    group = _string(value, "group", where=where)
    _string(value, "version", where=where)
    return group, _string(value, key, where=where, required=True)


def _string(parent: Mapping[str, Any], key: str, *, where: str = "request", required: bool = False) -> str:
    value = parent.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedReviewError(
            f"{where}.{key}", repr(value), "must be a non-empty string" if required else "must be a string"
        )
    return value


def review_response(request: AdmissionRequest, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answering ``request``, in the apiVersion it came in."""
    response: dict[str, Any] = {"uid": request.uid}
    match decision:
        case Allowed(patch=patch, warnings=warnings):
            response["allowed"] = True
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(
                    json.dumps(patch_to_json(patch), separators=(",", ":")).encode()
                ).decode("ascii")
            if warnings:
                response["warnings"] = list(warnings)
        case Denied(message=message, code=code, reason=reason):
            response["allowed"] = False
            reason_name = {400: "BadRequest", 403: "Forbidden"}.get(code, "Invalid")
            response["status"] = {"status": "Failure", "code": code, "reason": reason_name, "message": message}
            # The apiserver records it as "<webhook name>/denial-reason"; the key itself must hold no slash.
            response["auditAnnotations"] = {"denial-reason": reason}
    return {"apiVersion": str(request.api_version), "kind": REVIEW_KIND, "response": response}


def errored_response(request: AdmissionRequest, message: str) -> dict[str, Any]:
    """An errored review: the webhook failed on this request (the pod is refused with ``message``)."""
    return {
        "apiVersion": str(request.api_version),
        "kind": REVIEW_KIND,
        "response": {
            "uid": request.uid,
            "allowed": False,
            "status": {"status": "Failure", "code": 500, "reason": "InternalError", "message": message},
        },
    }
