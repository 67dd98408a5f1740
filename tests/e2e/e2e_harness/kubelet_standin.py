"""TEST HARNESS: a stand-in for the kubelet (a test double; no real kubelet can run on our machines).

It plays the kubelet's part towards the two peers our services meet there, with their real protocols:

* Device plugins: it serves the device-plugin ``Registration`` service (v1beta1, real gRPC over a unix socket) on
  ``kubelet.sock`` in its own device-plugins directory; for every registered plugin it dials the plugin's socket,
  calls GetDevicePluginOptions, keeps ListAndWatch open and mirrors the device list into the Node status as the
  kubelet does (capacity = all devices, allocatable = healthy devices; a plugin that goes away leaves its capacity
  with zero allocatable).
* The API server: it registers its Node (as ``system:node:<name>``, so the Node authorizer and NodeRestriction
  apply), watches the pods bound to it and admits them one at a time in the order they reached the node (a listed
  batch oldest first), like the kubelet:
  per container (init containers first) GetPreferredAllocation when the plugin offers it, then Allocate
  (and PreStartContainer when required); device IDs in use by other live pods are never handed out again, and
  come back when their pod ends or is deleted. The pod is then set Running, or Failed with reason
  ``UnexpectedAdmissionError`` and the plugin's error in the message.

Optionally (``run_commands=True``) it runs each container's command as a local process under the environment a
container would get (spec env over the Allocate env) with mounts mapped onto host paths -- see
:func:`container_environment` -- and ends the pod Succeeded or Failed from the exit codes. Mounts that a path
rewrite cannot stand for are real: when an Allocate mounts the enforcement spec (hamicore reads it at a fixed
path, never from the environment), the process runs in a private mount namespace with that file bind-mounted
read-only and the directory mounts (the per-container accounting directory) bind-mounted at their container
paths -- see :func:`namespace_argv`. :meth:`restart`
simulates a kubelet restart: the registration server goes away, every file in the device-plugins directory except
the checkpoint is removed, and ``kubelet.sock`` is created again, so plugins must re-register.

Not simulated: cgroups, images, volumes, probes, restarts of exited containers, node heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from e2e_harness import deviceplugin_api
from e2e_harness.cluster import LocalCluster

log = logging.getLogger("kubelet-standin")

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
CHECKPOINT = "kubelet_internal_checkpoint"
KUBELET_SOCKET = "kubelet.sock"
SUPPORTED_VERSIONS = ("v1beta1",)
KUBELET_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
# Fields of a pod spec's resources whose names are not extended resources.
NATIVE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "pods"})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class ContainerAllocation:
    """What one device plugin's Allocate returned for one container."""

    container: str
    init_container: bool
    resource: str
    device_ids: tuple[str, ...]
    envs: Mapping[str, str]
    mounts: tuple[MountSpec, ...]
    device_specs: tuple[tuple[str, str, str], ...]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class AllocateCall:
    """One Allocate (or GetPreferredAllocation) call as the stand-in made it, for assertions."""

    rpc: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass
class _PluginEndpoint:
    resource: str
    socket: Path
    options: Any = None
    devices: dict[str, str] = field(default_factory=dict)
    connected: bool = False
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    channel: grpc.aio.Channel | None = None
    stub: Any = None


@dataclass
class _PodRecord:
    uid: str
    namespace: str
    name: str
    raw: dict[str, Any]
    arrival: int = 0
    """The order in which the pod reached this node (kubelet's admission order)."""
    admitted: bool = False
    finished: bool = False
    allocations: list[ContainerAllocation] = field(default_factory=list)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)


def _extended_requests(container: Mapping[str, Any], managed: set[str]) -> dict[str, int]:
    """Device counts a container asks for: limits (requests must equal them for extended resources)."""
    resources = container.get("resources") or {}
    wanted = dict(resources.get("requests") or {})
    wanted.update(resources.get("limits") or {})
    out: dict[str, int] = {}
    for name, qty in wanted.items():
        if name in managed and name not in NATIVE_RESOURCES:
            n = int(str(qty))
            if n > 0:
                out[name] = n
    return out


