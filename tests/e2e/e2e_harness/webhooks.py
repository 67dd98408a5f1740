"""Admission-webhook plumbing for e2e tests: a throw-away CA and serving certificate for a local TLS server
(generated at test time with trustme; never written into the repository), and MutatingWebhookConfiguration
objects that point the real kube-apiserver at ``https://127.0.0.1:<port>/<path>`` with that CA as caBundle."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from kubernetes_asyncio import client as k8s


@dataclass(frozen=True)
class WebhookTLS:
    """PEM files of a serving certificate for 127.0.0.1/localhost and the CA that signed it."""

    ca_pem: bytes
    cert_file: Path  # certificate chain (leaf first)
    key_file: Path

    @classmethod
    def create(cls, directory: Path) -> WebhookTLS:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert_file = directory / "webhook.crt"
        key_file = directory / "webhook.key"
        cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key_file.write_bytes(leaf.private_key_pem.bytes())
        key_file.chmod(0o600)
        (directory / "ca.crt").write_bytes(ca.cert_pem.bytes())
        return cls(ca_pem=ca.cert_pem.bytes(), cert_file=cert_file, key_file=key_file)

    @property
    def ca_bundle(self) -> str:
        """The caBundle field value (base64 of the CA PEM)."""
        return base64.b64encode(self.ca_pem).decode()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def mutating_webhook_configuration(
    name: str,
    url: str,
    ca_bundle: str,
    *,
    rules: list[Mapping[str, Any]] | None = None,
    namespace_selector: Mapping[str, Any] | None = None,
    object_selector: Mapping[str, Any] | None = None,
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
) -> dict[str, Any]:
    """A MutatingWebhookConfiguration with one webhook calling ``url`` (default rule: pods, CREATE)."""
    webhook: dict[str, Any] = {
        "name": f"{name}.e2e.local" if "." not in name else name,
        "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": rules or [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": timeout_seconds,
        "reinvocationPolicy": "Never",
    }
    if namespace_selector is not None:
        webhook["namespaceSelector"] = namespace_selector
    if object_selector is not None:
        webhook["objectSelector"] = object_selector
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }


async def wait_until_webhook_serves(
    api: k8s.ApiClient,
    namespace: str,
    probe_pod: Mapping[str, Any],
    mutated: Callable[[dict[str, Any]], bool],
    within: float = 60.0,
) -> dict[str, Any]:
    """Dry-run-create ``probe_pod`` until ``mutated(returned pod)`` holds: the apiserver picks up a new webhook
    configuration asynchronously (about a second), so a test must not assume the very next create sees it."""
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            resp = await core.create_namespaced_pod(namespace, dict(probe_pod), dry_run="All")
            pod = api.sanitize_for_serialization(resp)
            if mutated(pod):
                return pod
            last = pod
        except k8s.ApiException as e:
            last = e
        await asyncio.sleep(0.5)
    raise TimeoutError(f"webhook not serving after {within}s; last answer: {last}")
