"""The GPU nodes of HamiStack (tests/e2e/hami_stack.py): what a node is (:class:`NodeSpec`, its simulated
:class:`GpuSpec` cards), and :class:`GpuNodeLauncher`, which starts one as a node of the stack: the node's
regions tmpfs, a real node (kubelet + containerd + runc, the NVIDIA toolkit's test double), then hami-lib-installer
and hami-device-plugin as host processes with the arguments of their rendered DaemonSet containers, until the
Node advertises the plugin's devices."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s

from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.ports import free_port
from e2e_harness.real_node import RealNode, RealNodeConfig
from e2e_harness.stack_manifests import NAMESPACE, localize, override_args, rendered_container, write_config_files
from e2e_harness.stack_processes import HAMICORE_BUILD, VENV_BIN, ServiceProcess, StackError, base_env, tail

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_VGPU_DIR = "/usr/local/vgpu"  # the lib-installer's hostPath, and where Allocate mounts it in containers
FAKE_DRIVER_LIBRARIES = (HAMICORE_BUILD / "fake" / "libcuda.so.1", HAMICORE_BUILD / "fake" / "libnvidia-ml.so.1")


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
    # The node's entry in the device plugin's per-node file (HAMi's ``nodeconfig``, the
    # hami-device-plugin-node-config ConfigMap), as an operator writes it, e.g. (("operatingmode", "mig"),);
    # empty: the node takes the cluster-wide settings.
    node_config: tuple[tuple[str, str | int], ...] = ()
    # The interconnect the fake NVML models (FAKE_GPU_TOPOLOGY: "nvswitch", "ring" or "pcie"; hamicore/tests/README.md,
    # "Topology"), which the device plugin publishes as the node's topology; empty: none (no NVLink, the fake's
    # default PCIe answers).
    topology: str = ""

    def fake_driver_env(self, state_file: Path) -> dict[str, str]:
        """Environment of the fake libcuda/libnvidia-ml describing this node's GPUs (hamicore/tests/README.md)."""
        topology = {}
        if self.topology:
            # The fake's own NUMA layout for a topology (first half on node 0, second on node 1), written out per
            # GPU: the toolkit double gives a container the items of its GPUs only, so its driver keeps each GPU's
            # node rather than splitting the container's few GPUs in halves again.
            half = (len(self.gpus) + 1) // 2
            numa_nodes = ",".join(str(int(i >= half)) for i in range(len(self.gpus)))
            topology = {"FAKE_GPU_TOPOLOGY": self.topology, "FAKE_GPU_NUMA_NODES": numa_nodes}
        return {
            "LD_LIBRARY_PATH": str(HAMICORE_BUILD / "fake"),
            "FAKE_GPU_COUNT": str(len(self.gpus)),
            "FAKE_GPU_UUIDS": ",".join(g.uuid for g in self.gpus),
            "FAKE_GPU_NAMES": ",".join(g.name for g in self.gpus),
            "FAKE_GPU_MEMORY_MIB": ",".join(str(g.memory_mib) for g in self.gpus),
            "FAKE_GPU_SM_COUNT": ",".join(str(g.sm_count) for g in self.gpus),
            "FAKE_GPU_STATE_FILE": str(state_file),
            # The driver double's contexts and modules cost device memory like a real driver's (300 MiB, 2 MiB by
            # default; hamicore charges it, hamicore/tests/test_context_memory.py). The stack tests count a pod's
            # budget in its allocations alone (cuda_probe sees its gpumem and is refused one byte past it), so
            # their contexts are free.
            "FAKE_GPU_CONTEXT_MIB": "0",
            "FAKE_MODULE_KIB": "0",
            **topology,
        }


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


class Stoppable(Protocol):
    async def stop(self) -> Any: ...


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


