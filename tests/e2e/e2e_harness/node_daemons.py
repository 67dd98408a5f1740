"""The processes of a real node, one class each: :class:`Containerd` (with ``ctr`` for images and leftover
containers), :class:`Kubelet` (start, Ready, device-plugin registrations) and :class:`KubeProxy` (with its
Service route and the ``--cleanup`` of its rules). Each is started by e2e_harness.real_node, which owns their
order, the node's directory and its mount namespace (``enter``: an argv run in it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from e2e_harness.cluster import LocalCluster
from e2e_harness.node_config import KUBE_PROXY_HEALTHZ_PORT
from e2e_harness.node_filesystem import KUBELET_ROOT
from e2e_harness.node_host import DAEMON_PATH, RealNodeError, http_ok, run, tail

SERVICE_CIDR = "10.0.0.0/24"  # localcluster's --service-cluster-ip-range
GPU_RESOURCE = "nvidia.com/gpu"
REGISTRATION_LOG_LINE = "Got registration request from device plugin"

Enter = Callable[[list[str]], list[str]]  # an argv run in the node's mount namespace


@dataclass
class NodeProcess:
    """One daemon of the node, its output appended to ``log_path``."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, limit_s: float = 20.0) -> None:
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), limit_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def spawn(
    name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str], header: str | None = None
) -> NodeProcess:
    """Start ``argv`` with its stdout and stderr appended to ``log_path`` (after ``header``, when given)."""
    with log_path.open("ab") as log:
        if header is not None:
            log.write(header.encode())
            log.flush()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return NodeProcess(name, proc, log_path)


