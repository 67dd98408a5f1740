"""The aiohttp application over real HTTP (aiohttp's test server on loopback)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.app.server import create_app
from hami_webhook.core import admission
from hami_webhook.core.policy import MutationPolicy
from hami_webhook.core.review import AdmissionRequest
from webhook_pods import apply_response_patch, container, pod, review


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(policy=MutationPolicy(), metrics=WebhookMetrics.create())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def post_review(client: TestClient[Any, Any], document: Any, path: str = "/mutate") -> dict[str, Any]:
    resp = await client.post(path, json=document)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    answer: dict[str, Any] = await resp.json()
    return answer


async def metric_value(client: TestClient[Any, Any], line_prefix: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_prefix} not in /metrics:\n{text}")


@pytest.mark.parametrize("path", ["/mutate", "/webhook"])
async def test_gpu_pod_is_patched(client: TestClient[Any, Any], path: str) -> None:
    obj = pod(container(limits={"nvidia.com/gpumem": "3000"}))
    document = review(obj, uid="uid-1")
    answer = await post_review(client, document, path)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["uid"] == "uid-1"
    assert answer["response"]["allowed"] is True
    patched = apply_response_patch(obj, answer["response"])
    assert patched["spec"]["schedulerName"] == "hami-scheduler"
    assert patched["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


async def test_v1beta1_is_answered_in_kind(client: TestClient[Any, Any]) -> None:
    answer = await post_review(client, review(pod(), api_version="admission.k8s.io/v1beta1"))
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]


async def test_denial_is_a_200_review_with_the_message(client: TestClient[Any, Any]) -> None:
    obj = pod(container("cuda", limits={"nvidia.com/gpu": "1"}, privileged=True))
    answer = await post_review(client, review(obj))
    assert answer["response"]["allowed"] is False
    assert "'cuda' is privileged" in answer["response"]["status"]["message"]
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="denied"}') == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "is not JSON"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "no request to answer"),
        (b"[]", "must be a JSON object"),
    ],
)
async def test_malformed_review_gets_400_with_message(client: TestClient[Any, Any], body: bytes, expected: str) -> None:
    resp = await client.post("/mutate", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    text = await resp.text()
    assert "malformed AdmissionReview" in text
    assert expected in text
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="error"}') == 1


async def test_failure_inside_the_rules_gives_an_errored_review(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: AdmissionRequest, *, policy: MutationPolicy) -> Any:
        raise RuntimeError("rule bug")

    monkeypatch.setattr(admission, "admit", broken)
    answer = await post_review(client, review(pod(container(limits={"nvidia.com/gpu": "1"})), uid="u-err"))
    response = answer["response"]
    assert response["uid"] == "u-err"
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert "RuntimeError: rule bug" in response["status"]["message"]
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="error"}') == 1
    # The process keeps serving.
    monkeypatch.undo()
    answer = await post_review(client, review(pod()))
    assert answer["response"]["allowed"] is True


async def test_get_on_mutate_is_405(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/mutate")).status == 405


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.text() == "ok\n"


async def test_metrics_count_decisions_and_latency(client: TestClient[Any, Any]) -> None:
    await post_review(client, review(pod(container(limits={"nvidia.com/gpu": "1"}))))
    await post_review(client, review(pod()))
    await post_review(client, review(pod()))
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="patched"}') == 1
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="allowed"}') == 2
    assert await metric_value(client, 'hami_webhook_decisions_total{outcome="denied"}') == 0
    assert await metric_value(client, "hami_webhook_request_duration_seconds_count") == 3
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'hami_webhook_certificate_reloads_total{result="ok"}' in await resp.text()


async def test_large_but_valid_pod_is_served(client: TestClient[Any, Any]) -> None:
    # 2 MiB of annotations: above aiohttp's default 1 MiB body limit, below the apiserver's 3 MiB.
    obj = pod(container(limits={"nvidia.com/gpu": "1"}), annotations={"big": "x" * (2 * 1024 * 1024)})
    body = io.BytesIO(json.dumps(review(obj)).encode())
    resp = await client.post("/mutate", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert (await resp.json())["response"]["allowed"] is True


async def test_validate_refuses_an_interposer_variable_in_a_pod_without_gpus(client: TestClient[Any, Any]) -> None:
    attack = pod(container("app", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]))
    answer = await post_review(client, review(attack, uid="guard-1"), path="/validate")
    response = answer["response"]
    assert response["uid"] == "guard-1"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "container 'app' sets NVIDIA_VISIBLE_DEVICES" in response["status"]["message"]
    assert "patch" not in response
    plain = await post_review(client, review(pod(container("app")), uid="guard-2"), path="/validate")
    assert plain["response"] == {"uid": "guard-2", "allowed": True}
