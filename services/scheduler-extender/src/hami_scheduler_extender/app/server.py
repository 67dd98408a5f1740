"""The HTTP server: extender verbs in kube-scheduler's v1 JSON, probes and metrics.

Malformed requests get HTTP 400 with a message saying what to fix; an unexpected error
inside a verb is answered with HTTP 200 and the ``Error`` field (what kube-scheduler reads),
and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from hami_shared.logging import get_logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hami_scheduler_extender.app.extender import BadRequest, Extender
from hami_scheduler_extender.app.metrics import AllocationSnapshot, ExtenderMetrics, render_allocations

log = get_logger(__name__)

MAX_BODY = 64 * 1024 * 1024
EXTENDER_KEY = web.AppKey("extender", Extender)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)
Probe = Callable[[], str | None]
"""A probe: None when fine, else what is wrong."""
HEALTH_KEY: web.AppKey[Probe] = web.AppKey("health")
READY_KEY: web.AppKey[Probe] = web.AppKey("ready")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def _verb(name: str, run: Callable[[Extender, Any], Awaitable[Any]], error_answer: Callable[[str], Any]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        extender = request.app[EXTENDER_KEY]
        metrics = request.app[METRICS_KEY]
        started = time.perf_counter()
        try:
            args = await _body(request)
            answer = await run(extender, args)
        except BadRequest as exc:
            metrics.decisions.labels(verb=name, result="bad-request").inc()
            return web.Response(status=400, text=f"{name}: {exc}\n", content_type="text/plain")
        except Exception as exc:
            log.exception("verb_failed", verb=name)
            metrics.decisions.labels(verb=name, result="error").inc()
            answer = error_answer(f"internal error in {name}: {type(exc).__name__}: {exc}")
        metrics.request_seconds.labels(verb=name).observe(time.perf_counter() - started)
        return web.Response(text=_dumps(answer), content_type="application/json")

    return handler


async def _filter(extender: Extender, args: Any) -> Any:
    return extender.filter(args)


async def _prioritize(extender: Extender, args: Any) -> Any:
    return extender.prioritize(args)


async def _bind(extender: Extender, args: Any) -> Any:
    return await extender.bind(args)


def _filter_error(message: str) -> Any:
    return {"NodeNames": None, "Nodes": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": message}


def _prioritize_error(message: str) -> Any:
    # HostPriorityList has no error field; an empty list means "no opinion".
    return []


def _bind_error(message: str) -> Any:
    return {"Error": message}


async def _healthz(request: web.Request) -> web.Response:
    problem = request.app[HEALTH_KEY]()
    if problem:
        return web.Response(status=503, text=problem + "\n")
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    problem = request.app[READY_KEY]()
    if problem:
        return web.Response(status=503, text=problem + "\n")
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    snapshot = AllocationSnapshot.capture(request.app[EXTENDER_KEY].state)
    # Formatting tens of thousands of GPU samples is slow; keep it off the event loop.
    allocation_text = await asyncio.to_thread(render_allocations, snapshot)
    body = generate_latest(metrics.registry) + allocation_text
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    *,
    extender: Extender,
    metrics: ExtenderMetrics,
    health: Callable[[], str | None],
    ready: Callable[[], str | None],
) -> web.Application:
    """The wired application; background work is owned by the caller (``cli.run``)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[EXTENDER_KEY] = extender
    app[METRICS_KEY] = metrics
    app[HEALTH_KEY] = health
    app[READY_KEY] = ready
    app.router.add_post("/filter", _verb("filter", _filter, _filter_error))
    app.router.add_post("/prioritize", _verb("prioritize", _prioritize, _prioritize_error))
    app.router.add_post("/bind", _verb("bind", _bind, _bind_error))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