class Containerd:
    """The node's containerd (own root, state, socket, config) and the ``ctr`` view of it (namespace k8s.io)."""

    def __init__(self, node_name: str, base: Path, log_path: Path) -> None:
        self.node_name = node_name
        self.base = base
        self.socket = base / "containerd.sock"
        self.config_file = base / "containerd" / "config.toml"
        self.log_path = log_path
        self.process: NodeProcess | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    async def start(self, enter: Enter, within: float = 60.0) -> None:
        env = {
            "PATH": DAEMON_PATH,
            # Where the toolkit double (like the real nvidia-container-runtime) finds its config.toml.
            "XDG_CONFIG_HOME": str(self.base / "toolkit"),
        }
        argv = enter(["containerd", "--config", str(self.config_file)])
        self.process = await spawn("containerd", argv, self.log_path, env)
        deadline = time.monotonic() + within
        while True:
            if not self.process.running:
                raise RealNodeError(f"containerd of {self.node_name} exited:\n{tail(self.log_path)}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RealNodeError(f"containerd of {self.node_name} not serving after {within}s")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()

    def ctr_argv(self, *args: str) -> list[str]:
        """The ``ctr`` command line for this containerd (namespace k8s.io, where the CRI looks)."""
        return ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.ctr_argv(*args), check=check)

    def import_archives(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", str(archive))

    def list_images(self) -> list[str]:
        return self.ctr("images", "list", "-q").stdout.split()

    async def wait_tasks_stopped(self, within: float = 30.0) -> None:
        """Until no task runs (or ``within`` has passed)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            listing = await asyncio.to_thread(self.ctr, "tasks", "list", check=False)
            if not any(line.split()[-1:] == ["RUNNING"] for line in listing.stdout.splitlines()[1:]):
                return
            await asyncio.sleep(0.3)

    def remove_containers(self) -> None:
        """Whatever the kubelet left (exited containers wait for its GC): kill and remove through containerd."""
        tasks = self.ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task, check=False)
        for container in self.ctr("containers", "list", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)


class Kubelet:
    """The node's kubelet: ``system:node:<name>`` credentials, the node's root dir, labels and IP; Ready when the
    Node's Ready condition carries a heartbeat of this run of it."""

    def __init__(
        self,
        cluster: LocalCluster,
        name: str,
        node_ip: str,
        labels: Mapping[str, str],
        binary: Path,
        base: Path,
        log_path: Path,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.node_ip = node_ip
        self.labels = labels
        self.binary = binary
        self.base = base
        self.log_path = log_path
        self.config_file = base / "kubelet-config.yaml"
        self.process: NodeProcess | None = None
        self._started_at = 0.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def argv(self) -> list[str]:
        kubeconfig = self.cluster.kubeconfig_for_user(f"system:node:{self.name}", ("system:nodes",))
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return [
            str(self.binary),
            f"--config={self.config_file}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={KUBELET_ROOT}",
            f"--cert-dir={self.base / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=2",
        ]

    async def start(self, enter: Enter, ready_within: float) -> None:
        argv = self.argv()
        header = f"--- start: {' '.join(argv)}\n"
        self.process = await spawn("kubelet", enter(argv), self.log_path, {"PATH": DAEMON_PATH}, header)
        self._started_at = time.time()
        await self.wait_ready(ready_within)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()

    async def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        async with self.cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            while True:
                if not self.running:
                    raise RealNodeError(f"kubelet of {self.name} exited:\n{tail(self.log_path)}")
                with contextlib.suppress(k8s.ApiException):
                    node = await core.read_node(self.name)
                    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                    if ready and ready[0].status == "True" and self._heartbeat_after(ready[0]):
                        return
                if time.monotonic() > deadline:
                    raise RealNodeError(f"Node {self.name} not Ready after {within}s:\n{tail(self.log_path)}")
                await asyncio.sleep(0.2)

    def _heartbeat_after(self, condition: Any) -> bool:
        # After a kubelet restart the old Ready condition is still there: only a heartbeat of this kubelet counts.
        heartbeat = condition.last_heartbeat_time
        return heartbeat is None or heartbeat.timestamp() >= int(self._started_at) - 1

    def registrations(self, resource: str = GPU_RESOURCE) -> int:
        """How many times device plugins registered ``resource`` with this kubelet (all its runs)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if REGISTRATION_LOG_LINE in line and f'"{resource}"' in line)


class KubeProxy:
    """The run's kube-proxy (iptables mode, ``system:kube-proxy``) and the route of the Service CIDR through the
    node IP: without a route the host side's connect() to a ClusterIP fails before its DNAT rule is reached."""

    def __init__(self, node_name: str, node_ip: str, binary: Path, config_file: Path, log_path: Path) -> None:
        self.node_name = node_name
        self.node_ip = node_ip
        self.binary = binary
        self.config_file = config_file
        self.log_path = log_path
        self.process: NodeProcess | None = None
        self._route_added = False

    async def start(self, within: float = 60.0) -> None:
        if not self._route_added:
            run(["ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "src", self.node_ip])
            self._route_added = True
        argv = [str(self.binary), f"--config={self.config_file}", "--v=2"]
        self.process = await spawn("kube-proxy", argv, self.log_path, {"PATH": DAEMON_PATH})
        await self._wait_healthy(within)

    async def _wait_healthy(self, within: float) -> None:
        # /healthz answers 200 once the first full sync of the rules is done.
        url = f"http://{self.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"
        deadline = time.monotonic() + within
        while not await asyncio.to_thread(http_ok, url):
            assert self.process is not None
            if not self.process.running:
                raise RealNodeError(f"kube-proxy of {self.node_name} exited:\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RealNodeError(
                    f"kube-proxy of {self.node_name} not healthy after {within}s:\n{tail(self.log_path)}"
                )
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.process is None:
            return
        await self.process.stop()
        self.process = None
        # Its chains and rules would stay in the namespace (and steer the next run's ClusterIPs): remove them.
        argv = [str(self.binary), f"--config={self.config_file}", "--cleanup"]
        await asyncio.to_thread(run, argv, check=False, timeout=60.0)

    def remove_route(self) -> None:
        if self._route_added:
            run(["ip", "route", "del", SERVICE_CIDR, "dev", "lo"], check=False)
            self._route_added = False

    def leftovers(self) -> list[str]:
        out = []
        if f"src {self.node_ip}" in run(["ip", "-4", "route", "show", SERVICE_CIDR]).stdout:
            out.append(f"route {SERVICE_CIDR}")
        if "KUBE-SERVICES" in run(["iptables-save", "-t", "nat"], check=False).stdout:
            out.append("kube-proxy's iptables chains")
        return out
