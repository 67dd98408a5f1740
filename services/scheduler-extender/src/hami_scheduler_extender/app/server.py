"""The HTTP servers: extender verbs in kube-scheduler's v1 JSON; probes; metrics.

Three applications (``cli.assemble`` binds them): the verbs (loopback, or HTTPS with client certificates),
the probes (no cluster data) and the metrics (which name pods and GPUs, plus the probes); :func:`create_app`
puts all on one, for tests and the benchmark. Malformed requests get HTTP 400 saying what to fix, a body
over 4 MiB HTTP 413; an unexpected error inside a verb is answered with HTTP 200 and the ``Error`` field
(what kube-scheduler reads), counted as ``internal-error`` and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import pathlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from hami_shared import jsonio
from hami_shared.logging import get_logger
from hami_shared.service.status import Probe, add_probes, metrics_response
from prometheus_client import generate_latest

from hami_scheduler_extender.app.extender import BadRequest, Extender
from hami_scheduler_extender.app.metrics import (
    AllocationCollector,
    ExtenderMetrics,
    QuotaCollector,
    render_allocations,
    render_quotas,
)
from hami_scheduler_extender.app.preempt import no_preemption, preempt

log = get_logger(__name__)

MAX_BODY = 4 * 1024 * 1024
"""Largest request body (bytes). With nodeCacheCapable, kube-scheduler sends a pod and node names:
a few KiB to a few hundred KiB even at 5,000 nodes."""
READ_CHUNK = 64 * 1024


EXTENDER_KEY = web.AppKey("extender", Extender)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)


class _TooLarge(Exception):
    pass


async def _body(request: web.Request) -> Any:
    """The JSON body, read at most MAX_BODY bytes (after any content decoding) into memory."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _TooLarge()
    body = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        body += chunk
        if len(body) > MAX_BODY:
            raise _TooLarge()
    try:
        return jsonio.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from exc


def _verb(name: str, run: Callable[[Extender, Any], Awaitable[Any]], error_answer: Callable[[str], Any]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        extender = request.app[EXTENDER_KEY]
        metrics = request.app[METRICS_KEY]
        started = time.perf_counter()
        try:
            args = await _body(request)
            answer = await run(extender, args)
        except _TooLarge:
            metrics.request_body_refused.inc()
            metrics.decisions.labels(verb=name, result="bad-request").inc()
            response = web.Response(
                status=413,
                text=f"{name}: the request body is larger than {MAX_BODY} bytes (4 MiB), the limit of this extender; "
                "configure kube-scheduler with nodeCacheCapable: true so that it sends node names only\n",
                content_type="text/plain",
            )
            response.force_close()  # the rest of the body is not read
            return response
        except BadRequest as exc:
            metrics.decisions.labels(verb=name, result="bad-request").inc()
            return web.Response(status=400, text=f"{name}: {exc}\n", content_type="text/plain")
        except Exception as exc:
            log.exception("verb_failed", verb=name)
            metrics.decisions.labels(verb=name, result="internal-error").inc()
            answer = error_answer(f"internal error in {name}: {type(exc).__name__}: {str(exc)[:300]}")
        metrics.request_seconds.labels(verb=name).observe(time.perf_counter() - started)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    return handler


async def _filter(extender: Extender, args: Any) -> Any:
    return extender.filter(args)


async def _prioritize(extender: Extender, args: Any) -> Any:
    return extender.prioritize(args)


async def _bind(extender: Extender, args: Any) -> Any:
    return await extender.bind(args)


async def _preempt(extender: Extender, args: Any) -> Any:
    return preempt(extender, args)


def _filter_error(message: str) -> Any:
    return {"NodeNames": None, "Nodes": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": message}


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    collector = AllocationCollector(request.app[EXTENDER_KEY].state, legacy=metrics.legacy)
    # Formatting tens of thousands of GPU samples is slow; keep it off the event loop.
    allocation_text = await asyncio.to_thread(render_allocations, collector)
    quota_text = render_quotas(QuotaCollector(request.app[EXTENDER_KEY].state.quotas, legacy=metrics.legacy))
    return metrics_response(generate_latest(metrics.registry) + allocation_text + quota_text)


def _application(extender: Extender, metrics: ExtenderMetrics) -> web.Application:
    # GET-only applications never read a body; the verbs read theirs themselves, bounded (_body).
    app = web.Application(client_max_size=MAX_BODY)
    app[EXTENDER_KEY] = extender
    app[METRICS_KEY] = metrics
    return app


def _add_verbs(app: web.Application) -> web.Application:
    app.router.add_post("/filter", _verb("filter", _filter, _filter_error))
    # HostPriorityList has no error field; an empty list means "no opinion".
    app.router.add_post("/prioritize", _verb("prioritize", _prioritize, lambda _message: []))
    app.router.add_post("/bind", _verb("bind", _bind, lambda message: {"Error": message}))
    # ExtenderPreemptionResult has no error field either; no node means "preempt nowhere" (logged).
    app.router.add_post("/preempt", _verb("preempt", _preempt, lambda _message: no_preemption()))
    return app


def create_verbs_app(*, extender: Extender, metrics: ExtenderMetrics) -> web.Application:
    return _add_verbs(_application(extender, metrics))


def create_probe_app(*, health: Probe, ready: Probe) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    add_probes(app, health=health, ready=ready)
    return app


def create_metrics_app(*, extender: Extender, metrics: ExtenderMetrics, health: Probe, ready: Probe) -> web.Application:
    app = _application(extender, metrics)
    app.router.add_get("/metrics", _metrics)
    add_probes(app, health=health, ready=ready)
    return app


def create_app(*, extender: Extender, metrics: ExtenderMetrics, health: Probe, ready: Probe) -> web.Application:
    """Verbs, probes and metrics on one application (tests and the benchmark)."""
    return _add_verbs(create_metrics_app(extender=extender, metrics=metrics, health=health, ready=ready))


def server_tls_context(
    *, cert_file: pathlib.Path, key_file: pathlib.Path, client_ca_file: pathlib.Path
) -> ssl.SSLContext:
    """HTTPS for the verbs: our certificate, TLS 1.2 or newer, and a client certificate signed by
    ``client_ca_file`` required from every caller (kube-scheduler's extender ``tlsConfig``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    context.load_verify_locations(cafile=str(client_ca_file))
    context.verify_mode = ssl.CERT_REQUIRED
    return context