def _map_path(value: str, mounts: tuple[MountSpec, ...]) -> str:
    for m in sorted(mounts, key=lambda m: len(m.container_path), reverse=True):
        cp = m.container_path.rstrip("/") or "/"
        if value == cp:
            return m.host_path
        if value.startswith(cp + "/"):
            return m.host_path.rstrip("/") + value[len(cp) :]
    return value


SPEC_CONTAINER_PATH = "/etc/hami/vgpu.spec"

# Real mounts in a private mount namespace, then exec "$@". Arguments: N, then N triples container_path host_path
# ro|rw (shortest container path first), then the program. A file's directory becomes a private tmpfs first (only
# its own mount point directory is created on the host, empty). LD_PRELOAD is applied to the program only.
_NAMESPACE_SCRIPT = r"""
set -e
n=$1; shift
while [ "$n" -gt 0 ]; do
  cp=$1 hp=$2 mode=$3; shift 3; n=$((n - 1))
  if [ -d "$hp" ]; then
    mount --bind "$hp" "$cp"
  else
    mount -t tmpfs -o size=64k,mode=0755 standin-mount "$(dirname "$cp")"
    : > "$cp"
    mount --bind "$hp" "$cp"
  fi
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$cp"; fi
done
if [ -n "$STANDIN_PRELOAD" ]; then export LD_PRELOAD="$STANDIN_PRELOAD"; fi
unset STANDIN_PRELOAD
exec "$@"
"""


def namespace_argv(
    argv: list[str], env: Mapping[str, str], mounts: tuple[MountSpec, ...]
) -> tuple[list[str], dict[str, str]]:
    """argv and env that run ``argv`` with the Allocate's spec mount (and its directory mounts) real, in a private
    mount namespace (``unshare``; we are root); unchanged when no Allocate mounted a spec."""
    if not any(m.container_path == SPEC_CONTAINER_PATH for m in mounts):
        return argv, dict(env)
    real = sorted(
        (m for m in mounts if m.container_path == SPEC_CONTAINER_PATH or Path(m.host_path).is_dir()),
        key=lambda m: len(m.container_path),
    )
    args: list[str] = [str(len(real))]
    for m in real:
        # The mount points themselves, created once on the host (empty directories, never written to).
        Path(m.container_path if Path(m.host_path).is_dir() else posixpath.dirname(m.container_path)).mkdir(
            parents=True, exist_ok=True
        )
        args += [m.container_path, m.host_path, "ro" if m.read_only else "rw"]
    out = dict(env)
    out["STANDIN_PRELOAD"] = out.pop("LD_PRELOAD", "")
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _NAMESPACE_SCRIPT, "sh", *args,
            *argv], out  # fmt: skip


def container_environment(
    base: Mapping[str, str],
    allocations: list[ContainerAllocation],
    spec_env: list[Mapping[str, Any]],
) -> dict[str, str]:
    """The environment a container process gets from the stand-in, without a mount namespace:

    * ``base``, then every Allocate ``envs`` of the container, then the literal ``env`` values of the pod spec
      (the spec wins, as with the kubelet);
    * every value that is a path (or ``:``-separated path list) under a mount's container_path is rewritten to the
      mount's host_path;
    * a mount whose container_path is ``/etc/ld.so.preload`` becomes ``LD_PRELOAD`` (the host file's entries,
      mapped the same way), since a local process cannot have its own /etc;
    * ``HAMI_E2E_MOUNTS`` holds the container_path -> host_path map as JSON and ``HAMI_E2E_DEVICES`` the device
      specs, for programs that need to resolve other paths themselves.
    """
    env = dict(base)
    mounts: tuple[MountSpec, ...] = ()
    devices: list[dict[str, str]] = []
    for a in allocations:
        env.update(a.envs)
        mounts += a.mounts
        devices += [{"container_path": c, "host_path": h, "permissions": p} for c, h, p in a.device_specs]
    for item in spec_env:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "valueFrom" not in item:
            env[item["name"]] = ""
    env = {k: ":".join(_map_path(part, mounts) for part in v.split(":")) for k, v in env.items()}
    for m in mounts:
        if m.container_path == "/etc/ld.so.preload" and Path(m.host_path).is_file():
            libs = [_map_path(x, mounts) for x in Path(m.host_path).read_text().split() if x]
            env["LD_PRELOAD"] = ":".join([*libs, *([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])])
    env["HAMI_E2E_MOUNTS"] = json.dumps({m.container_path: m.host_path for m in mounts})
    env["HAMI_E2E_DEVICES"] = json.dumps(devices)
    return env


