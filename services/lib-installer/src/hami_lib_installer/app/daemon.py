"""Daemon mode: verify (and repair) the installation on a period, report health, stop on SIGTERM (a pass
under way is finished first). A pass that changes anything after the first is a repair (a file was deleted
or tampered with) and logged as such. Health is served at ``/healthz`` (metrics at ``/metrics``) and/or
written to a health file for exec probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

from aiohttp import web
from hami_shared.logging import get_logger
from hami_shared.service.lifecycle import Lifecycle
from hami_shared.service.status import add_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge

from hami_lib_installer.adapters.fs import FaultPoint
from hami_lib_installer.app.installer import InstallReport, install
from hami_lib_installer.app.settings import Settings

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    status: str
    """starting | ok | failing | stopped"""
    version: str | None = None
    last_success: float | None = None
    error: str | None = None
    changed: tuple[str, ...] = ()

    def healthy(self, now: float, max_age: float) -> bool:
        return self.status == "ok" and self.last_success is not None and now - self.last_success <= max_age

    def as_json(self, now: float, max_age: float) -> dict[str, Any]:
        return {
            "status": self.status if self.status != "ok" or self.healthy(now, max_age) else "stale",
            "healthy": self.healthy(now, max_age),
            "version": self.version,
            "last_success": self.last_success,
            "error": self.error,
            "changed_last_pass": list(self.changed),
        }


class HealthState:
    """The daemon's latest health, shared by the verify loop and the HTTP handler."""

    def __init__(self) -> None:
        self.current = Health("starting")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.passes = Counter(
            "hami_lib_installer_passes", "Verification passes by result", ["result"], registry=self.registry
        )
        self.files_replaced = Counter(
            "hami_lib_installer_files_replaced",
            "Files or stable names written (install, upgrade or repair)",
            registry=self.registry,
        )
        self.versions_removed = Counter(
            "hami_lib_installer_versions_removed", "Old versions collected", registry=self.registry
        )
        self.last_success = Gauge(
            "hami_lib_installer_last_success_timestamp_seconds",
            "Unix time of the last successful pass",
            registry=self.registry,
        )
        self.pass_seconds = Gauge(
            "hami_lib_installer_last_pass_seconds", "Duration of the last successful pass", registry=self.registry
        )

    def record(self, report: InstallReport, now: float) -> None:
        self.passes.labels("ok").inc()
        self.files_replaced.inc(len(report.changed))
        self.versions_removed.inc(len(report.removed_versions))
        self.last_success.set(now)
        self.pass_seconds.set(report.duration_s)


async def assemble_daemon(settings: Settings, life: Lifecycle, *, fault: FaultPoint) -> None:
    """Declare the verify loop and the health endpoint; on SIGTERM the pass under way ends first."""
    state = HealthState()
    metrics = Metrics()
    max_age = max(3 * settings.verify_period, settings.verify_period + 60)

    def stopped() -> None:
        state.current = dataclasses.replace(state.current, status="stopped")
        _write_health_file(settings.health_file, state.current, max_age)
        if life.stopping.is_set():
            log.info("stopped", reason="signal")

    life.resources.callback(stopped)
    if settings.health_listen is not None:
        host, port = settings.health_listen
        await life.serve_http(_health_app(state, metrics, max_age), settings.health_listen)
        log.info("health_endpoint_listening", host=host, port=port, paths=["/healthz", "/metrics"])
    verify = life.task(
        lambda: _verify_loop(settings, fault, state, metrics, life.stopping, max_age), name="verify-installation"
    )
    life.on_stop(verify.join)


async def _verify_loop(
    settings: Settings, fault: FaultPoint, state: HealthState, metrics: Metrics, stop: asyncio.Event, max_age: float
) -> None:
    first = True
    while not stop.is_set():
        try:
            report = await asyncio.to_thread(install, settings, fault=fault, quiet=not first)
        except Exception as exc:  # a failed pass must not end the daemon; it is reported and retried
            metrics.passes.labels("error").inc()
            state.current = dataclasses.replace(state.current, status="failing", error=str(exc), changed=())
            log.error("verification_failed", error=str(exc), error_type=type(exc).__name__)
        else:
            now = time.time()
            metrics.record(report, now)
            if report.changed and not first:
                log.warning(
                    "installation_repaired",
                    changed=[c.path for c in report.changed],
                    reasons=[c.reason for c in report.changed],
                )
            state.current = Health("ok", report.version, now, None, tuple(c.path for c in report.changed))
            first = False
        _write_health_file(settings.health_file, state.current, max_age)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.verify_period)


def _write_health_file(path: pathlib.Path | None, health: Health, max_age: float) -> None:
    if path is None:
        return
    text = json.dumps(health.as_json(time.time(), max_age)) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("health_file_not_written", path=str(path), error=exc.strerror or str(exc))


def _health_app(state: HealthState, metrics: Metrics, max_age: float) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        now = time.time()
        health = state.current
        return web.json_response(health.as_json(now, max_age), status=200 if health.healthy(now, max_age) else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    add_metrics(app, metrics.registry)
    return app
