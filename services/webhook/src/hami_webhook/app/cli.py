"""Entry point of hami-webhook: the HTTPS server and the certificate watch, run by the service kit.

On SIGTERM with ``--shutdown-delay``, it drains first (``server.start_draining``) and a second signal stops
at once; then the listener closes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hami_shared.logging import get_logger
from hami_shared.service.lifecycle import EXIT_CONFIG, Lifecycle, StartError, run_service

from hami_webhook.adapters.tls import ReloadingServerContext, TLSConfigError
from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.app.server import create_app, start_draining
from hami_webhook.app.settings import PROGRAM, Settings

log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(PROGRAM, assemble, argv, exit_codes={TLSConfigError: EXIT_CONFIG})


async def assemble(settings: Settings, life: Lifecycle) -> None:
    """Serve reviews over TLS, reloading the certificate when its files change."""
    metrics = WebhookMetrics.create()
    tls = ReloadingServerContext(settings.certificate_files, on_reload=metrics.record_reload)
    policy = settings.policy()
    app = create_app(policy=policy, metrics=metrics)
    try:
        bound = await life.serve_http(app, settings.listen_address, ssl_context=tls.listening_context, backlog=1024)
    except OSError as exc:
        raise StartError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from exc
    log.info(
        "serving",
        addresses=bound,
        scheduler_name=policy.scheduler_name,
        resource_names=list(policy.resource_names.all()),
        default_gpu_count=policy.default_gpu_count,
        exclusive_cores=policy.exclusive_cores_for_whole_card,
        force_overwrite_default_scheduler=policy.force_overwrite_default_scheduler,
        runtime_class_name=policy.runtime_class_name,
        core_policy=policy.core_policy,
    )
    life.task(lambda: tls.watch(interval=settings.cert_reload_interval), name="certificate-watch")

    async def drain() -> None:
        # Still serving (each response closing its connection) while the pod leaves its Service: the kubelet
        # sends SIGTERM at the same time the endpoint is removed, and kube-proxy (and the apiserver's pooled
        # connections) follow only later. A second signal stops at once.
        if settings.shutdown_delay > 0:
            start_draining(app)
            log.info("draining", seconds=settings.shutdown_delay)
            await life.another_signal(within=settings.shutdown_delay)

    life.on_stop(drain)


if __name__ == "__main__":
    sys.exit(main())
