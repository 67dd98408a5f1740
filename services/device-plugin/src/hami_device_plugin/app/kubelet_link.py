"""The kubelet side of the lifecycle: serve the plugin socket, then register; start over when kubelet
restarts.

A starting kubelet removes every file in the device-plugins directory but its checkpoint, creates ``kubelet.sock``
again, and admits the pods it receives without the plugins that have not registered again: such a pod fails its
admission. A restarted kubelet v1.34 received its pods about 170 ms after creating its socket; a 4 Hz poll lost
the burst's pods (tests/e2e/test_real_node_burst_restarts.py). So we poll the directory 20 times a second (two
stat calls; no inotify dependency) and restart the server and the registration when ``kubelet.sock`` is a new file
or our own socket is gone. A failed registration is retried with backoff, serving anew first when our socket went
away meanwhile (tests/e2e/test_device_plugin_allocate.py); ListAndWatch streams end with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hami_shared.logging import get_logger

from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.plugin import DevicePluginState, Servicer, pb, pb_grpc, plugin_options

log = get_logger(__name__)

API_VERSION: Final = "v1beta1"
POLL_S: Final = 0.05
REGISTER_TIMEOUT_S: Final = 5.0
SERVICE_NAME: Final = "v1beta1.DevicePlugin"


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class KubeletLink:
    """Serves the plugin on ``<dir>/<socket_name>`` and keeps it registered with ``<dir>/<kubelet_socket>``."""

    def __init__(
        self,
        *,
        state: DevicePluginState,
        metrics: PluginMetrics,
        directory: Path,
        socket_name: str,
        kubelet_socket: str,
        resource_name: str,
        stop_grace: float = 0.5,
        servicer: Callable[[asyncio.Event], Any] | None = None,
        options: Callable[[], Any] | None = None,
    ) -> None:
        """``servicer`` and ``options``: another DevicePlugin service than ``state``'s (a static MIG resource,
        app/mig_static.py), built per server from its stop event, and its options."""
        self._servicer = servicer or (lambda stopping: Servicer(state, stopping))
        self._options = options or (lambda: plugin_options(state))
        self._state = state
        self._metrics = metrics
        self._socket = directory / socket_name
        self._kubelet = directory / kubelet_socket
        self._resource = resource_name
        self._stop_grace = stop_grace
        """Seconds the calls in flight get to finish when the server stops (at shutdown: a whole Allocate)."""
        self.registered = asyncio.Event()

    async def run(self) -> None:
        """Serve and stay registered until cancelled."""
        while True:
            stopping = asyncio.Event()
            server = await self._start_server(stopping)
            try:
                kubelet_identity = await self._register_until_done()
                if kubelet_identity is None:
                    # A starting kubelet removed our socket while we retried: serve anew, then register.
                    log.info("plugin_socket_removed", socket=str(self._socket))
                    continue
                self.registered.set()
                await self._wait_for_restart(kubelet_identity)
                log.info("kubelet_restart_detected", socket=str(self._kubelet))
            finally:
                self.registered.clear()
                stopping.set()
                await server.stop(grace=self._stop_grace)
                if _identity(self._socket) is not None:
                    with contextlib.suppress(FileNotFoundError):
                        self._socket.unlink()

    async def _start_server(self, stopping: asyncio.Event) -> grpc.aio.Server:
        self._socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._socket.unlink()  # a stale socket of an earlier run
        server = grpc.aio.server()
        pb_grpc.add_DevicePluginServicer_to_server(self._servicer(stopping), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(f"unix://{self._socket}")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", socket=str(self._socket))
        return server

    async def _register_until_done(self) -> tuple[int, int, int] | None:
        """Register until kubelet accepts (its socket's identity), or None once our own socket is gone: a kubelet
        that starts removes every file of the directory, so registering again would point it at nothing."""
        delay = 0.25
        while True:
            if _identity(self._socket) is None:
                return None
            identity = _identity(self._kubelet)
            if identity is None:
                await asyncio.sleep(POLL_S)
                continue
            try:
                await self._register()
            except grpc.aio.AioRpcError as exc:
                self._metrics.registrations.labels("error").inc()
                log.warning("register_failed", kubelet=str(self._kubelet), code=str(exc.code()), error=exc.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._metrics.registrations.labels("success").inc()
            log.info("registered", kubelet=str(self._kubelet), resource=self._resource, endpoint=self._socket.name)
            return identity

    async def _register(self) -> None:
        request: Any = pb.RegisterRequest(
            version=API_VERSION,
            endpoint=self._socket.name,
            resource_name=self._resource,
            options=self._options(),
        )
        async with grpc.aio.insecure_channel(f"unix://{self._kubelet}") as channel:
            await pb_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)

    async def _wait_for_restart(self, kubelet_identity: tuple[int, int, int]) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            current = _identity(self._kubelet)
            if current is not None and current != kubelet_identity:
                return
            if _identity(self._socket) is None:
                # kubelet cleaned the directory; wait for its new socket before registering again.
                return
