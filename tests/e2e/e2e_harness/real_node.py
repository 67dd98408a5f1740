"""A real Kubernetes node for the e2e suite: the upstream kubelet (built from the control plane's own
``k8s.io/kubernetes`` module by ``make kubelet``) with its own containerd and runc, started and torn down here.
Recipe and every gotcha: shared/reference/real-node.md.

Per node:

* **containerd** with its own root, state, socket and CNI configuration (a bridge ``hami-e2e<index>`` and a /24
  of its own, host-local IPAM, no masquerading), overlayfs snapshots, runc (crun cannot run on our machines'
  hybrid cgroup layout) and ``restrict_oom_score_adj = true`` (root here lacks CAP_SYS_RESOURCE, so the
  kubelet's negative oom_score_adj would fail every sandbox). On a GPU node its runtime binary is the NVIDIA
  container toolkit's test double (e2e_harness/nvidia_toolkit_double.py) in front of runc, like a node set up by
  the GPU operator (nvidia-container-runtime as the default runtime). The node images (e2e_harness.node_images)
  are imported with ``ctr``.
* **kubelet** with a client certificate ``system:node:<name>`` in ``system:nodes`` from the cluster CA (Node
  authorizer and NodeRestriction apply), the node IP a /32 on ``lo`` (the kubelet refuses loopback addresses and
  this kernel has no dummy links), an empty ``resolvConf`` (pods never see the host's resolver), anonymous +
  AlwaysAllow on its port (localcluster's apiserver has no kubelet client certificate; test only).
* **a mount namespace of its own** (held by a waiting shell) in which containerd, its shims, runc and the
  kubelet all run, as on a machine of its own: the node paths :data:`NODE_PATHS` (``/var/lib/kubelet``, the
  kubelet's root dir with the compiled-in ``device-plugins`` and ``pod-resources`` directories; ``/usr/local/vgpu``
  and ``/run/hami``, the hostPaths of our DaemonSets) are bound there to this node's directories under
  ``<base>/host``. A pod's hostPath is resolved by containerd/runc in that namespace, so each node's DaemonSet pods
  see their node's files only, and device plugins of different nodes never meet. ``/`` is rshared there (like
  systemd makes it), so ``mountPropagation`` works, without anything propagating back to the run's namespace.
  Processes of the run's namespace reach a node's files through :meth:`RealNode.host_path`.

* **kube-proxy** (``RealNodeConfig.kube_proxy``; built by ``make kube-proxy`` from the same module), iptables mode,
  as the ``system:kube-proxy`` user (its bootstrap ClusterRole ``system:node-proxier``). All nodes of a run share
  one network namespace, so one node runs it for all of them (several would rewrite the same chains). It gets a
  route for the Service CIDR (``10.0.0.0/24 dev lo src <node IP>``): without a route the host side's connect() to a
  ClusterIP fails before its DNAT rule is reached; the node IP as source lets the pod answer. It changes no
  machine-wide setting: conntrack limits and timeouts are left alone (``nf_conntrack_max`` is machine-wide),
  localhost NodePorts are off (no ``route_localnet``), and bridge-nf-call-iptables, which pod -> Service -> pod on
  the same bridge needs, is a per-namespace sysctl that is 1 in a new namespace. At stop ``kube-proxy --cleanup``
  removes its rules.

The pieces, one module each: e2e_harness.node_config (the node's identity and the files rendered for its
daemons), e2e_harness.node_filesystem (its directory, node paths and mount namespace), e2e_harness.node_daemons
(containerd, kubelet, kube-proxy) and e2e_harness.node_host (commands on the run's host, the isolation guard).
This module puts them together in order and tears them down.

Everything must run inside the e2e run's own network and mount namespaces (tests/e2e/isolated.sh, which ``make
test-e2e`` uses): node addresses, bridges and the kubelet's iptables rules then exist only there.
:func:`require_isolation` says so when they are missing. ``stop()`` leaves nothing behind: no process, mount,
container, link, address or file of the node (:meth:`RealNode.leftovers` lists what would be left).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes_asyncio import client as k8s

from e2e_harness.cluster import LocalCluster
from e2e_harness.node_config import (
    KUBE_PROXY_HEALTHZ_PORT,
    RUNC,
    RealNodeConfig,
    cni_conflist,
    containerd_config_toml,
    fake_driver_description,
    kube_proxy_config,
    kubelet_config,
    toolkit_config_toml,
)
from e2e_harness.node_daemons import GPU_RESOURCE, SERVICE_CIDR, Containerd, Kubelet, KubeProxy
from e2e_harness.node_filesystem import (
    FIXED_DEVICE_PLUGIN_DIR,
    KUBELET_ROOT,
    NODE_PATHS,
    MountNamespace,
    host_path,
    make_node_directories,
    mounts_under,
    processes_naming,
    seed_containerd_root,
)
from e2e_harness.node_host import (
    CONTROL_PLANE_ADDRESS,
    RealNodeError,
    add_lo_address,
    control_plane_address,
    lo_has,
    remove_lo_address,
    require_isolation,
    run,
)
from e2e_harness.node_images import NodeImages

# Re-exported: the names tests and the other harness modules import from here.
__all__ = [
    "CONTROL_PLANE_ADDRESS",
    "FIXED_DEVICE_PLUGIN_DIR",
    "GPU_RESOURCE",
    "KUBELET_ROOT",
    "KUBERNETES_SERVICE_IP",
    "KUBE_PROXY_HEALTHZ_PORT",
    "NODE_PATHS",
    "SERVICE_CIDR",
    "RealNode",
    "RealNodeConfig",
    "RealNodeError",
    "control_plane_address",
    "require_isolation",
    "seed_containerd_root",
]

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_KUBELET = ROOT / "tests" / "e2e" / "cluster" / "bin" / "kubelet"
DEFAULT_KUBE_PROXY = ROOT / "tests" / "e2e" / "cluster" / "bin" / "kube-proxy"
KUBERNETES_SERVICE_IP = "10.0.0.1"
TOOLKIT_DOUBLE = Path(__file__).resolve().parent / "nvidia_toolkit_double.py"


class RealNode:
    """One real node. ``await start()`` (returns when the Node is Ready); always ``await stop()``."""

    def __init__(
        self,
        cluster: LocalCluster,
        config: RealNodeConfig,
        images: NodeImages,
        log_dir: Path,
        *,
        kubelet_bin: Path | None = None,
        seed_root: Path | None = None,
        kube_proxy_bin: Path | None = None,
    ) -> None:
        self.cluster = cluster
        # A containerd root holding images already unpacked (e2e_harness.stack_images), copied in before
        # containerd starts: far cheaper per node than importing them (see seed_containerd_root).
        self.seed_root = seed_root
        self.config = config
        self.images = images
        self.log_dir = log_dir
        self.kubelet_bin = kubelet_bin or Path(os.environ.get("KUBELET_BIN", DEFAULT_KUBELET))
        self.kube_proxy_bin = kube_proxy_bin or Path(os.environ.get("KUBE_PROXY_BIN", DEFAULT_KUBE_PROXY))
        # Short paths: unix socket names are limited to 107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix=f"hami-rn{config.index}-", dir="/tmp"))
        self._namespace = MountNamespace(self.base, config.name)
        self.kubelet_root = self.host_path(KUBELET_ROOT)
        self.device_plugin_dir = self.host_path(FIXED_DEVICE_PLUGIN_DIR)
        self.fake_driver_config = self.base / "fake-gpus.conf"
        self._containerd = Containerd(config.name, self.base, self.containerd_log)
        self.containerd_socket = self._containerd.socket
        self._kubelet = Kubelet(
            cluster, config.name, config.node_ip, config.labels, self.kubelet_bin, self.base, self.kubelet_log
        )
        kube_proxy_file = self.base / "kube-proxy.yaml"
        self._kube_proxy = KubeProxy(
            config.name, config.node_ip, self.kube_proxy_bin, kube_proxy_file, self.kube_proxy_log
        )
        self._address_added = False
        self.timings: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def host_path(self, node_path: str | Path) -> Path:
        """Where a path of this node (as its kubelet, containerd and pods' hostPaths see it) is in the run's
        namespace: under ``<base>/host`` for :data:`NODE_PATHS`, the path itself otherwise."""
        return host_path(self.base, node_path)

    @property
    def kubelet_log(self) -> Path:
        return self.log_dir / "kubelet.log"

    @property
    def containerd_log(self) -> Path:
        return self.log_dir / "containerd.log"

    @property
    def kube_proxy_log(self) -> Path:
        return self.log_dir / "kube-proxy.log"

    @property
    def toolkit_log(self) -> Path:
        return self.log_dir / "nvidia-toolkit-double.log"

    @property
    def pod_resources_socket(self) -> Path:
        """The kubelet's pod-resources API socket (``<root-dir>/pod-resources/kubelet.sock``). The root dir is a
        bind mount made in this mount namespace before the kubelet's own was copied from it, so the socket the
        kubelet creates there is the same file here: a device plugin running here connects to it directly."""
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    @property
    def kubelet_running(self) -> bool:
        return self._kubelet.running

    # --- start -----------------------------------------------------------------------------------------------

    async def start(self, ready_within: float = 90.0) -> None:
        require_isolation()
        self._check_binaries()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._prepare_host)
            await self._containerd.start(self._namespace.enter)
            await asyncio.to_thread(self._containerd.import_archives, self.images.archives)
            self.timings["containerd_ready_s"] = time.monotonic() - t0
            await self.start_kubelet(ready_within)
            self.timings["node_ready_s"] = time.monotonic() - t0
            if self.config.kube_proxy:
                # After the kubelet: kube-proxy waits up to 30 s for its Node to exist (for the node IPs).
                await self._start_kube_proxy()
                self.timings["kube_proxy_ready_s"] = time.monotonic() - t0
        except BaseException:
            await self.stop()
            raise

    def _check_binaries(self) -> None:
        if not self.kubelet_bin.is_file():
            raise RealNodeError(f"{self.kubelet_bin} does not exist: build it with `make kubelet`")
        if self.config.kube_proxy and not self.kube_proxy_bin.is_file():
            raise RealNodeError(f"{self.kube_proxy_bin} does not exist: build it with `make kube-proxy`")

    def _prepare_host(self) -> None:
        make_node_directories(self.base)
        if self.seed_root is not None:
            seed_containerd_root(self.seed_root, self.base / "containerd" / "root")
        self._address_added = add_lo_address(self.config.node_ip)
        self._namespace.make()
        self._write_containerd_config()
        (self.base / "kubelet-config.yaml").write_text(
            yaml.safe_dump(kubelet_config(self.config.node_ip, self.containerd_socket, self.base))
        )

    def _write_containerd_config(self) -> None:
        gpu = self.config.fake_driver is not None
        runtime_binary = str(TOOLKIT_DOUBLE) if gpu else RUNC
        self._containerd.config_file.write_text(
            containerd_config_toml(
                self.base / "containerd",
                self.containerd_socket,
                self.images.pause,
                runtime_binary,
                self.base / "cni" / "net.d",
            )
        )
        (self.base / "cni" / "net.d" / "10-hami-e2e.conflist").write_text(
            cni_conflist(self.config, self.base / "cni" / "ipam")
        )
        if self.config.fake_driver is not None:
            self.fake_driver_config.write_text(fake_driver_description(self.config.fake_driver))
            config_dir = self.base / "toolkit" / "nvidia-container-runtime"
            config_dir.mkdir(parents=True, exist_ok=True)
            (config_dir / "config.toml").write_text(
                toolkit_config_toml(self.config, self.toolkit_log, self.fake_driver_config)
            )

    def in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run in this node's mount namespace, for what a node image provides (e.g. a tmpfs at a node path
        before the DaemonSets that use it run; e2e_harness.deployed_stack.provision_node)."""
        return self._namespace.enter(argv)

    # --- containerd ------------------------------------------------------------------------------------------

    async def restart_containerd(self) -> None:
        """Stop containerd and start it again; running containers keep running (their shims outlive it)."""
        await self._containerd.stop()
        await self._containerd.start(self._namespace.enter)

    def ctr_argv(self, *args: str) -> list[str]:
        """The ``ctr`` command line for this node's containerd (namespace k8s.io, where the CRI looks)."""
        return self._containerd.ctr_argv(*args)

    def list_images(self) -> list[str]:
        """The image references this node's containerd holds (namespace k8s.io)."""
        return self._containerd.list_images()

    # --- kube-proxy ------------------------------------------------------------------------------------------

    async def _start_kube_proxy(self) -> None:
        kubeconfig = self.cluster.kubeconfig_for_user("system:kube-proxy")
        config = kube_proxy_config(self.name, self.config.node_ip, kubeconfig)
        self._kube_proxy.config_file.write_text(yaml.safe_dump(config))
        await self._kube_proxy.start()

    # --- kubelet ---------------------------------------------------------------------------------------------

    async def start_kubelet(self, ready_within: float = 90.0) -> None:
        """Start the kubelet (again) and wait until the Node is Ready."""
        t0 = time.monotonic()
        await self._kubelet.start(self._namespace.enter, ready_within)
        self.timings["kubelet_ready_s"] = time.monotonic() - t0

    async def stop_kubelet(self) -> None:
        await self._kubelet.stop()

    async def restart_kubelet(self, ready_within: float = 90.0) -> None:
        await self.stop_kubelet()
        await self.start_kubelet(ready_within)

    async def wait_ready(self, within: float = 90.0) -> None:
        await self._kubelet.wait_ready(within)

    def registrations(self, resource: str = GPU_RESOURCE) -> int:
        """How many times device plugins registered ``resource`` with this node's kubelet (all its runs)."""
        return self._kubelet.registrations(resource)

    # --- stop ------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Delete the node's pods, stop kubelet and containerd, and remove everything the node made. Idempotent."""
        if self.kubelet_running:
            with contextlib.suppress(Exception):
                await self._delete_pods()
            # Pods force-deleted earlier (grace 0) are torn down by the kubelet after the fact: let it stop their
            # sandboxes (CNI DEL, network namespaces) before it goes.
            await self._containerd.wait_tasks_stopped()
        await self._kube_proxy.stop()
        await self.stop_kubelet()
        if self._containerd.running:
            await asyncio.to_thread(self._containerd.remove_containers)
            await self._containerd.stop()
        await asyncio.to_thread(self._clean_host)
        with contextlib.suppress(Exception):
            async with self.cluster.api_client() as api:
                await k8s.CoreV1Api(api).delete_node(self.name)

    async def _delete_pods(self, within: float = 60.0) -> None:
        """Graceful deletion through the kubelet, so it stops the sandboxes (CNI DEL, network namespaces)."""
        async with self.cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            selector = f"spec.nodeName={self.name}"
            pods = await core.list_pod_for_all_namespaces(field_selector=selector)
            for pod in pods.items:
                with contextlib.suppress(k8s.ApiException):
                    await core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=1)
            deadline = time.monotonic() + within
            while (await core.list_pod_for_all_namespaces(field_selector=selector)).items:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)

    async def wait_containers_stopped(self, within: float = 60.0) -> None:
        """Until no container of this node runs (the kubelet has torn down the pods deleted before)."""
        await self._containerd.wait_tasks_stopped(within)

    def _clean_host(self) -> None:
        for pid in processes_naming(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The node's mount namespace (and every mount in it) goes with its last process.
        self._namespace.release()
        for mount_point in sorted(mounts_under(self.base), key=len, reverse=True):
            run(["umount", "--lazy", mount_point], check=False)
        self._kube_proxy.remove_route()
        if Path(f"/sys/class/net/{self.config.bridge}").exists():
            run(["ip", "link", "delete", self.config.bridge], check=False)
        if self._address_added:
            remove_lo_address(self.config.node_ip)
            self._address_added = False
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine (empty after a clean stop)."""
        out = [f"process {pid}" for pid in processes_naming(self.base)]
        out += [f"mount {m}" for m in mounts_under(self.base)]
        if Path(f"/sys/class/net/{self.config.bridge}").exists():
            out.append(f"link {self.config.bridge}")
        if lo_has(self.config.node_ip):
            out.append(f"address {self.config.node_ip}")
        if self.config.kube_proxy:
            out += self._kube_proxy.leftovers()
        if self.base.exists():
            out.append(f"directory {self.base}")
        return out