@dataclass
class GpuNodeLauncher:
    """Starts the stack's GPU nodes on ``cluster`` from the rendered manifests ``docs``; remembers the regions
    tmpfs it mounted (:meth:`unmount_regions` at the stack's stop)."""

    cluster: LocalCluster
    docs: Sequence[dict[str, Any]]
    work_dir: Path
    images: NodeImages
    node_indexes: Iterator[int]
    hardened_device_lists: bool
    tmpfs_mounts: list[Path]

    async def start(self, spec: NodeSpec) -> GpuNode:
        # What is started is stopped again if a later piece fails, so a failed start leaks nothing.
        started: list[Stoppable] = []
        try:
            return await self._start_pieces(spec, started)
        except BaseException:
            for piece in reversed(started):
                await piece.stop()
            raise

    async def _start_pieces(self, spec: NodeSpec, started: list[Stoppable]) -> GpuNode:
        root = self.work_dir / "nodes" / spec.name
        host_vgpu = root / "usr" / "local" / "vgpu"
        host_vgpu.mkdir(parents=True, exist_ok=True)
        driver_env = spec.fake_driver_env(root / "gpu.state")
        regions = await self._mount_regions(root)
        kubelet = await self._start_real_node(spec, driver_env, started)
        lib_installer = self._lib_installer(spec, host_vgpu)
        started.append(lib_installer)
        await lib_installer.start()
        device_plugin = await self._device_plugin(spec, root, kubelet, host_vgpu, regions, driver_env)
        started.append(device_plugin)
        await device_plugin.start()
        node = GpuNode(spec, root, kubelet, lib_installer, device_plugin)
        await wait_node_advertised(self.cluster, node)
        return node

    async def _mount_regions(self, root: Path) -> Path:
        """The node's regions tmpfs, as an operator provisions it (deploy/README.md, "Regions tmpfs"): the
        DaemonSet's plugin refuses to start on anything else."""
        regions = root / "run" / "hami" / "containers"
        regions.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(
            subprocess.run,
            ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711,nosuid,nodev,noexec", "hami-regions", str(regions)],
            check=True,
            capture_output=True,
        )
        self.tmpfs_mounts.append(regions)
        return regions

    async def _start_real_node(
        self, spec: NodeSpec, driver_env: Mapping[str, str], started: list[Stoppable]
    ) -> RealNode:
        fake_driver = {k: v for k, v in driver_env.items() if k.startswith("FAKE_")}
        config = RealNodeConfig(
            spec.name,
            next(self.node_indexes),
            {"gpu": "on"},
            fake_driver,
            FAKE_DRIVER_LIBRARIES,
            hardened_toolkit=self.hardened_device_lists,
        )
        node = RealNode(self.cluster, config, self.images, self.work_dir / "logs" / spec.name)
        started.append(node)
        await node.start()
        return node

    def _lib_installer(self, spec: NodeSpec, host_vgpu: Path) -> ServiceProcess:
        installer = rendered_container(self.docs, "hami-lib-installer", "lib-installer")
        health_port = free_port()
        overrides: dict[str, str | None] = {
            "--source": str(HAMICORE_BUILD),
            "--dest": str(host_vgpu),
            "--health-listen": f"127.0.0.1:{health_port}",
            # Containers see the host directory where the DaemonSet's hostPath puts it (the device plugin mounts it
            # there): ld.so.preload must name that path, not this process's --dest.
            "--runtime-dir": CONTAINER_VGPU_DIR,
        }
        return ServiceProcess(
            f"hami-lib-installer@{spec.name}",
            [str(VENV_BIN / "hami-lib-installer"), *override_args(installer.args, overrides)],
            base_env(),
            self.work_dir / "logs" / f"lib-installer-{spec.name}.log",
            ready_url=f"http://127.0.0.1:{health_port}/healthz",
        )

    async def _device_plugin(
        self,
        spec: NodeSpec,
        root: Path,
        kubelet: RealNode,
        host_vgpu: Path,
        regions: Path,
        driver_env: Mapping[str, str],
    ) -> ServiceProcess:
        plugin = rendered_container(self.docs, "hami-device-plugin", "device-plugin")
        files = write_config_files(plugin, root / "device-plugin-config")
        # The token of a DaemonSet pod on this node, as the kubelet mounts it: bound to that pod, so the
        # placement ValidatingAdmissionPolicy (base/admission-policy) sees the node in it and lets this plugin
        # write this node and its pods only.
        kubeconfig = await self.cluster.kubeconfig_for_pod(
            NAMESPACE, f"hami-device-plugin-{spec.name}", service_account=plugin.service_account, node=spec.name
        )
        metrics_port = free_port()
        # The kubelet's compiled-in directory, in its mount namespace.
        overrides: dict[str, str | None] = dict(
            device_plugin_overrides(kubelet.device_plugin_dir, host_vgpu, metrics_port, kubeconfig, regions)
        )
        # The kubelet's pod-resources socket tells the plugin which pod the kubelet is admitting.
        overrides["--pod-resources-socket"] = str(kubelet.pod_resources_socket)
        if self.hardened_device_lists:
            overrides["--device-list-strategy"] = "volume-mounts"
        return ServiceProcess(
            f"hami-device-plugin@{spec.name}",
            [str(VENV_BIN / "hami-device-plugin"), *override_args(localize(plugin.args, files), overrides)],
            base_env() | dict(driver_env) | {"NODE_NAME": spec.name},
            self.work_dir / "logs" / f"device-plugin-{spec.name}.log",
            ready_url=f"http://127.0.0.1:{metrics_port}/readyz",
        )


async def wait_node_advertised(cluster: LocalCluster, node: GpuNode, limit_s: float = 90.0) -> None:
    """Until the plugin has (re-)registered and the kubelet shows its virtual devices (a non-zero allocatable
    count on the Node)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        advertised = await node_allocatable(cluster, node.name) > 0
        if advertised and node.device_plugin.running:
            return
        if not node.device_plugin.running:
            break
        await asyncio.sleep(0.3)
    raise StackError(
        f"device plugin of {node.name} did not register {GPU_RESOURCE}:\n{tail(node.device_plugin.log_path)}"
    )


async def node_allocatable(cluster: LocalCluster, node: str, resource: str = GPU_RESOURCE) -> int:
    async with cluster.api_client() as api:
        obj = await k8s.CoreV1Api(api).read_node(node)
    return int((obj.status.allocatable or {}).get(resource, "0"))


async def unmount_regions(mounts: list[Path]) -> None:
    for mount in reversed(mounts):
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mount)], check=False, capture_output=True)
    mounts.clear()


def registrations(node: GpuNode) -> int:
    """How many times the node's kubelet has accepted a device-plugin registration."""
    return node.kubelet.registrations(GPU_RESOURCE)
