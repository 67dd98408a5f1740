"""What a real node's daemons are told: the node's identity (:class:`RealNodeConfig`: name, index and what the
index gives it, labels, GPUs) and the configuration files rendered from it for containerd (with its CNI
network), the NVIDIA toolkit double, the kubelet and kube-proxy. Pure functions of values; e2e_harness.real_node
writes their output into the node's directory. Why each setting is what it is: shared/reference/real-node.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
KUBE_PROXY_HEALTHZ_PORT = 10256


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


def containerd_config_toml(
    containerd_dir: Path, socket: Path, pause_image: str, runtime_binary: str, cni_conf_dir: Path
) -> str:
    """containerd's config.toml: its own root, state and socket, overlayfs, runc (or the toolkit double in front
    of it) through the CRI, the node's CNI configuration directory."""
    return f"""version = 2
root = "{containerd_dir / "root"}"
state = "{containerd_dir / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause_image}"
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
      conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{containerd_dir / "opt"}"
"""


def cni_conflist(config: RealNodeConfig, ipam_dir: Path) -> str:
    """The node's CNI network: a bridge of its own with its /24, host-local IPAM, no masquerading. Needed even
    for hostNetwork-only nodes: without a CNI config the Node stays NotReady."""
    conflist = {
        "cniVersion": "0.4.0",
        "name": f"hami-e2e{config.index}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.bridge,
                "isGateway": True,
                # The pods' default route via the bridge: replies to the node and control-plane addresses
                # (kube-proxy's Service traffic from the host side, the kubernetes Service) need it. The run's
                # network namespace has no way out, so nothing routes off the machine.
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": config.pod_subnet}]],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }
    return json.dumps(conflist, indent=2)


def fake_driver_description(fake_driver: Mapping[str, str]) -> str:
    """The node's fake-GPU description (FAKE_NVML_CONFIG's file): one ``KEY=value`` per line."""
    return "".join(f"{k}={v}\n" for k, v in fake_driver.items())


def toolkit_config_toml(config: RealNodeConfig, debug_log: Path, fake_driver_config: Path) -> str:
    """The toolkit double's config.toml: the real nvidia-container-runtime keys plus a ``[fake-driver]`` table
    (e2e_harness/nvidia_toolkit_double.py)."""
    assert config.fake_driver is not None
    state = config.fake_driver.get("FAKE_GPU_STATE_FILE")
    libraries = ", ".join(f'"{p}"' for p in config.fake_driver_libraries)
    hardened = config.hardened_toolkit
    return f"""# TEST DOUBLE of /etc/nvidia-container-runtime/config.toml (see e2e_harness/nvidia_toolkit_double.py)
accept-nvidia-visible-devices-envvar-when-unprivileged = {"false" if hardened else "true"}
accept-nvidia-visible-devices-as-volume-mounts = {"true" if hardened else "false"}

[nvidia-container-runtime]
debug = "{debug_log}"
runtimes = ["{RUNC}"]

[fake-driver]
libraries = [{libraries}]
library-dir = "/usr/lib/x86_64-linux-gnu"
config = "{fake_driver_config}"
{f'state-file = "{state}"' if state else ""}
host-proc = true
"""


def kubelet_config(node_ip: str, containerd_socket: Path, base: Path) -> dict[str, Any]:
    """The KubeletConfiguration: cgroupfs without QoS cgroups, the node's containerd, its address, no eviction or
    image GC, an empty resolv.conf, anonymous + AlwaysAllow on its port (test only)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": node_ip,
        "healthzPort": 10248,
        # Test only: localcluster's apiserver has no kubelet client certificate (logs/exec go through here).
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "evictionHard": {},
        "evictionSoft": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": str(base / "pod-logs"),
        # Pods get an empty resolv.conf: nothing in a pod can reach the machine's resolver.
        "resolvConf": "",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "protectKernelDefaults": False,
        "volumePluginDir": str(base / "volume-plugins"),
    }


def kube_proxy_config(node_name: str, node_ip: str, kubeconfig: Path) -> dict[str, Any]:
    """The KubeProxyConfiguration: iptables mode bound to the node IP, and nothing machine-wide changed."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "bindAddress": node_ip,
        "healthzBindAddress": f"{node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"{node_ip}:10249",
        # No NodePorts on 127.0.0.1: they would need net.ipv4.conf.all.route_localnet=1.
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # 0 = leave the kernel's values: nf_conntrack_max is machine-wide (and read-only in a namespace).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nodePortAddresses": [f"{node_ip}/32"],
    }
