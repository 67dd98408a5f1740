"""TEST DOUBLE of a device plugin: a small, fully scripted device plugin speaking the real v1beta1 gRPC API over a
unix socket. It exists to test the kubelet stand-in and the control plane wiring; the product's device plugin is
services/device-plugin. Every call it receives is recorded; its devices, health, preferred allocation and
Allocate failures are set by the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from e2e_harness import deviceplugin_api


@dataclass
class DoubleDevicePluginCalls:
    preferred: list[tuple[tuple[str, ...], tuple[str, ...], int]] = field(default_factory=list)
    allocate: list[tuple[str, ...]] = field(default_factory=list)
    pre_start: list[tuple[str, ...]] = field(default_factory=list)
    list_and_watch_opened: int = 0


class DoubleDevicePlugin:
    """Serves ``resource_name`` with ``device_ids`` on ``<plugin_dir>/<socket_name>`` and registers with the
    kubelet socket in the same directory. ``watch_kubelet=True`` serves and registers again when its socket
    disappears (a kubelet restart clears the directory)."""

    def __init__(
        self,
        plugin_dir: Path,
        resource_name: str,
        device_ids: Sequence[str],
        *,
        socket_name: str = "double.sock",
        preferred_allocation: bool = True,
        pre_start_required: bool = False,
        mounts: Sequence[tuple[str, str]] = (),
        extra_envs: Mapping[str, str] | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.resource_name = resource_name
        self.socket = plugin_dir / socket_name
        self.health = dict.fromkeys(device_ids, "Healthy")
        self.preferred_allocation = preferred_allocation
        self.pre_start_required = pre_start_required
        self.mounts = list(mounts)
        self.extra_envs = dict(extra_envs or {})
        self.allocate_error: str | None = None  # when set, Allocate fails with this message
        self.prefer: list[str] | None = None  # when set, GetPreferredAllocation answers from this order
        self.calls = DoubleDevicePluginCalls()
        self.registrations = 0
        self._pb, self._pb_grpc = deviceplugin_api.load()
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()
        self._version = 0
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self, *, register: bool = True, watch_kubelet: bool = True) -> None:
        self.socket.unlink(missing_ok=True)
        server = grpc.aio.server()
        self._pb_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server
        if register:
            await self.register()
        if watch_kubelet:
            self._watch_task = asyncio.create_task(self._watch_kubelet_socket())

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def register(self) -> None:
        async with grpc.aio.insecure_channel(f"unix://{self.plugin_dir / 'kubelet.sock'}") as channel:
            await self._pb_grpc.RegistrationStub(channel).Register(
                self._pb.RegisterRequest(
                    version="v1beta1",
                    endpoint=self.socket.name,
                    resource_name=self.resource_name,
                    options=self._options(),
                ),
                timeout=10,
            )
        self.registrations += 1

    async def _watch_kubelet_socket(self) -> None:
        # A restarting kubelet deletes every socket in the directory; once kubelet.sock is back, serve again
        # and register (what the device-plugin docs recommend plugins do).
        kubelet_sock = self.plugin_dir / "kubelet.sock"
        while True:
            await asyncio.sleep(0.2)
            if not self.socket.exists() and kubelet_sock.exists():
                if self._server is not None:
                    await self._server.stop(grace=None)
                await self.start(register=True, watch_kubelet=False)

    def _options(self) -> Any:
        return self._pb.DevicePluginOptions(
            pre_start_required=self.pre_start_required,
            get_preferred_allocation_available=self.preferred_allocation,
        )

    async def set_health(self, device_id: str, health: str) -> None:
        """Change one device's health and push the new list on every open ListAndWatch stream."""
        async with self._changed:
            self.health[device_id] = health
            self._version += 1
            self._changed.notify_all()

    def _devices(self) -> list[Any]:
        return [self._pb.Device(ID=d, health=h) for d, h in sorted(self.health.items())]


class _Servicer:
    def __init__(self, plugin: DoubleDevicePlugin) -> None:
        self.p = plugin

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return self.p._options()

    async def ListAndWatch(self, request: Any, context: Any) -> Any:
        self.p.calls.list_and_watch_opened += 1
        pb = self.p._pb
        version = self.p._version
        yield pb.ListAndWatchResponse(devices=self.p._devices())
        while True:
            async with self.p._changed:
                await self.p._changed.wait_for(lambda seen=version: self.p._version != seen)
                version = self.p._version
            yield pb.ListAndWatchResponse(devices=self.p._devices())

    async def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        pb = self.p._pb
        responses = []
        for req in request.container_requests:
            available = list(req.available_deviceIDs)
            must = list(req.must_include_deviceIDs)
            self.p.calls.preferred.append((tuple(available), tuple(must), req.allocation_size))
            order = self.p.prefer or sorted(available, reverse=True)
            chosen = must + [d for d in order if d in available and d not in must]
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=chosen[: req.allocation_size]))
        return pb.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(self, request: Any, context: Any) -> Any:
        pb = self.p._pb
        responses = []
        for req in request.container_requests:
            ids = tuple(req.devices_ids)
            self.p.calls.allocate.append(ids)
            if self.p.allocate_error is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.p.allocate_error)
            unknown = [d for d in ids if d not in self.p.health]
            if unknown:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            responses.append(
                pb.ContainerAllocateResponse(
                    envs={"DOUBLE_DEVICES": ",".join(ids), **self.p.extra_envs},
                    mounts=[pb.Mount(container_path=c, host_path=h, read_only=True) for c, h in self.p.mounts],
                    annotations={"double.e2e.local/devices": ",".join(ids)},
                )
            )
        return pb.AllocateResponse(container_responses=responses)

    async def PreStartContainer(self, request: Any, context: Any) -> Any:
        self.p.calls.pre_start.append(tuple(request.devices_ids))
        return self.p._pb.PreStartContainerResponse()
