"""The aiohttp application: POST /mutate, POST /validate, health, readiness and metrics.

Draining (``start_draining``, on SIGTERM): /readyz answers 503 and every response closes its connection, so
the apiserver's pooled connections end cleanly while the pod leaves its Service. The review views never let
an exception escape: a body that is not a review gets HTTP 400 with the reason, a failure inside the rules an
errored review (the pod is refused with a message) and a log line with the traceback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol

import structlog
from aiohttp import web
from hami_shared.logging import get_logger
from hami_shared.service.status import add_metrics, add_probes

from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.core import admission, review
from hami_webhook.core.decision import Decision, Denied, Outcome
from hami_webhook.core.policy import MutationPolicy

POLICY_KEY: Final = web.AppKey("policy", MutationPolicy)
METRICS_KEY: Final = web.AppKey("metrics", WebhookMetrics)
LOG_KEY: Final = web.AppKey("log", structlog.stdlib.BoundLogger)
DRAINING_KEY: Final = web.AppKey("draining", asyncio.Event)
MUTATE_PATHS: Final = ("/mutate", "/webhook")
"""``/webhook`` is HAMi's path, kept so a HAMi webhook configuration works unchanged."""
VALIDATE_PATH: Final = "/validate"
"""The tenant guard (ValidatingWebhookConfiguration): every pod, GPU or not."""


class Decide(Protocol):
    def __call__(self, request: review.AdmissionRequest, *, policy: MutationPolicy) -> Decision: ...


def create_app(*, policy: MutationPolicy, metrics: WebhookMetrics | None = None) -> web.Application:
    # The body limit sits above the apiserver's own 3 MiB cap, so the decoder reports size itself.
    app = web.Application(client_max_size=review.MAX_REVIEW_BYTES + 1024)
    app[POLICY_KEY] = policy
    app[METRICS_KEY] = metrics or WebhookMetrics.create()
    # A concrete logger bound once: the module-level lazy proxy re-binds on every call, which
    # costs more than the rules themselves at hundreds of reviews per second.
    app[LOG_KEY] = get_logger(__name__).bind()
    app[DRAINING_KEY] = asyncio.Event()
    app.on_response_prepare.append(_close_while_draining)
    for path in MUTATE_PATHS:
        app.router.add_post(path, mutate)
    app.router.add_post(VALIDATE_PATH, validate)
    # Serving requests needs nothing but the loaded certificate, which exists before the listener starts.
    add_probes(app, ready=lambda: "draining" if app[DRAINING_KEY].is_set() else None)
    add_metrics(app, app[METRICS_KEY].registry)
    return app


async def mutate(request: web.Request) -> web.Response:
    return await _timed(request, admission.admit)


async def validate(request: web.Request) -> web.Response:
    return await _timed(request, admission.validate)


async def _timed(request: web.Request, decide: Decide) -> web.Response:
    metrics = request.app[METRICS_KEY]
    started = time.perf_counter()
    try:
        return await _review(request, metrics, decide)
    finally:
        metrics.request_seconds.observe(time.perf_counter() - started)


async def _review(request: web.Request, metrics: WebhookMetrics, decide: Decide) -> web.Response:
    log = request.app[LOG_KEY]
    try:
        body = await request.read()
    except web.HTTPException:
        metrics.record_decision(Outcome.ERROR)
        raise
    try:
        admission_request = review.decode_review(body)
    except review.MalformedReviewError as exc:
        metrics.record_decision(Outcome.ERROR)
        log.warning("admission_review_malformed", error=str(exc), remote=request.remote)
        return web.Response(status=400, text=f"malformed AdmissionReview: {exc}\n")
    try:
        decision = decide(admission_request, policy=request.app[POLICY_KEY])
        answer = review.review_response(admission_request, decision)
    except Exception as exc:
        # A bug in the rules must not take the process down or let the pod through unchecked.
        metrics.record_decision(Outcome.ERROR)
        log.exception("review_failed", uid=admission_request.uid, namespace=admission_request.namespace)
        message = f"hami-webhook failed to review this pod ({type(exc).__name__}: {exc}); see the hami-webhook logs"
        return web.json_response(review.errored_response(admission_request, message))
    metrics.record_decision(decision.outcome)
    pod = {"uid": admission_request.uid, "namespace": admission_request.namespace, "name": admission_request.name}
    if isinstance(decision, Denied):
        log.info("pod_denied", **pod, reason=decision.reason, message=decision.message)
    else:
        log.debug("pod_allowed", **pod, reason=decision.reason, operations=len(decision.patch))
    return web.json_response(answer)


def start_draining(app: web.Application) -> None:
    """From now on: not ready, and no connection is kept alive after its response."""
    app[DRAINING_KEY].set()


async def _close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    # "Connection: close" tells the client (the apiserver's pool) not to reuse this connection: its next request
    # opens a new one through the Service, which by then leads to another replica.
    # The hook runs after aiohttp computed the headers: the header is set here, force_close ends the connection.
    if request.app[DRAINING_KEY].is_set():
        response.headers["Connection"] = "close"
        response.force_close()