class AdmissionError(Exception):
    """The pod cannot start on this node; the message goes into the pod status like the kubelet's."""


class KubeletStandIn:
    """TEST DOUBLE for the kubelet of one Node; see the module docstring. Use ``async with`` or start()/stop()."""

    def __init__(
        self,
        cluster: LocalCluster,
        node_name: str,
        *,
        device_plugin_dir: Path,
        work_dir: Path,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
        run_commands: bool = False,
        process_env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.device_plugin_dir = device_plugin_dir
        self.work_dir = work_dir
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})
        self.base_capacity = dict(capacity or {"cpu": "16", "memory": "64Gi", "pods": "110"})
        self.run_commands = run_commands
        self.process_env = dict(process_env or {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
        self.kubeconfig = cluster.kubeconfig_for_user(f"system:node:{node_name}", ("system:nodes",))
        self.registrations: list[tuple[str, str]] = []  # (resource, endpoint) in arrival order
        self.calls: list[AllocateCall] = []
        self._pb, self._pb_grpc = deviceplugin_api.load()
        self._endpoints: dict[str, _PluginEndpoint] = {}
        self._pods: dict[str, _PodRecord] = {}
        self._arrivals = itertools.count()
        self._admission_wakeup = asyncio.Event()
        self._node_lock = asyncio.Lock()
        self._server: grpc.aio.Server | None = None
        self._api: k8s.ApiClient | None = None
        self._tasks: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stopping = False
        self._admission_open = asyncio.Event()
        self._admission_open.set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.device_plugin_dir / KUBELET_SOCKET

    async def __aenter__(self) -> KubeletStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        async with self.cluster.api_client(self.kubeconfig) as api:
            await self._register_node(k8s.CoreV1Api(api))
        self._api = await k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        await self._start_registration_server()
        started = asyncio.Event()
        self._tasks = asyncio.create_task(self._run(started), name=f"kubelet-standin-{self.node_name}")
        await started.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._tasks is not None:
            self._tasks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks
            self._tasks = None
        for rec in self._pods.values():
            await self._kill_processes(rec)
        for ep in self._endpoints.values():
            if ep.channel is not None:
                await ep.channel.close()
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def restart(self) -> None:
        """Simulate a kubelet restart: drop the registration server and every plugin connection, delete every
        file in the device-plugins directory except the checkpoint, then serve kubelet.sock again. Allocations
        survive (the real kubelet keeps them in its checkpoint); plugins must register again."""
        assert self._tg is not None, "start() first"
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        for ep in list(self._endpoints.values()):
            await self._disconnect(ep)
        for entry in self.device_plugin_dir.iterdir():
            if entry.name != CHECKPOINT:
                entry.unlink(missing_ok=True)
        await self._sync_node_resources()
        await self._start_registration_server()

    async def _run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._watch_pods())
            tg.create_task(self._admission_worker())
            started.set()

    # --- Node ------------------------------------------------------------------------------------------------

    async def _register_node(self, core: k8s.CoreV1Api) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        body = {"metadata": {"name": self.node_name, "labels": labels, "annotations": self.annotations}}
        try:
            await core.create_node(body)
        except k8s.ApiException as e:
            if e.status != 409:
                raise
        await core.patch_node_status(self.node_name, {"status": self._base_status()})

    def _base_status(self) -> dict[str, Any]:
        now = _now()
        return {
            "capacity": dict(self.base_capacity),
            "allocatable": dict(self.base_capacity),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet stand-in (test double) is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "kubelet stand-in",
                "containerRuntimeVersion": "standin://0",
                "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def _sync_node_resources(self) -> None:
        """Capacity = every device the plugin lists; allocatable = the healthy ones (0 while disconnected)."""
        capacity = dict(self.base_capacity)
        allocatable = dict(self.base_capacity)
        for resource, ep in self._endpoints.items():
            capacity[resource] = str(len(ep.devices))
            healthy = sum(1 for h in ep.devices.values() if h == HEALTHY) if ep.connected else 0
            allocatable[resource] = str(healthy)
        async with self._node_lock:
            assert self._api is not None
            await k8s.CoreV1Api(self._api).patch_node_status(
                self.node_name, {"status": {"capacity": capacity, "allocatable": allocatable}}
            )

    # --- device-plugin registration and connections ---------------------------------------------------------

    async def _start_registration_server(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server()
        self._pb_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self._server = server

    async def _on_register(self, request: Any) -> str | None:
        """Validate a RegisterRequest like the kubelet; on success connect to the plugin in the background."""
        if request.version not in SUPPORTED_VERSIONS:
            return f"Unsupported device plugin API version {request.version!r}; supported: {SUPPORTED_VERSIONS}"
        if "/" not in request.resource_name or request.resource_name.split("/", 1)[0] in ("", "kubernetes.io"):
            return f"invalid extended resource name {request.resource_name!r}"
        socket = self.device_plugin_dir / request.endpoint
        if not request.endpoint or "/" in request.endpoint:
            return f"endpoint must be a socket file name in {self.device_plugin_dir}, got {request.endpoint!r}"
        old = self._endpoints.get(request.resource_name)
        if old is not None:
            await self._disconnect(old)
        ep = _PluginEndpoint(resource=request.resource_name, socket=socket)
        self._endpoints[request.resource_name] = ep
        self.registrations.append((request.resource_name, request.endpoint))
        assert self._tg is not None
        ep.task = self._tg.create_task(self._serve_endpoint(ep))
        return None

    async def _disconnect(self, ep: _PluginEndpoint) -> None:
        if ep.task is not None and not ep.task.done():
            ep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ep.task
        ep.connected = False

    async def _serve_endpoint(self, ep: _PluginEndpoint) -> None:
        # The kubelet's client keeps gRPC's default 4 MiB receive limit: a larger ListAndWatch message fails
        # there (the resource stays at 0), and must fail here too.
        channel = grpc.aio.insecure_channel(
            f"unix://{ep.socket}", options=[("grpc.max_receive_message_length", KUBELET_MAX_RECEIVE_BYTES)]
        )
        ep.channel = channel
        ep.stub = self._pb_grpc.DevicePluginStub(channel)
        try:
            ep.options = await ep.stub.GetDevicePluginOptions(self._pb.Empty(), timeout=10)
            async for update in ep.stub.ListAndWatch(self._pb.Empty()):
                ep.devices = {d.ID: d.health for d in update.devices}
                ep.connected = True
                await self._sync_node_resources()
                self._admission_wakeup.set()
        except grpc.aio.AioRpcError as e:
            ep.last_error = f"{e.code().name}: {e.details()}"
            log.info("device plugin %s at %s went away: %s", ep.resource, ep.socket, ep.last_error)
        finally:
            if self._endpoints.get(ep.resource) is ep and not self._stopping:
                ep.connected = False
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._sync_node_resources())
            await channel.close()

    # --- pods ------------------------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        assert self._api is not None
        core = k8s.CoreV1Api(self._api)
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                resp = await core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                listing = json.loads(await resp.read())
                seen = set()
                # A batch is admitted oldest first (kubelet sorts it by creation time).
                for pod in sorted(listing["items"], key=lambda p: p["metadata"]["creationTimestamp"]):
                    seen.add(pod["metadata"]["uid"])
                    await self._on_pod(pod)
                for uid in [u for u in self._pods if u not in seen]:
                    await self._on_pod_gone(uid)
                w = k8s_watch.Watch()
                async with w.stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=120,
                ) as stream:
                    async for event in stream:
                        pod = event["raw_object"]
                        if event["type"] == "DELETED":
                            await self._on_pod_gone(pod["metadata"]["uid"])
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            await self._on_pod(pod)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch is re-listed, as informers do
                log.warning("pod watch on %s: %r; re-listing", self.node_name, e)
                await asyncio.sleep(1)

    async def _on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        rec = self._pods.get(meta["uid"])
        if rec is None:
            rec = _PodRecord(
                uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], raw=pod, arrival=next(self._arrivals)
            )
            self._pods[rec.uid] = rec
        rec.raw = pod
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            if not rec.finished:
                await self._terminate(rec, delete=True)
            return
        if phase in ("Succeeded", "Failed"):
            rec.finished = True
            await self._kill_processes(rec)
            return
        if not rec.admitted:
            self._admission_wakeup.set()

    async def _on_pod_gone(self, uid: str) -> None:
        rec = self._pods.pop(uid, None)
        if rec is not None:
            rec.finished = True
            await self._kill_processes(rec)

    def _devices_in_use(self, resource: str, exclude_uid: str) -> set[str]:
        used: set[str] = set()
        for rec in self._pods.values():
            if rec.uid == exclude_uid or rec.finished:
                continue
            for a in rec.allocations:
                if a.resource == resource:
                    used.update(a.device_ids)
        return used

    def allocations_of(self, namespace: str, name: str) -> list[ContainerAllocation]:
        """Allocate results of a live pod on this node (empty if unknown)."""
        for rec in self._pods.values():
            if (rec.namespace, rec.name) == (namespace, name):
                return list(rec.allocations)
        return []

    def devices_in_use(self, resource: str) -> set[str]:
        return self._devices_in_use(resource, exclude_uid="")

    def plugin_devices(self, resource: str) -> dict[str, str]:
        """The device list (ID -> health) last received from the plugin of ``resource``."""
        ep = self._endpoints.get(resource)
        return dict(ep.devices) if ep else {}

    def pause_admission(self) -> None:
        """Test control: hold newly bound pods back (they queue up) until :meth:`resume_admission`."""
        self._admission_open.clear()

    def resume_admission(self) -> None:
        self._admission_open.set()
        self._admission_wakeup.set()

    def known_pods(self) -> set[tuple[str, str]]:
        """(namespace, name) of every live pod bound to this node that the stand-in has seen."""
        return {(r.namespace, r.name) for r in self._pods.values()}

    def plugin_error(self, resource: str) -> str | None:
        """The gRPC error that ended the last connection to the plugin of ``resource`` (None if none)."""
        ep = self._endpoints.get(resource)
        return ep.last_error if ep else None

    async def _admission_worker(self) -> None:
        """Admit pending pods one at a time in the order they reached the node, as the kubelet does: its
        config source hands each watch event over as it comes and the sync loop admits them in turn."""
        while True:
            await self._admission_wakeup.wait()
            self._admission_wakeup.clear()
            await self._admission_open.wait()
            while True:
                pending = [
                    r
                    for r in self._pods.values()
                    if not r.admitted
                    and not r.finished
                    and not r.raw["metadata"].get("deletionTimestamp")
                    and (r.raw.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                ]
                if not pending:
                    break
                rec = min(pending, key=lambda r: r.arrival)
                rec.admitted = True
                try:
                    await self._admit(rec)
                except AdmissionError as e:
                    rec.finished = True
                    await self._set_pod_status(rec, _rejected_status(str(e)))
                except Exception as e:
                    log.exception("admitting %s/%s", rec.namespace, rec.name)
                    rec.finished = True
                    await self._set_pod_status(rec, _rejected_status(f"kubelet stand-in error: {e!r}"))

    async def _admit(self, rec: _PodRecord) -> None:
        spec = rec.raw["spec"]
        pod_key = f"{rec.namespace}/{rec.name}"
        managed = set(self._endpoints)
        reusable: dict[str, list[str]] = {}  # devices of finished init containers, reusable by later containers
        taken: dict[str, set[str]] = {}  # devices given to this pod's regular containers
        containers = [(c, True) for c in spec.get("initContainers") or []] + [
            (c, False) for c in spec.get("containers") or []
        ]
        for container, is_init in containers:
            for resource, count in sorted(_extended_requests(container, managed).items()):
                ep = self._endpoints[resource]
                if not ep.connected:
                    raise AdmissionError(
                        f"Allocate failed due to device plugin for {resource} is not connected, which is unexpected"
                    )
                in_use = self._devices_in_use(resource, exclude_uid=rec.uid) | taken.get(resource, set())
                reuse = [d for d in reusable.get(resource, []) if d not in taken.get(resource, set())]
                available = sorted(d for d, h in ep.devices.items() if h == HEALTHY and (d not in in_use or d in reuse))
                if len(available) < count:
                    raise AdmissionError(
                        f"Allocate failed due to requested number of devices unavailable for {resource}. "
                        f"Requested: {count}, Available: {len(available)}, which is unexpected"
                    )
                must_include = [d for d in reuse if d in available][:count]
                chosen = await self._choose_devices(ep, pod_key, container["name"], available, must_include, count)
                allocation = await self._allocate(ep, pod_key, container["name"], is_init, chosen)
                rec.allocations.append(allocation)
                if is_init:
                    reusable[resource] = list(chosen)
                else:
                    taken.setdefault(resource, set()).update(chosen)
        await self._set_pod_status(rec, self._running_status(rec))
        if self.run_commands:
            assert self._tg is not None
            self._tg.create_task(self._run_pod_processes(rec))

    async def _choose_devices(
        self,
        ep: _PluginEndpoint,
        pod_key: str,
        container: str,
        available: list[str],
        must_include: list[str],
        count: int,
    ) -> tuple[str, ...]:
        if ep.options is not None and ep.options.get_preferred_allocation_available:
            request = self._pb.PreferredAllocationRequest(
                container_requests=[
                    self._pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available,
                        must_include_deviceIDs=must_include,
                        allocation_size=count,
                    )
                ]
            )
            self.calls.append(AllocateCall("GetPreferredAllocation", pod_key, container, ep.resource, ()))
            try:
                resp = await ep.stub.GetPreferredAllocation(request, timeout=30)
            except grpc.aio.AioRpcError as e:
                raise AdmissionError(f"Allocate failed due to {e.details()}, which is unexpected") from e
            if len(resp.container_responses) == 1:
                preferred = list(dict.fromkeys(resp.container_responses[0].deviceIDs))
                # Advisory only: keep what is valid, then fill up like the kubelet does.
                picked = list(must_include) + [d for d in preferred if d in available and d not in must_include]
                picked += [d for d in available if d not in picked]
                return tuple(picked[:count])
        rest = [d for d in available if d not in must_include]
        return tuple([*must_include, *rest][:count])

    async def _allocate(
        self, ep: _PluginEndpoint, pod_key: str, container: str, is_init: bool, device_ids: tuple[str, ...]
    ) -> ContainerAllocation:
        request = self._pb.AllocateRequest(
            container_requests=[self._pb.ContainerAllocateRequest(devices_ids=list(device_ids))]
        )
        self.calls.append(AllocateCall("Allocate", pod_key, container, ep.resource, device_ids))
        try:
            resp = await ep.stub.Allocate(request, timeout=30)
        except grpc.aio.AioRpcError as e:
            raise AdmissionError(f"Allocate failed due to {e.details()}, which is unexpected") from e
        if len(resp.container_responses) != 1:
            raise AdmissionError(
                f"Allocate failed due to plugin for {ep.resource} returned {len(resp.container_responses)} "
                "container responses for 1 container request, which is unexpected"
            )
        r = resp.container_responses[0]
        if ep.options is not None and ep.options.pre_start_required:
            try:
                await ep.stub.PreStartContainer(
                    self._pb.PreStartContainerRequest(devices_ids=list(device_ids)), timeout=30
                )
            except grpc.aio.AioRpcError as e:
                raise AdmissionError(f"PreStartContainer failed: {e.details()}") from e
        return ContainerAllocation(
            container=container,
            init_container=is_init,
            resource=ep.resource,
            device_ids=device_ids,
            envs=dict(r.envs),
            mounts=tuple(MountSpec(m.container_path, m.host_path, m.read_only) for m in r.mounts),
            device_specs=tuple((d.container_path, d.host_path, d.permissions) for d in r.devices),
            annotations=dict(r.annotations),
        )

    # --- pod status and processes ----------------------------------------------------------------------------

    def _running_status(self, rec: _PodRecord) -> dict[str, Any]:
        now = _now()
        spec = rec.raw["spec"]
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
            ],
            "initContainerStatuses": [
                _container_status(rec, c, {"terminated": {"exitCode": 0, "reason": "Completed"}}, now)
                for c in spec.get("initContainers") or []
            ],
            "containerStatuses": [
                _container_status(rec, c, {"running": {"startedAt": now}}, now) for c in spec["containers"]
            ],
        }

    async def _set_pod_status(self, rec: _PodRecord, status: dict[str, Any]) -> None:
        assert self._api is not None
        try:
            await k8s.CoreV1Api(self._api).patch_namespaced_pod_status(rec.name, rec.namespace, {"status": status})
        except k8s.ApiException as e:
            if e.status != 404:  # deleted meanwhile
                raise

    async def _terminate(self, rec: _PodRecord, *, delete: bool) -> None:
        """Stop the pod's processes and give its devices back; for a pod being deleted, finish the deletion
        (grace period 0), which the kubelet does once the containers are gone."""
        rec.finished = True
        await self._kill_processes(rec)
        if delete:
            assert self._api is not None
            with contextlib.suppress(k8s.ApiException):
                await k8s.CoreV1Api(self._api).delete_namespaced_pod(
                    rec.name,
                    rec.namespace,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": rec.uid}},
                    grace_period_seconds=0,
                )
        self._admission_wakeup.set()

    async def _kill_processes(self, rec: _PodRecord) -> None:
        for proc in rec.processes.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.work_dir / f"{namespace}_{name}_{container}.log"

    async def _run_pod_processes(self, rec: _PodRecord) -> None:
        spec = rec.raw["spec"]
        exit_codes: dict[str, int] = {}
        for container in spec.get("initContainers") or []:
            code = await self._run_container(rec, container, init=True)
            if code != 0:
                await self._finish(rec, {container["name"]: code}, failed_init=container["name"])
                return
        waits = [self._run_container(rec, c, init=False) for c in spec["containers"]]
        for c, code in zip(spec["containers"], await asyncio.gather(*waits), strict=True):
            exit_codes[c["name"]] = code
        # A container without a command stands for an image entrypoint that serves forever: the pod stays
        # Running until it is deleted.
        if all(c.get("command") or c.get("args") for c in spec["containers"]):
            await self._finish(rec, exit_codes)

    async def _run_container(self, rec: _PodRecord, container: dict[str, Any], *, init: bool) -> int:
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            return 0
        allocations = [a for a in rec.allocations if a.container == container["name"] and a.init_container == init]
        env = container_environment(self.process_env, allocations, container.get("env") or [])
        mounts = tuple(m for a in allocations for m in a.mounts)
        cwd = _map_path(container.get("workingDir") or str(self.work_dir), mounts)
        argv, env = namespace_argv(argv, env, mounts)
        with self.log_path(rec.namespace, rec.name, container["name"]).open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        rec.processes[container["name"]] = proc
        return await proc.wait()

    async def _finish(self, rec: _PodRecord, exit_codes: dict[str, int], failed_init: str | None = None) -> None:
        if rec.finished:
            return
        rec.finished = True
        now = _now()
        failed = failed_init is not None or any(code != 0 for code in exit_codes.values())
        spec = rec.raw["spec"]

        def terminated(c: dict[str, Any]) -> dict[str, Any]:
            code = exit_codes.get(c["name"], 0)
            reason = "Completed" if code == 0 else "Error"
            return _container_status(
                rec, c, {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now}}, now, ready=False
            )

        await self._set_pod_status(
            rec,
            {
                "phase": "Failed" if failed else "Succeeded",
                "conditions": [
                    {"type": t, "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
                    for t in ("ContainersReady", "Ready")
                ],
                "initContainerStatuses": [terminated(c) for c in spec.get("initContainers") or []],
                "containerStatuses": [terminated(c) for c in spec["containers"]],
            },
        )
        self._admission_wakeup.set()


def _container_status(
    rec: _PodRecord, c: dict[str, Any], state: dict[str, Any], now: str, *, ready: bool = True
) -> dict[str, Any]:
    running = "running" in state
    return {
        "name": c["name"],
        "image": c.get("image") or "standin",
        "imageID": "",
        "containerID": f"standin://{rec.uid}/{c['name']}",
        "ready": ready and running,
        "started": running,
        "restartCount": 0,
        "state": state,
    }


def _rejected_status(message: str) -> dict[str, Any]:
    return {"phase": "Failed", "reason": "UnexpectedAdmissionError", "message": f"Pod was rejected: {message}"}


class _RegistrationServicer:
    """The kubelet's Registration service (duck-typed to the generated RegistrationServicer)."""

    def __init__(self, kubelet: KubeletStandIn) -> None:
        self._kubelet = kubelet

    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        error = await self._kubelet._on_register(request)
        if error is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        return self._kubelet._pb.Empty()


# The type of the ``add_gpu_node`` fixture (tests/e2e/conftest.py).
AddGpuNode = Callable[..., Awaitable[KubeletStandIn]]
