"""The whole stack on the local control plane: the deploy manifests applied server-side, the four services run
as local processes with the credentials of their ServiceAccounts (so the RBAC of the manifests is what they
get), and real GPU nodes. Used by the e2e tests of the whole stack (test_vertical_slice.py, test_real_node_*.py,
test_security_containers.py) and by `make demo` (examples/demo/run_demo.py).

What runs where:

* the real kube-apiserver and kube-scheduler of ``LocalCluster`` (e2e_harness); the default overlay of
  deploy/kustomize is applied to it. The harness clusters run without the Deployment, ReplicaSet and DaemonSet
  controllers (``cluster.HARNESS_CONTROLLERS``), so its Deployments and DaemonSets never make pods: the processes
  below stand in for them, started with the arguments of the rendered containers (only
  addresses, paths and the kubeconfig are changed) and a token of the container's ServiceAccount.
* hami-webhook on 127.0.0.1 with a throw-away CA; the applied Mutating- and ValidatingWebhookConfiguration are
  kept (rules, matchConditions, failure policy) and only their clientConfig pointed at the local URL (the
  apiserver cannot reach a cluster Service here). The placement ValidatingAdmissionPolicy is applied as shipped.
* hami-scheduler-extender; kube-scheduler is restarted with the rendered KubeSchedulerConfiguration, its
  urlPrefix pointed at the extender's port and the same ServiceAccount's token (localcluster turns leader
  election off, so the Lease permissions are checked in test_deploy_apply.py instead).
* per GPU node a real node (e2e_harness.real_node: kubelet + containerd + runc, the NVIDIA toolkit's TEST DOUBLE
  putting the fake driver, hamicore/build/fake, into GPU containers) run from ``real_nodes`` (the node images);
  containers run from images, with whatever env and mounts Allocate returned. hami-lib-installer installs
  hamicore/build into the node's host directory and hami-device-plugin runs against the fake NVML (TEST DOUBLE of
  the driver) describing that node's GPUs, both still as host processes (inside the run's namespaces: needs
  tests/e2e/isolated.sh).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.ports import free_port, free_ports
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.webhooks import WebhookTLS
from kubernetes_asyncio import client as k8s

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
VENV_BIN = ROOT / ".venv" / "bin"
HAMICORE_BUILD = Path(os.environ.get("HAMI_BUILD_DIR", ROOT / "hamicore" / "build"))
NAMESPACE = "hami-system"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class GpuSpec:
    """One simulated GPU (the fake NVML's view of it)."""

    uuid: str
    memory_mib: int
    name: str = "NVIDIA A100-SXM4-40GB"
    sm_count: int = 108


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: tuple[GpuSpec, ...]

    def fake_driver_env(self, state_file: Path) -> dict[str, str]:
        """Environment of the fake libcuda/libnvidia-ml describing this node's GPUs (hamicore/tests/README.md)."""
        return {
            "LD_LIBRARY_PATH": str(HAMICORE_BUILD / "fake"),
            "FAKE_GPU_COUNT": str(len(self.gpus)),
            "FAKE_GPU_UUIDS": ",".join(g.uuid for g in self.gpus),
            "FAKE_GPU_NAMES": ",".join(g.name for g in self.gpus),
            "FAKE_GPU_MEMORY_MIB": ",".join(str(g.memory_mib) for g in self.gpus),
            "FAKE_GPU_SM_COUNT": ",".join(str(g.sm_count) for g in self.gpus),
            "FAKE_GPU_STATE_FILE": str(state_file),
        }


DEFAULT_NODES = (
    NodeSpec(
        "gpu-node-a",
        (
            GpuSpec("GPU-aaaaaaaa-0000-4000-8000-000000000000", 8192),
            GpuSpec("GPU-aaaaaaaa-0000-4000-8000-000000000001", 8192),
        ),
    ),
    NodeSpec("gpu-node-b", (GpuSpec("GPU-bbbbbbbb-0000-4000-8000-000000000000", 16384, "NVIDIA L40S", 142),)),
)


class StackError(RuntimeError):
    """A piece of the stack did not come up; the message names it and carries its log tail."""


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def render_overlay(overlay: str = "default") -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@dataclass(frozen=True)
class RenderedContainer:
    """One container of the rendered manifests, with what it mounts from ConfigMaps."""

    workload: dict[str, Any]
    container: dict[str, Any]
    config_files: Mapping[str, str]  # in-container path -> file content

    @property
    def service_account(self) -> str:
        name: str = self.workload["spec"]["template"]["spec"]["serviceAccountName"]
        return name

    @property
    def args(self) -> list[str]:
        return list(self.container.get("args", []))


def rendered_container(docs: Sequence[dict[str, Any]], workload: str, container: str) -> RenderedContainer:
    wl = next(d for d in docs if d["kind"] in {"Deployment", "DaemonSet"} and d["metadata"]["name"] == workload)
    ctr = next(c for c in wl["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    volumes = {v["name"]: v for v in wl["spec"]["template"]["spec"].get("volumes", [])}
    files: dict[str, str] = {}
    for mount in ctr.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            cm = next(
                d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
            )
            for key, text in cm.get("data", {}).items():
                files[f"{mount['mountPath'].rstrip('/')}/{key}"] = text
    return RenderedContainer(wl, ctr, files)


def override_args(args: Sequence[str], replace: Mapping[str, str | None], add: Sequence[str] = ()) -> list[str]:
    """Replace ``--flag=value`` arguments (None drops the flag), keep the rest, append ``add``."""
    out: list[str] = []
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in replace:
            continue
        out.append(arg)
    out += [f"{flag}={value}" for flag, value in replace.items() if value is not None]
    return [*out, *add]


@dataclass
class ServiceProcess:
    """A service run as a local process: its argv, environment and log; restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None = None
    ready_ca: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self, limit_s: float = 90.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.starts += 1
        if self.ready_url:
            await self.wait_ready(limit_s)

    async def wait_ready(self, limit_s: float) -> None:
        assert self.ready_url is not None
        context = ssl.create_default_context(cafile=str(self.ready_ca)) if self.ready_ca else None
        deadline = time.monotonic() + limit_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                status = await asyncio.to_thread(_http_status, self.ready_url, context)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as exc:
                last = str(exc)
            await asyncio.sleep(0.3)
        raise StackError(f"{self.name} not ready at {self.ready_url} after {limit_s}s ({last}):\n{tail(self.log_path)}")

    async def stop(self, limit_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), limit_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self.proc.returncode

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def _http_status(url: str, context: ssl.SSLContext | None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


CONTAINER_VGPU_DIR = "/usr/local/vgpu"  # the lib-installer's hostPath, and where Allocate mounts it in containers
FAKE_DRIVER_LIBRARIES = (HAMICORE_BUILD / "fake" / "libcuda.so.1", HAMICORE_BUILD / "fake" / "libnvidia-ml.so.1")


@dataclass
class GpuNode:
    spec: NodeSpec
    root: Path  # the node's "host" filesystem root (lib install dir, container dirs)
    kubelet: RealNode
    lib_installer: ServiceProcess
    device_plugin: ServiceProcess

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class HamiStack:
    """See the module docstring. ``await start()``; always ``await stop()``."""

    cluster: LocalCluster
    work_dir: Path
    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES
    docs: list[dict[str, Any]] = field(default_factory=list)
    webhook: ServiceProcess | None = None
    extender: ServiceProcess | None = None
    gpu_nodes: dict[str, GpuNode] = field(default_factory=dict)
    real_nodes: NodeImages = field(kw_only=True)  # the GPU nodes run from these images
    # Real nodes: where each takes its index (addresses, subnets, bridges; see RealNodeConfig): the session's
    # counter (conftest's real_node_indexes), so nodes of other tests never collide.
    node_indexes: Iterator[int] = field(default_factory=itertools.count)
    # docs/security.md operator item 3 on every node: the device plugins pass device lists as volume mounts
    # (--device-list-strategy=volume-mounts) and real nodes' toolkits take an unprivileged container's devices
    # only from such mounts.
    hardened_device_lists: bool = False
    _tmpfs_mounts: list[Path] = field(default_factory=list)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._check_prerequisites()
        kubectl(self.cluster.kubeconfig, "apply", "--server-side", "-k", str(KUSTOMIZE / "base" / "namespace"))
        kubectl(self.cluster.kubeconfig, "apply", "--server-side", "-k", str(KUSTOMIZE / "overlays" / "default"))
        self.docs = render_overlay("default")
        try:
            await self._start_webhook()
            await self._start_extender()
            for spec in self.nodes:
                await self._start_node(spec)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for node in reversed(list(self.gpu_nodes.values())):
            await node.device_plugin.stop()
            await node.lib_installer.stop()
            await node.kubelet.stop()
        for service in (self.extender, self.webhook):
            if service is not None:
                await service.stop()
        for mount in reversed(self._tmpfs_mounts):
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mount)], check=False, capture_output=True)
        # Idempotent: a second stop (after a failed start) finds nothing left to stop.
        self.gpu_nodes.clear()
        self._tmpfs_mounts.clear()

    def _check_prerequisites(self) -> None:
        missing = [
            str(p)
            for p in (
                HAMICORE_BUILD / "libvgpu.so",
                HAMICORE_BUILD / "libvgpu_vk.so",
                HAMICORE_BUILD / "fake" / "libcuda.so.1",
                HAMICORE_BUILD / "fake" / "libnvidia-ml.so.1",
                *(VENV_BIN / s for s in ("hami-webhook", "hami-scheduler-extender", "hami-device-plugin")),
                VENV_BIN / "hami-lib-installer",
            )
            if not p.exists()
        ]
        if missing:
            raise StackError(f"missing {', '.join(missing)}: run `make setup hamicore`")

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _write_config_files(self, rendered: RenderedContainer, directory: Path) -> dict[str, str]:
        """Write the container's ConfigMap files locally; return in-container path -> local path."""
        directory.mkdir(parents=True, exist_ok=True)
        mapping = {}
        for container_path, text in rendered.config_files.items():
            local = directory / container_path.strip("/").replace("/", "_")
            local.write_text(text)
            mapping[container_path] = str(local)
        return mapping

    def _localize(self, args: list[str], files: Mapping[str, str]) -> list[str]:
        out = []
        for arg in args:
            flag, sep, value = arg.partition("=")
            out.append(f"{flag}{sep}{files.get(value, value)}")
        return out

    async def service_account_kubeconfig(self, name: str) -> Path:
        return await self.cluster.kubeconfig_for_service_account(NAMESPACE, name, create=False)

    # --- webhook --------------------------------------------------------------------------------------------

    async def _start_webhook(self) -> None:
        rendered = rendered_container(self.docs, "hami-webhook", "webhook")
        tls = WebhookTLS.create(self.work_dir / "webhook-tls")
        port = free_port()
        args = override_args(
            rendered.args,
            {
                "--listen": f"127.0.0.1:{port}",
                "--cert-file": str(tls.cert_file),
                "--key-file": str(tls.key_file),
                # A host process is in no Service: nothing to drain from, so it stops at once.
                "--shutdown-delay": "0",
            },
        )
        # The webhook's ServiceAccount mounts no token (it reads nothing from the API): none is given here either.
        self.webhook = ServiceProcess(
            "hami-webhook",
            [str(VENV_BIN / "hami-webhook"), *args],
            self._base_env(),
            self.work_dir / "logs" / "webhook.log",
            ready_url=f"https://127.0.0.1:{port}/readyz",
            ready_ca=self.work_dir / "webhook-tls" / "ca.crt",
        )
        await self.webhook.start()
        # Both configurations (mutation of GPU pods, the tenant guard of every pod) call the local process.
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            config = next(d for d in self.docs if d["kind"] == kind)
            patch = []
            for i, hook in enumerate(config["webhooks"]):
                path = hook["clientConfig"]["service"].get("path", "/")
                patch.append(
                    {
                        "op": "replace",
                        "path": f"/webhooks/{i}/clientConfig",
                        "value": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": tls.ca_bundle},
                    }
                )
            kubectl(
                self.cluster.kubeconfig,
                "patch",
                kind.lower(),
                config["metadata"]["name"],
                "--type=json",
                "-p",
                json.dumps(patch),
            )

    # --- scheduler: extender + kube-scheduler -----------------------------------------------------------------

    async def _start_extender(self) -> None:
        rendered = rendered_container(self.docs, "hami-scheduler", "extender")
        files = self._write_config_files(rendered, self.work_dir / "extender-config")
        port, probe_port, metrics_port = free_ports(3)
        kubeconfig = await self.service_account_kubeconfig(rendered.service_account)
        args = override_args(
            self._localize(rendered.args, files),
            {
                "--listen": f"127.0.0.1:{port}",
                "--probe-listen": f"127.0.0.1:{probe_port}",
                "--metrics-listen": f"127.0.0.1:{metrics_port}",
                "--kubeconfig": str(kubeconfig),
            },
        )
        env = self._base_env()
        self.extender = ServiceProcess(
            "hami-scheduler-extender",
            [str(VENV_BIN / "hami-scheduler-extender"), *args],
            env,
            self.work_dir / "logs" / "extender.log",
            ready_url=f"http://127.0.0.1:{probe_port}/readyz",
        )
        await self.extender.start()
        config_map = next(
            d
            for d in self.docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("hami-scheduler-config")
        )
        scheduler_config = yaml.safe_load(config_map["data"]["config.yaml"])
        for extender in scheduler_config.get("extenders", []):
            extender["urlPrefix"] = f"http://127.0.0.1:{port}"
        # kube-scheduler too runs with the pod's ServiceAccount, so its ClusterRoleBindings are what it gets.
        scheduler_config.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
        await asyncio.to_thread(self.cluster.restart_scheduler, yaml.safe_dump(scheduler_config))

    # --- GPU nodes ------------------------------------------------------------------------------------------

    async def _start_node(self, spec: NodeSpec) -> None:
        # What is started is stopped again if a later piece fails, so a failed start leaks nothing.
        started: list[Any] = []
        try:
            await self._start_node_pieces(spec, started)
        except BaseException:
            for piece in reversed(started):
                await piece.stop()
            raise

    async def _start_node_pieces(self, spec: NodeSpec, started: list[Any]) -> None:
        root = self.work_dir / "nodes" / spec.name
        host_vgpu = root / "usr" / "local" / "vgpu"
        host_vgpu.mkdir(parents=True, exist_ok=True)
        driver_env = spec.fake_driver_env(root / "gpu.state")
        # The node's regions tmpfs, as an operator provisions it (deploy/README.md, "Regions tmpfs"): the
        # DaemonSet's plugin refuses to start on anything else.
        regions = root / "run" / "hami" / "containers"
        regions.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(
            subprocess.run,
            ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711,nosuid,nodev,noexec", "hami-regions", str(regions)],
            check=True,
            capture_output=True,
        )
        self._tmpfs_mounts.append(regions)
        kubelet = await self._start_real_node(spec, driver_env, started)
        plugin_dir = kubelet.device_plugin_dir  # the kubelet's compiled-in directory, in its mount namespace
        # The kubelet's pod-resources socket tells the plugin which pod the kubelet is admitting.
        pod_resources: dict[str, str | None] = {"--pod-resources-socket": str(kubelet.pod_resources_socket)}
        plugin_add: list[str] = []

        installer = rendered_container(self.docs, "hami-lib-installer", "lib-installer")
        health_port = free_port()
        installer_overrides = {
            "--source": str(HAMICORE_BUILD),
            "--dest": str(host_vgpu),
            "--health-listen": f"127.0.0.1:{health_port}",
            # Containers see the host directory where the DaemonSet's hostPath puts it (the device plugin mounts it
            # there): ld.so.preload must name that path, not this process's --dest.
            "--runtime-dir": CONTAINER_VGPU_DIR,
        }
        installer_args = override_args(installer.args, installer_overrides)
        lib_installer = ServiceProcess(
            f"hami-lib-installer@{spec.name}",
            [str(VENV_BIN / "hami-lib-installer"), *installer_args],
            self._base_env(),
            self.work_dir / "logs" / f"lib-installer-{spec.name}.log",
            ready_url=f"http://127.0.0.1:{health_port}/healthz",
        )
        started.append(lib_installer)
        await lib_installer.start()

        plugin = rendered_container(self.docs, "hami-device-plugin", "device-plugin")
        files = self._write_config_files(plugin, root / "device-plugin-config")
        # The token of a DaemonSet pod on this node, as the kubelet mounts it: bound to that pod, so the
        # placement ValidatingAdmissionPolicy (base/admission-policy) sees the node in it and lets this plugin
        # write this node and its pods only.
        kubeconfig = await self.cluster.kubeconfig_for_pod(
            NAMESPACE, f"hami-device-plugin-{spec.name}", service_account=plugin.service_account, node=spec.name
        )
        metrics_port = free_port()
        overrides: dict[str, str | None] = dict(
            device_plugin_overrides(plugin_dir, host_vgpu, metrics_port, kubeconfig, regions)
        )
        overrides.update(pod_resources)
        if self.hardened_device_lists:
            overrides["--device-list-strategy"] = "volume-mounts"
        plugin_args = override_args(self._localize(plugin.args, files), overrides, plugin_add)
        env = self._base_env() | driver_env | {"NODE_NAME": spec.name}
        device_plugin = ServiceProcess(
            f"hami-device-plugin@{spec.name}",
            [str(VENV_BIN / "hami-device-plugin"), *plugin_args],
            env,
            self.work_dir / "logs" / f"device-plugin-{spec.name}.log",
            ready_url=f"http://127.0.0.1:{metrics_port}/readyz",
        )
        started.append(device_plugin)
        await device_plugin.start()
        node = GpuNode(spec, root, kubelet, lib_installer, device_plugin)
        await self.wait_node_advertised(node)
        self.gpu_nodes[spec.name] = node

    async def _start_real_node(self, spec: NodeSpec, driver_env: Mapping[str, str], started: list[Any]) -> RealNode:
        fake_driver = {k: v for k, v in driver_env.items() if k.startswith("FAKE_")}
        config = RealNodeConfig(
            spec.name,
            next(self.node_indexes),
            {"gpu": "on"},
            fake_driver,
            FAKE_DRIVER_LIBRARIES,
            hardened_toolkit=self.hardened_device_lists,
        )
        node = RealNode(self.cluster, config, self.real_nodes, self.work_dir / "logs" / spec.name)
        started.append(node)
        await node.start()
        return node

    async def wait_node_advertised(self, node: GpuNode, limit_s: float = 90.0) -> None:
        """Until the plugin has (re-)registered and the kubelet shows its virtual devices (a non-zero allocatable
        count on the Node)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            advertised = await self._node_allocatable(node.name) > 0
            if advertised and node.device_plugin.running:
                return
            if not node.device_plugin.running:
                break
            await asyncio.sleep(0.3)
        raise StackError(
            f"device plugin of {node.name} did not register {GPU_RESOURCE}:\n{tail(node.device_plugin.log_path)}"
        )

    async def _node_allocatable(self, node: str, resource: str = GPU_RESOURCE) -> int:
        async with self.cluster.api_client() as api:
            obj = await k8s.CoreV1Api(api).read_node(node)
        return int((obj.status.allocatable or {}).get(resource, "0"))

    # --- restarts -------------------------------------------------------------------------------------------

    async def restart_service(self, which: str) -> None:
        """Restart one service process (``webhook``, ``extender``, ``device-plugin``, ``lib-installer``; the node
        services on every node), waiting until it serves again."""
        if which == "webhook":
            assert self.webhook is not None
            await self.webhook.restart()
        elif which == "extender":
            assert self.extender is not None
            await self.extender.restart()
        elif which == "device-plugin":
            for node in self.gpu_nodes.values():
                before = registrations(node)
                await node.device_plugin.restart()
                await _wait(lambda n=node, b=before: registrations(n) > b, "device plugin re-registered")
                await self.wait_node_advertised(node)
        elif which == "lib-installer":
            for node in self.gpu_nodes.values():
                await node.lib_installer.restart()
        else:
            raise ValueError(f"unknown service {which!r}")

    def logs(self) -> dict[str, Path]:
        out = {}
        for service in (self.webhook, self.extender):
            if service is not None:
                out[service.name] = service.log_path
        for node in self.gpu_nodes.values():
            out[node.device_plugin.name] = node.device_plugin.log_path
            out[node.lib_installer.name] = node.lib_installer.log_path
        out["localcluster"] = self.cluster.log_path
        return out


def device_plugin_overrides(
    plugin_dir: Path, host_vgpu: Path, metrics_port: int, kubeconfig: Path, regions: Path
) -> dict[str, str]:
    """Flags of hami-device-plugin that differ between a pod and a local process: the host paths (in the pod,
    hostPath volumes at the same paths) and the API credentials (in the pod, the mounted token)."""
    return {
        "--kubeconfig": str(kubeconfig),
        "--device-plugin-dir": str(plugin_dir),
        "--hook-path": str(host_vgpu),
        "--regions-path": str(regions),
        "--metrics-listen": f"127.0.0.1:{metrics_port}",
    }


async def _wait(predicate: Any, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise StackError(f"timed out waiting for: {what}")


def registrations(node: GpuNode) -> int:
    """How many times the node's kubelet has accepted a device-plugin registration."""
    return node.kubelet.registrations(GPU_RESOURCE)
