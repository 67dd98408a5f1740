"""The real kube-apiserver calls a MutatingWebhookConfiguration's URL over TLS (verified against the caBundle)
on pod create and applies the returned JSONPatch: the plumbing the webhook's own e2e tests build on."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from e2e_harness.waiting import wait_for
from e2e_harness.webhooks import WebhookTLS, mutating_webhook_configuration, wait_until_webhook_serves
from kubernetes_asyncio import client as k8s


@dataclass
class RecordingWebhook:
    """A minimal mutating webhook (test code): records every AdmissionReview and labels the pod."""

    url: str
    reviews: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def recording_webhook(webhook_tls: WebhookTLS) -> AsyncIterator[RecordingWebhook]:
    hook = RecordingWebhook(url="")

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        hook.reviews.append(review)
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"e2e.local/mutated": "yes"}}]
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        )

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=webhook_tls.server_context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"https://127.0.0.1:{port}/mutate"
    try:
        yield hook
    finally:
        await runner.cleanup()


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "registry.local/x:1"}]}}


async def test_apiserver_calls_the_mutating_webhook_on_pod_create(
    k8s_api: k8s.ApiClient, namespace: str, webhook_tls: WebhookTLS, recording_webhook: RecordingWebhook
) -> None:
    admission = k8s.AdmissionregistrationV1Api(k8s_api)
    config = mutating_webhook_configuration(
        f"recording-{namespace}",
        recording_webhook.url,
        webhook_tls.ca_bundle,
        # Only this test's namespace: other tests keep creating pods against the same apiserver.
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )
    await admission.create_mutating_webhook_configuration(config)
    try:
        await wait_until_webhook_serves(
            k8s_api,
            namespace,
            pod("probe"),
            lambda p: p["metadata"].get("labels", {}).get("e2e.local/mutated") == "yes",
        )
        created = await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod("mutated"))
    finally:
        await admission.delete_mutating_webhook_configuration(config["metadata"]["name"])

    assert created.metadata.labels == {"e2e.local/mutated": "yes"}
    real = [r["request"] for r in recording_webhook.reviews if not r["request"].get("dryRun")]
    assert len(real) == 1
    request = real[0]
    assert request["operation"] == "CREATE"
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["namespace"] == namespace
    assert request["object"]["metadata"]["name"] == "mutated"
    assert request["userInfo"]["username"] == "admin"


async def test_apiserver_refuses_a_webhook_with_a_foreign_ca(
    k8s_api: k8s.ApiClient, namespace: str, recording_webhook: RecordingWebhook, tmp_path: Any
) -> None:
    """TLS is really verified: a caBundle of another CA makes the call fail, and failurePolicy Fail rejects."""
    other_ca = WebhookTLS.create(tmp_path / "other")
    admission = k8s.AdmissionregistrationV1Api(k8s_api)
    config = mutating_webhook_configuration(
        f"foreign-{namespace}",
        recording_webhook.url,
        other_ca.ca_bundle,
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    )
    await admission.create_mutating_webhook_configuration(config)
    try:

        async def rejected() -> k8s.ApiException | None:
            try:
                await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod("probe"), dry_run="All")
            except k8s.ApiException as e:
                return e
            return None

        error = await wait_for(rejected, what="create rejected by the failing webhook")
    finally:
        await admission.delete_mutating_webhook_configuration(config["metadata"]["name"])
    assert error.status == 500
    assert "failed calling webhook" in str(error.body)
    assert "x509" in str(error.body) or "certificate" in str(error.body)
    assert recording_webhook.reviews == []
