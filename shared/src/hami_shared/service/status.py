"""The status endpoints every service serves the same way: ``/healthz``, ``/readyz`` and ``/metrics``.

A probe returns None (or "") when all is well, else what is wrong: its endpoint answers 200 ``ok`` or 503 with
that text. ``/metrics`` is the Prometheus text format of a registry.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], str | None]


def add_probes(app: web.Application, *, ready: Probe = lambda: None, health: Probe = lambda: None) -> None:
    """``GET /healthz`` and ``GET /readyz`` answering from ``health`` and ``ready``."""

    async def healthz(_request: web.Request) -> web.Response:
        return probe_response(health())

    async def readyz(_request: web.Request) -> web.Response:
        return probe_response(ready())

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def probe_response(problem: str | None) -> web.Response:
    return web.Response(status=503, text=problem + "\n") if problem else web.Response(text="ok\n")


def add_metrics(app: web.Application, registry: CollectorRegistry) -> None:
    """``GET /metrics``: the registry's samples."""

    async def metrics(_request: web.Request) -> web.Response:
        return metrics_response(generate_latest(registry))

    app.router.add_get("/metrics", metrics)


def metrics_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# Go's names for the machine architectures HAMi's images are built for (its hami_build_info says linux/amd64).
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def build_info_labels(version: str) -> dict[str, str]:
    """The labels of HAMi's ``hami_build_info`` (value 1), filled with what a Python build knows: no revision or
    build date is recorded in our packages and there is no Go toolchain, so those labels are present and empty."""
    machine = platform.machine().lower()
    return {
        "version": version,
        "revision": "",
        "build_date": "",
        "go_version": "",
        "compiler": f"{platform.python_implementation().lower()}{platform.python_version()}",
        "platform": f"{sys.platform}/{_GOARCH.get(machine, machine)}",
    }
