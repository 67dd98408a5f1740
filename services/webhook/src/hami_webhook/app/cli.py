"""Command-line entry point: read settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web
from hami_shared.config import ConfigError
from hami_shared.logging import configure_logging, get_logger

from hami_webhook.adapters.tls import ReloadingServerContext, TLSConfigError
from hami_webhook.app.metrics import WebhookMetrics
from hami_webhook.app.server import create_app, start_draining
from hami_webhook.app.settings import PROG, WebhookSettings, load_webhook_settings

log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_webhook_settings(argv)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, service=PROG)
    try:
        asyncio.run(serve(settings))
    except TLSConfigError as exc:
        log.error("cannot start", error=str(exc))
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot listen", listen=settings.listen, error=str(exc))
        print(f"{PROG}: cannot listen on {settings.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: WebhookSettings) -> None:
    """Serve until SIGTERM or SIGINT, reloading the certificate when its files change."""
    metrics = WebhookMetrics.create()
    tls = ReloadingServerContext(settings.certificate_files, on_reload=metrics.record_reload)
    policy = settings.policy()
    app = create_app(policy=policy, metrics=metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        host, port = settings.listen_address
        site = web.TCPSite(runner, host, port, ssl_context=tls.listening_context, backlog=1024)
        await site.start()
        bound = [f"{address[0]}:{address[1]}" for address in runner.addresses]
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(tls.watch(interval=settings.cert_reload_interval), name="certificate-watch")
            await stop.wait()
            if settings.shutdown_delay > 0:
                # Still serving (each response closing its connection) while the pod leaves its Service: the
                # kubelet sends SIGTERM at the same time the endpoint is removed, and kube-proxy (and the
                # apiserver's pooled connections) follow only later. A second signal stops at once.
                start_draining(app)
                stop.clear()
                log.info("draining", seconds=settings.shutdown_delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.shutdown_delay)
            log.info("stopping")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
