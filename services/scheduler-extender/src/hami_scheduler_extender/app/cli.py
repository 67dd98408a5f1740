"""Entry point of hami-scheduler-extender: ``assemble`` declares the background tasks (watches, API
writers, reservation sweeper, leader election) and the three HTTP listeners (``server.py``) that the
service kit runs under one TaskGroup and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import socket
import sys
import time
import uuid
from collections.abc import Sequence

from hami_shared.kube import Reflector
from hami_shared.logging import get_logger
from hami_shared.service.kube import api_client
from hami_shared.service.lifecycle import Lifecycle, run_service
from prometheus_client import CollectorRegistry

from hami_scheduler_extender import __version__
from hami_scheduler_extender.adapters import kube, leader, quota_watch, watch
from hami_scheduler_extender.app.extender import Extender, ExtenderConfig
from hami_scheduler_extender.app.metrics import ExtenderMetrics
from hami_scheduler_extender.app.server import (
    create_metrics_app,
    create_probe_app,
    create_verbs_app,
    server_tls_context,
)
from hami_scheduler_extender.app.settings import PROGRAM, Settings
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.quota import QuotaLedger
from hami_scheduler_extender.core.state import ClusterState

log = get_logger(__name__)

SWEEP_INTERVAL_S = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(PROGRAM, assemble, argv)


def extender_config(settings: Settings) -> ExtenderConfig:
    return ExtenderConfig(
        names=settings.resource_names(),
        defaults=settings.request_defaults(),
        node_policy=Policy(settings.node_scheduler_policy),
        gpu_policy=Policy(settings.gpu_policy_chain().primary.value),
        gpu_chain=settings.gpu_policy_chain(),
        success_events=settings.success_events,
        event_limits=settings.event_limits(),
        node_label=settings.vgpu_node_label,
        scheduler_names=settings.scheduler_names(),
        filter_best_nodes=settings.filter_best_nodes,
    )


def settle_heap() -> None:
    """After the initial lists: move the long-lived cache objects out of the cyclic GC's reach.

    A full collection would walk every cached hold and view (hundreds of thousands at 5,000 nodes) and
    stall a filter for tens of milliseconds; the objects are acyclic, so reference counting still frees them.
    """
    gc.collect()
    gc.freeze()


async def _settle_when_synced(*reflectors: Reflector) -> None:
    for reflector in reflectors:
        await reflector.synced.wait()
    settle_heap()
    log.info("caches_synced")


async def _sweep(state: ClusterState, ttl: float) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        expired = state.expire_assumed(now=time.time(), ttl=ttl)
        if expired:
            log.warning("reservations_expired", pods=expired, ttl=ttl)


async def assemble(settings: Settings, life: Lifecycle) -> None:
    tls = settings.tls_files()
    # Before anything listens: unreadable certificate files stop the start with the reason.
    tls_context = server_tls_context(cert_file=tls[0], key_file=tls[1], client_ca_file=tls[2]) if tls else None
    api = await life.resources.enter_async_context(api_client(settings.kubeconfig))
    metrics = ExtenderMetrics(
        CollectorRegistry(auto_describe=True), version=__version__, legacy=settings.legacy_metrics
    )
    ignored = watch.IgnoredPods(count=lambda reason: metrics.pods_ignored.labels(reason=reason).inc())
    state = ClusterState(
        max_assumed=settings.max_pending_holds,
        assume_ttl=settings.assume_ttl,
        on_ignored=ignored.report_allocation,
        quotas=QuotaLedger(settings.resource_names()),
        known_geometries=settings.allowed_mig_geometries(),
    )
    metrics.pending_holds.set_function(state.assumed_count)
    config = extender_config(settings)
    kube_client = kube.KubeClient(
        api,
        component=settings.scheduler_name,
        label_rate=settings.label_writes_per_second,
        label_burst=settings.label_write_burst,
    )
    metrics.label_writes_pending.set_function(kube_client.labels_pending)
    metrics.nodes_topology_ignored.set_function(state.topology_ignored)
    nodes = watch.node_reflector(
        api,
        state,
        count_resource=settings.resource_count,
        on_restart=metrics.watch_restarts.labels(resource="nodes").inc,
        on_malformed=metrics.nodes_malformed.inc,
    )
    quotas = (
        quota_watch.quota_reflector(
            api,
            state.quotas,
            names=settings.resource_names(),
            on_restart=metrics.watch_restarts.labels(resource="resourcequotas").inc,
            on_malformed=metrics.quotas_malformed.inc,
        )
        if settings.resource_quotas
        else None
    )
    elector = None
    if settings.leader_elect:
        identity = settings.leader_elect_identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        elector = leader.LeaseElector(
            api,
            namespace=settings.leader_elect_namespace,
            name=settings.leader_elect_name,
            identity=identity,
            lease_duration=settings.lease_duration,
            renew_interval=settings.renew_interval,
        )

    pods = watch.pod_reflector(
        api,
        state,
        on_restart=metrics.watch_restarts.labels(resource="pods").inc,
        trust=config.trust,
        ignored=ignored,
        on_pod=lambda pod: extender.pod_seen(pod),
    )

    def ready() -> str | None:
        if not nodes.synced.is_set() or not pods.synced.is_set():
            return "caches not synced yet: the node and pod lists are still loading"
        if quotas is not None and not quotas.synced.is_set():
            return "caches not synced yet: the ResourceQuota list is still loading (needs list/watch resourcequotas)"
        if elector is not None and not elector.is_leader:
            return f"not the leader (Lease {settings.leader_elect_namespace}/{settings.leader_elect_name})"
        return None

    extender = Extender(
        state=state,
        kube=kube_client,
        config=config,
        metrics=metrics,
        ready=ready,
        leading=lambda: elector is None or elector.is_leader,
    )
    verbs = create_verbs_app(extender=extender, metrics=metrics)
    await life.serve_http(verbs, settings.listen, ssl_context=tls_context, reuse_address=True)
    probes = create_probe_app(health=lambda: None, ready=ready)
    await life.serve_http(probes, settings.probe_listen, reuse_address=True)
    status = create_metrics_app(extender=extender, metrics=metrics, health=lambda: None, ready=ready)
    await life.serve_http(status, settings.metrics_listen, reuse_address=True)
    log.info(
        "started",
        listen=f"{settings.listen[0]}:{settings.listen[1]}",
        verbs_https=tls_context is not None,
        settings={k: str(v) for k, v in dataclasses.asdict(settings).items()},
    )
    life.task(nodes.run, name="watch-nodes")
    life.task(pods.run, name="watch-pods")
    if quotas is not None:
        life.task(quotas.run, name="watch-resourcequotas")
    life.task(lambda: _settle_when_synced(nodes, pods), name="settle-heap")
    life.task(kube_client.run_writers, name="api-writes")
    life.task(lambda: _sweep(state, settings.assume_ttl), name="sweep-reservations")
    if elector is not None:
        life.task(elector.run, name="leader-election")


if __name__ == "__main__":
    sys.exit(main())
