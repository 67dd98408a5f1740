"""Prometheus metrics of the webhook, in a registry owned by the application (no globals)."""

from __future__ import annotations

import dataclasses
from typing import Final

import prometheus_client

from hami_webhook.core.decision import Outcome

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookMetrics:
    registry: prometheus_client.CollectorRegistry
    request_seconds: prometheus_client.Histogram
    certificate_reloads: prometheus_client.Counter
    decisions_by_outcome: dict[Outcome, prometheus_client.Counter]
    """The labelled children, looked up once (``labels()`` takes a lock and hashes on every call)."""

    @classmethod
    def create(cls) -> WebhookMetrics:
        registry = prometheus_client.CollectorRegistry(auto_describe=True)
        decisions = prometheus_client.Counter(
            "hami_webhook_decisions",
            "Admission reviews answered, by outcome (patched, allowed, denied, error)",
            ["outcome"],
            registry=registry,
        )
        # Creating every child up front also exports zeros, so rates exist from the start.
        by_outcome = {outcome: decisions.labels(outcome=outcome.value) for outcome in Outcome}
        reloads = prometheus_client.Counter(
            "hami_webhook_certificate_reloads",
            "Certificate reload attempts after the files changed, by result (ok, failed)",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            reloads.labels(result=result)
        return cls(
            registry=registry,
            request_seconds=prometheus_client.Histogram(
                "hami_webhook_request_duration_seconds",
                "Time to answer one admission review (POST /mutate or /validate), from reading the body to the answer",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            certificate_reloads=reloads,
            decisions_by_outcome=by_outcome,
        )

    def record_decision(self, outcome: Outcome) -> None:
        self.decisions_by_outcome[outcome].inc()

    def record_reload(self, ok: bool) -> None:
        self.certificate_reloads.labels(result="ok" if ok else "failed").inc()
