"""TEST DOUBLE of the kubelet's device-manager side (no kubelet can run here): serves the v1beta1
Registration service on ``kubelet.sock``, and for each registration dials the plugin, reads its options
and keeps ListAndWatch open, recording every device list. ``restart()`` behaves like a kubelet restart:
stop serving, delete every file in the directory but the checkpoint, serve a new ``kubelet.sock``.
Real gRPC over unix sockets throughout; the plugin under test is the real process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc
from hami_device_plugin.adapters.protos import load

pb, pb_grpc = load()


class KubeletDouble:
    def __init__(self, directory: Path, primary: str = "nvidia.com/gpu") -> None:
        """``primary``: the resource whose connection ``stub`` and ``device_lists`` follow (the plugin's own);
        the others (static MIG resources) are kept apart in ``resources``."""
        self.dir = directory
        self.registrations: list[tuple[float, Any]] = []
        self.device_lists: list[dict[str, str]] = []
        self.options: Any = None
        self.stub: Any = None
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._watch: asyncio.Task[None] | None = None
        self._updated = asyncio.Event()
        self.registered = asyncio.Event()
        self.resources: dict[str, Any] = {}
        """Further resources (static MIG): resource name -> its stub, device lists and connection."""
        self.primary = primary

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "kubelet_internal_checkpoint").write_text("{}")
        server = grpc.aio.server()
        outer = self

        class Registration(pb_grpc.RegistrationServicer):  # type: ignore[misc]
            async def Register(self, request: Any, context: Any) -> Any:
                outer.registrations.append((time.monotonic(), request))
                if request.resource_name == outer.primary:
                    await outer._connect(request.endpoint)
                    outer.registered.set()
                else:
                    await outer._connect_other(request.resource_name, request.endpoint)
                return pb.Empty()

        pb_grpc.add_RegistrationServicer_to_server(Registration(), server)
        server.add_insecure_port(f"unix://{self.dir / 'kubelet.sock'}")
        await server.start()
        self._server = server

    async def _connect(self, endpoint: str) -> None:
        await self._disconnect()
        self._channel = grpc.aio.insecure_channel(f"unix://{self.dir / endpoint}")
        self.stub = pb_grpc.DevicePluginStub(self._channel)
        self.options = await self.stub.GetDevicePluginOptions(pb.Empty(), timeout=10)
        self._watch = asyncio.create_task(self._list_and_watch(self.stub))

    async def _connect_other(self, resource: str, endpoint: str) -> None:
        """Another resource of the plugin (kubelet keeps one connection per resource)."""
        old = self.resources.pop(resource, None)
        if old is not None:
            old["watch"].cancel()
            await old["channel"].close()
        channel = grpc.aio.insecure_channel(f"unix://{self.dir / endpoint}")
        stub = pb_grpc.DevicePluginStub(channel)
        lists: list[dict[str, str]] = []

        async def watch() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for response in stub.ListAndWatch(pb.Empty()):
                    lists.append({d.ID: d.health for d in response.devices})
                    self._updated.set()

        self.resources[resource] = {
            "channel": channel,
            "stub": stub,
            "lists": lists,
            "watch": asyncio.create_task(watch()),
        }

    async def wait_resource(self, resource: str, predicate: Any, within: float = 60.0) -> dict[str, str]:
        """The first device list of ``resource`` (not the primary) that satisfies ``predicate``."""
        async with asyncio.timeout(within):
            while True:
                lists = self.resources.get(resource, {}).get("lists")
                if lists and predicate(lists[-1]):
                    return dict(lists[-1])
                self._updated.clear()
                await self._updated.wait()

    async def _list_and_watch(self, stub: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in stub.ListAndWatch(pb.Empty()):
                self.device_lists.append({d.ID: d.health for d in response.devices})
                self._updated.set()

    async def _disconnect(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def stop(self) -> None:
        await self._disconnect()
        for other in self.resources.values():
            other["watch"].cancel()
            await other["channel"].close()
        self.resources.clear()
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def restart(self) -> float:
        """Like a kubelet restart; returns the monotonic time the new kubelet.sock appeared."""
        await self.stop()
        self.registered.clear()
        for entry in self.dir.iterdir():
            if entry.name != "kubelet_internal_checkpoint":
                entry.unlink()
        await self.start()
        return time.monotonic()

    async def wait_devices(self, predicate: Any, within: float = 60.0) -> dict[str, str]:
        """The first device list (from now on, or the latest) that satisfies ``predicate``."""
        async with asyncio.timeout(within):
            while True:
                if self.device_lists and predicate(self.device_lists[-1]):
                    return self.device_lists[-1]
                self._updated.clear()
                await self._updated.wait()
