"""The status endpoints of the kit: one answer format for every service's probes and metrics."""

from __future__ import annotations

import platform
import sys

from aiohttp import web
from hami_shared.service import status
from hami_shared.service.status import add_metrics, add_probes, metrics_response, probe_response
from prometheus_client import CollectorRegistry, Counter


def test_a_probe_answers_ok_or_503_with_what_is_wrong() -> None:
    assert (probe_response(None).status, probe_response(None).text) == (200, "ok\n")
    assert (probe_response("").status, probe_response("").text) == (200, "ok\n")
    waiting = probe_response("waiting for pod list")
    assert (waiting.status, waiting.text) == (503, "waiting for pod list\n")


def test_routes_and_metrics_body() -> None:
    app = web.Application()
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc()
    add_probes(app, ready=lambda: "draining")
    add_metrics(app, registry)
    paths = sorted(r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource is not None)
    assert paths == ["/healthz", "/metrics", "/readyz"]
    response = metrics_response(b"demo_things_total 1.0\n")
    assert response.content_type == "text/plain"
    assert response.body == b"demo_things_total 1.0\n"


def test_build_info_labels_are_hamis_with_what_a_python_build_knows() -> None:
    labels = status.build_info_labels("1.2.3")
    assert set(labels) == {"version", "revision", "build_date", "go_version", "compiler", "platform"}
    assert labels["version"] == "1.2.3"
    assert (labels["revision"], labels["build_date"], labels["go_version"]) == ("", "", "")  # not recorded, not Go
    assert labels["compiler"].startswith(platform.python_implementation().lower())
    os_name, _, arch = labels["platform"].partition("/")
    assert os_name == sys.platform
    assert arch
    assert arch != "x86_64"
