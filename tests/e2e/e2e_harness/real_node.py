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

Everything must run inside the e2e run's own network and mount namespaces (tests/e2e/isolated.sh, which ``make
test-e2e`` uses): node addresses, bridges and the kubelet's iptables rules then exist only there.
:func:`require_isolation` says so when they are missing. ``stop()`` leaves nothing behind: no process, mount,
container, link, address or file of the node (:meth:`RealNode.leftovers` lists what would be left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_KUBELET = ROOT / "tests" / "e2e" / "cluster" / "bin" / "kubelet"
DEFAULT_KUBE_PROXY = ROOT / "tests" / "e2e" / "cluster" / "bin" / "kube-proxy"
SERVICE_CIDR = "10.0.0.0/24"  # localcluster's --service-cluster-ip-range
KUBERNETES_SERVICE_IP = "10.0.0.1"
# The apiserver's address inside the e2e namespace (a /32 on lo like the node IPs): pods reach it through the
# kubernetes Service. See control_plane_address().
CONTROL_PLANE_ADDRESS = "10.244.77.1"
KUBE_PROXY_HEALTHZ_PORT = 10256
TOOLKIT_DOUBLE = Path(__file__).resolve().parent / "nvidia_toolkit_double.py"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
KUBELET_ROOT = Path("/var/lib/kubelet")  # the kubelet's default root dir, as on a real node
FIXED_DEVICE_PLUGIN_DIR = KUBELET_ROOT / "device-plugins"  # k8s.io/kubelet deviceplugin/v1beta1
# Node paths each node has its own copy of (its mount namespace binds <base>/host/<path> there): the kubelet's
# root dir and the hostPaths of deploy/kustomize's DaemonSets. Their mount points exist in the run's namespace
# (tests/e2e/isolated.sh makes each a tmpfs there; keep the two lists equal). Other paths are the run's.
NODE_PATHS = (KUBELET_ROOT, Path("/usr/local/vgpu"), Path("/run/hami"))
GPU_RESOURCE = "nvidia.com/gpu"
REGISTRATION_LOG_LINE = "Got registration request from device plugin"


class RealNodeError(RuntimeError):
    """A node did not come up or go down as it should; the message names the piece and carries its log tail."""


def require_isolation() -> None:
    """Real nodes add addresses, links, iptables rules and mounts: only inside the run's own namespaces."""
    if os.environ.get("HAMI_E2E_ISOLATED") != "1":
        raise RealNodeError(
            "real nodes run only inside the e2e run's own network and mount namespaces: "
            "run `tests/e2e/isolated.sh .venv/bin/pytest ...` (make test-e2e does)"
        )
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (mounts, network namespaces, iptables)")


def _lo_has(address: str) -> bool:
    return f" {address}/32 " in _run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout


@contextlib.contextmanager
def control_plane_address(address: str = CONTROL_PLANE_ADDRESS) -> Iterator[str]:
    """``address`` as a /32 on lo for the while (inside the e2e namespaces only), for ``LocalCluster.start(address=)``:
    an apiserver there is what the ``kubernetes`` Service's endpoints name, so pods reach it."""
    require_isolation()
    added = not _lo_has(address)
    if added:
        _run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    try:
        yield address
    finally:
        if added:
            _run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _run(argv: list[str], *, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def seed_containerd_root(template: Path, root: Path) -> None:
    """Fill a containerd root that no containerd runs on yet from ``template``, the root of a stopped containerd
    that imported images: hard links for the content blobs and the unpacked snapshots, which containerd never
    changes in place (a committed snapshot is only ever an overlay lower layer: a container's writes are copied up
    into its own upper directory; removal unlinks), and real copies of the bolt databases, which it rewrites.
    Falls back to copying everything where hard links cannot be made (another filesystem)."""
    root.mkdir(parents=True, exist_ok=True)
    if _run(["cp", "-al", f"{template}/.", str(root)], check=False).returncode != 0:
        _run(["cp", "-a", f"{template}/.", str(root)], timeout=300.0)
    for database in template.rglob("*.db"):
        target = root / database.relative_to(template)
        target.unlink()
        shutil.copy2(database, target)


@dataclass(frozen=True)
class RealNodeConfig:
    """What distinguishes one node from another. ``index`` (0..99) picks its address 10.244.78.<index+1>, pod
    subnet 10.244.<100+index>.0/24 and bridge hami-e2e<index>; ``fake_driver`` (the fake driver's FAKE_* settings,
    FAKE_GPU_STATE_FILE included) makes it a GPU node with the toolkit double in front of runc. ``hardened_toolkit``
    writes the toolkit options docs/security.md asks of operators (item 3): device lists of unprivileged containers
    only from volume mounts, never from ``NVIDIA_VISIBLE_DEVICES``; otherwise the toolkit's defaults. ``kube_proxy``:
    this node runs the kube-proxy of the whole network namespace (give it to one node of a run)."""

    name: str
    index: int
    labels: Mapping[str, str] = field(default_factory=dict)
    fake_driver: Mapping[str, str] | None = None
    fake_driver_libraries: tuple[Path, ...] = ()
    hardened_toolkit: bool = False
    kube_proxy: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index < 100:
            raise ValueError(f"node index {self.index} out of 0..99")

    @property
    def node_ip(self) -> str:
        return f"10.244.78.{self.index + 1}"

    @property
    def pod_subnet(self) -> str:
        return f"10.244.{100 + self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"hami-e2e{self.index}"


@dataclass
class _Process:
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
        self._namespace_holder: subprocess.Popen[str] | None = None
        self.containerd_socket = self.base / "containerd.sock"
        self.kubelet_root = self.host_path(KUBELET_ROOT)
        self.device_plugin_dir = self.host_path(FIXED_DEVICE_PLUGIN_DIR)
        self.fake_driver_config = self.base / "fake-gpus.conf"
        self._containerd: _Process | None = None
        self._kubelet: _Process | None = None
        self._kube_proxy: _Process | None = None
        self._service_route = False
        self._address_added = False
        self._kubelet_started_at = 0.0
        self.timings: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def host_path(self, node_path: str | Path) -> Path:
        """Where a path of this node (as its kubelet, containerd and pods' hostPaths see it) is in the run's
        namespace: under ``<base>/host`` for :data:`NODE_PATHS`, the path itself otherwise."""
        path = Path(node_path)
        if not path.is_absolute():
            raise ValueError(f"node path {node_path!r} is not absolute")
        for prefix in NODE_PATHS:
            if path == prefix or prefix in path.parents:
                return self.base / "host" / path.relative_to("/")
        return path

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
        return self._kubelet is not None and self._kubelet.running

    # --- start -----------------------------------------------------------------------------------------------

    async def start(self, ready_within: float = 90.0) -> None:
        require_isolation()
        if not self.kubelet_bin.is_file():
            raise RealNodeError(f"{self.kubelet_bin} does not exist: build it with `make kubelet`")
        if self.config.kube_proxy and not self.kube_proxy_bin.is_file():
            raise RealNodeError(f"{self.kube_proxy_bin} does not exist: build it with `make kube-proxy`")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._prepare_host)
            await self._start_containerd()
            await asyncio.to_thread(self._import_images)
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

    def _prepare_host(self) -> None:
        for directory in ("containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "toolkit", "pod-logs"):
            (self.base / directory).mkdir(parents=True, exist_ok=True)
        for node_path in NODE_PATHS:
            if not node_path.is_dir():
                raise RealNodeError(f"{node_path} is missing: run inside tests/e2e/isolated.sh, which makes it")
            self.host_path(node_path).mkdir(parents=True, exist_ok=True)
        self.device_plugin_dir.mkdir(exist_ok=True)
        if self.seed_root is not None:
            seed_containerd_root(self.seed_root, self.base / "containerd" / "root")
        if not _lo_has(self.config.node_ip):
            _run(["ip", "addr", "add", f"{self.config.node_ip}/32", "dev", "lo"])
            self._address_added = True
        self._make_mount_namespace()
        self._write_containerd_config()
        self._write_kubelet_config()

    def _make_mount_namespace(self) -> None:
        """This node's mount namespace: a copy of the run's (private, so nothing made there comes back) with
        NODE_PATHS bound to this node's directories, then / made rshared as on a real node. A shell holds it open
        (blocked reading its stdin, so no child of it outlives it; its command line names the node's directory, so
        _our_processes finds it), and the node's processes enter it by that shell's pid. Not pinned by a bind mount
        of its nsfs file (``unshare --mount=FILE``): on this kernel that bind fails now and then with EINVAL (its
        mount-namespace loop check compares namespace ids that are not allocated in creation order)."""
        binds = " && ".join(f'mount --bind "{self.host_path(p)}" "{p}"' for p in NODE_PATHS)
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            f"{binds} && mount --make-rshared / && echo ready && read _",
        ]
        pipe = subprocess.PIPE
        holder = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
        self._namespace_holder = holder
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            _, stderr = holder.communicate(timeout=10)
            self._namespace_holder = None
            raise RealNodeError(f"mount namespace of {self.name}: {stderr.strip()}")

    def _release_mount_namespace(self) -> None:
        """End the holder (EOF on its stdin); the namespace and its mounts go with the last process in it."""
        holder, self._namespace_holder = self._namespace_holder, None
        if holder is None:
            return
        try:
            holder.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.communicate()

    def in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run in this node's mount namespace, for what a node image provides (e.g. a tmpfs at a node path
        before the DaemonSets that use it run; e2e_harness.deployed_stack.provision_node)."""
        return self._in_node(argv)

    def _in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run in this node's mount namespace (nsenter execs it: the pid is the command's)."""
        if self._namespace_holder is None or self._namespace_holder.poll() is not None:
            raise RealNodeError(f"the mount namespace of {self.name} is gone")
        return ["nsenter", f"--mount=/proc/{self._namespace_holder.pid}/ns/mnt", "--", *argv]

    def _write_containerd_config(self) -> None:
        gpu = self.config.fake_driver is not None
        runtime_binary = str(TOOLKIT_DOUBLE) if gpu else RUNC
        containerd = self.base / "containerd"
        (containerd / "config.toml").write_text(
            f"""version = 2
root = "{containerd / "root"}"
state = "{containerd / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.containerd_socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{self.images.pause}"
    # root here lacks CAP_SYS_RESOURCE: the kubelet's negative oom_score_adj would fail every sandbox in runc init
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "{runtime_binary}"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{self.base / "cni" / "net.d"}"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{containerd / "opt"}"
"""
        )
        # A CNI config must exist even for hostNetwork-only nodes: without one the Node stays NotReady.
        conflist = {
            "cniVersion": "0.4.0",
            "name": f"hami-e2e{self.config.index}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.config.bridge,
                    "isGateway": True,
                    # The pods' default route via the bridge: replies to the node and control-plane addresses
                    # (kube-proxy's Service traffic from the host side, the kubernetes Service) need it. The run's
                    # network namespace has no way out, so nothing routes off the machine.
                    "isDefaultGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.config.pod_subnet}]],
                        "dataDir": str(self.base / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.base / "cni" / "net.d" / "10-hami-e2e.conflist").write_text(json.dumps(conflist, indent=2))
        if self.config.fake_driver is not None:
            self._write_toolkit_config(self.config.fake_driver)

    def _write_toolkit_config(self, fake_driver: Mapping[str, str]) -> None:
        self.fake_driver_config.write_text("".join(f"{k}={v}\n" for k, v in fake_driver.items()))
        state = fake_driver.get("FAKE_GPU_STATE_FILE")
        libraries = ", ".join(f'"{p}"' for p in self.config.fake_driver_libraries)
        config_dir = self.base / "toolkit" / "nvidia-container-runtime"
        config_dir.mkdir(parents=True, exist_ok=True)
        hardened = self.config.hardened_toolkit
        (config_dir / "config.toml").write_text(
            f"""# TEST DOUBLE of /etc/nvidia-container-runtime/config.toml (see e2e_harness/nvidia_toolkit_double.py)
accept-nvidia-visible-devices-envvar-when-unprivileged = {"false" if hardened else "true"}
accept-nvidia-visible-devices-as-volume-mounts = {"true" if hardened else "false"}

[nvidia-container-runtime]
debug = "{self.toolkit_log}"
runtimes = ["{RUNC}"]

[fake-driver]
libraries = [{libraries}]
library-dir = "/usr/lib/x86_64-linux-gnu"
config = "{self.fake_driver_config}"
{f'state-file = "{state}"' if state else ""}
host-proc = true
"""
        )

    def _write_kubelet_config(self) -> None:
        ip = self.config.node_ip
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": ip,
            "healthzPort": 10248,
            # Test only: localcluster's apiserver has no kubelet client certificate (logs/exec go through here).
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "evictionHard": {},
            "evictionSoft": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.base / "pod-logs"),
            # Pods get an empty resolv.conf: nothing in a pod can reach the machine's resolver.
            "resolvConf": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "protectKernelDefaults": False,
            "volumePluginDir": str(self.base / "volume-plugins"),
        }
        (self.base / "kubelet-config.yaml").write_text(yaml.safe_dump(config))

    async def _start_containerd(self, within: float = 60.0) -> None:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            # Where the toolkit double (like the real nvidia-container-runtime) finds its config.toml.
            "XDG_CONFIG_HOME": str(self.base / "toolkit"),
        }
        with self.containerd_log.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self._in_node(["containerd", "--config", str(self.base / "containerd" / "config.toml")]),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._containerd = _Process("containerd", proc, self.containerd_log)
        deadline = time.monotonic() + within
        while True:
            if not self._containerd.running:
                raise RealNodeError(f"containerd of {self.name} exited:\n{_tail(self.containerd_log)}")
            if self.containerd_socket.exists() and self._ctr("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RealNodeError(f"containerd of {self.name} not serving after {within}s")
            await asyncio.sleep(0.1)

    async def restart_containerd(self) -> None:
        """Stop containerd and start it again; running containers keep running (their shims outlive it)."""
        if self._containerd is not None:
            await self._containerd.stop()
        await self._start_containerd()

    def ctr_argv(self, *args: str) -> list[str]:
        """The ``ctr`` command line for this node's containerd (namespace k8s.io, where the CRI looks)."""
        return ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args]

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.ctr_argv(*args), check=check)

    def _import_images(self) -> None:
        for archive in self.images.archives:
            self._ctr("images", "import", str(archive))

    def list_images(self) -> list[str]:
        """The image references this node's containerd holds (namespace k8s.io)."""
        return self._ctr("images", "list", "-q").stdout.split()

    # --- kube-proxy ------------------------------------------------------------------------------------------

    def _write_kube_proxy_config(self) -> Path:
        kubeconfig = self.cluster.kubeconfig_for_user("system:kube-proxy")
        ip = self.config.node_ip
        config: dict[str, Any] = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "bindAddress": ip,
            "healthzBindAddress": f"{ip}:{KUBE_PROXY_HEALTHZ_PORT}",
            "metricsBindAddress": f"{ip}:10249",
            # No NodePorts on 127.0.0.1: they would need net.ipv4.conf.all.route_localnet=1.
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
            # 0 = leave the kernel's values: nf_conntrack_max is machine-wide (and read-only in a namespace).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": [f"{ip}/32"],
        }
        path = self.base / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    async def _start_kube_proxy(self, within: float = 60.0) -> None:
        config = self._write_kube_proxy_config()
        if not self._service_route:
            _run(["ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "src", self.config.node_ip])
            self._service_route = True
        with self.kube_proxy_log.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                str(self.kube_proxy_bin),
                f"--config={config}",
                "--v=2",
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._kube_proxy = _Process("kube-proxy", proc, self.kube_proxy_log)
        url = f"http://{self.config.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"
        deadline = time.monotonic() + within
        # /healthz answers 200 once the first full sync of the rules is done.
        while not await asyncio.to_thread(_http_ok, url):
            if not self._kube_proxy.running:
                raise RealNodeError(f"kube-proxy of {self.name} exited:\n{_tail(self.kube_proxy_log)}")
            if time.monotonic() > deadline:
                raise RealNodeError(
                    f"kube-proxy of {self.name} not healthy after {within}s:\n{_tail(self.kube_proxy_log)}"
                )
            await asyncio.sleep(0.2)

    async def _stop_kube_proxy(self) -> None:
        if self._kube_proxy is None:
            return
        await self._kube_proxy.stop()
        self._kube_proxy = None
        # Its chains and rules would stay in the namespace (and steer the next run's ClusterIPs): remove them.
        config = self.base / "kube-proxy.yaml"
        await asyncio.to_thread(
            _run, [str(self.kube_proxy_bin), f"--config={config}", "--cleanup"], check=False, timeout=60.0
        )

    # --- kubelet ---------------------------------------------------------------------------------------------

    async def start_kubelet(self, ready_within: float = 90.0) -> None:
        """Start the kubelet (again) and wait until the Node is Ready."""
        kubeconfig = self.cluster.kubeconfig_for_user(f"system:node:{self.name}", ("system:nodes",))
        labels = ",".join(f"{k}={v}" for k, v in self.config.labels.items())
        kubelet_argv = [
            str(self.kubelet_bin),
            f"--config={self.base / 'kubelet-config.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={KUBELET_ROOT}",
            f"--cert-dir={self.base / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.config.node_ip}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=2",
        ]
        argv = self._in_node(kubelet_argv)
        with self.kubelet_log.open("ab") as log:
            log.write(f"--- start: {' '.join(kubelet_argv)}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._kubelet = _Process("kubelet", proc, self.kubelet_log)
        self._kubelet_started_at = time.time()
        t0 = time.monotonic()
        await self.wait_ready(ready_within)
        self.timings["kubelet_ready_s"] = time.monotonic() - t0

    async def stop_kubelet(self) -> None:
        if self._kubelet is not None:
            await self._kubelet.stop()

    async def restart_kubelet(self, ready_within: float = 90.0) -> None:
        await self.stop_kubelet()
        await self.start_kubelet(ready_within)

    async def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        async with self.cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            while True:
                if self._kubelet is None or not self._kubelet.running:
                    raise RealNodeError(f"kubelet of {self.name} exited:\n{_tail(self.kubelet_log)}")
                with contextlib.suppress(k8s.ApiException):
                    node = await core.read_node(self.name)
                    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                    if ready and ready[0].status == "True" and await self._heartbeat_after(ready[0]):
                        return
                if time.monotonic() > deadline:
                    raise RealNodeError(f"Node {self.name} not Ready after {within}s:\n{_tail(self.kubelet_log)}")
                await asyncio.sleep(0.2)

    async def _heartbeat_after(self, condition: Any) -> bool:
        # After a kubelet restart the old Ready condition is still there: only a heartbeat of this kubelet counts.
        heartbeat = condition.last_heartbeat_time
        return heartbeat is None or heartbeat.timestamp() >= int(self._kubelet_started_at) - 1

    def registrations(self, resource: str = GPU_RESOURCE) -> int:
        """How many times device plugins registered ``resource`` with this node's kubelet (all its runs)."""
        try:
            text = self.kubelet_log.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if REGISTRATION_LOG_LINE in line and f'"{resource}"' in line)

    # --- stop ------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Delete the node's pods, stop kubelet and containerd, and remove everything the node made. Idempotent."""
        if self.kubelet_running:
            with contextlib.suppress(Exception):
                await self._delete_pods()
            # Pods force-deleted earlier (grace 0) are torn down by the kubelet after the fact: let it stop their
            # sandboxes (CNI DEL, network namespaces) before it goes.
            await self._wait_tasks_stopped()
        await self._stop_kube_proxy()
        await self.stop_kubelet()
        if self._containerd is not None and self._containerd.running:
            await asyncio.to_thread(self._remove_containers)
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
        await self._wait_tasks_stopped(within)

    async def _wait_tasks_stopped(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            listing = await asyncio.to_thread(self._ctr, "tasks", "list", check=False)
            if not any(line.split()[-1:] == ["RUNNING"] for line in listing.stdout.splitlines()[1:]):
                return
            await asyncio.sleep(0.3)

    def _remove_containers(self) -> None:
        """Whatever the kubelet left (exited containers wait for its GC): kill and remove through containerd."""
        tasks = self._ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        for task in tasks:
            self._ctr("tasks", "delete", "--force", task, check=False)
        for container in self._ctr("containers", "list", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", container, check=False)

    def _our_processes(self) -> list[int]:
        """Pids of processes of this node still alive: shims of its containerd and anything under its base dir."""
        marker = str(self.base).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
        return pids

    def _our_mounts(self) -> list[str]:
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point == str(self.base) or mount_point.startswith(f"{self.base}/"):
                out.append(mount_point)
        return out

    def _clean_host(self) -> None:
        for pid in self._our_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The node's mount namespace (and every mount in it) goes with its last process.
        self._release_mount_namespace()
        for mount_point in sorted(self._our_mounts(), key=len, reverse=True):
            _run(["umount", "--lazy", mount_point], check=False)
        if self._service_route:
            _run(["ip", "route", "del", SERVICE_CIDR, "dev", "lo"], check=False)
            self._service_route = False
        if Path(f"/sys/class/net/{self.config.bridge}").exists():
            _run(["ip", "link", "delete", self.config.bridge], check=False)
        if self._address_added:
            _run(["ip", "addr", "del", f"{self.config.node_ip}/32", "dev", "lo"], check=False)
            self._address_added = False
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine (empty after a clean stop)."""
        out = [f"process {pid}" for pid in self._our_processes()]
        out += [f"mount {m}" for m in self._our_mounts()]
        if Path(f"/sys/class/net/{self.config.bridge}").exists():
            out.append(f"link {self.config.bridge}")
        if _lo_has(self.config.node_ip):
            out.append(f"address {self.config.node_ip}")
        if self.config.kube_proxy:
            if f"src {self.config.node_ip}" in _run(["ip", "-4", "route", "show", SERVICE_CIDR]).stdout:
                out.append(f"route {SERVICE_CIDR}")
            if "KUBE-SERVICES" in _run(["iptables-save", "-t", "nat"], check=False).stdout:
                out.append("kube-proxy's iptables chains")
        if self.base.exists():
            out.append(f"directory {self.base}")
        return out
