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

This module wires the stack together (start, stop, restarts, logs); its parts, one module each in e2e_harness:
``stack_manifests`` (kubectl, the rendered overlay, a container's arguments as a local process's),
``stack_processes`` (ServiceProcess, the services' environment) and ``stack_nodes`` (NodeSpec and the GPU nodes).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.ports import free_port, free_ports
from e2e_harness.stack_manifests import (
    KUSTOMIZE,
    NAMESPACE,
    config_map,
    kubectl,
    localize,
    override_args,
    render_overlay,
    rendered_container,
    write_config_files,
)
from e2e_harness.stack_nodes import (
    CONTAINER_VGPU_DIR,
    FAKE_DRIVER_LIBRARIES,
    GPU_RESOURCE,
    GpuNode,
    GpuNodeLauncher,
    GpuSpec,
    NodeSpec,
    registrations,
    unmount_regions,
    wait_node_advertised,
)
from e2e_harness.stack_processes import (
    HAMICORE_BUILD,
    ROOT,
    VENV_BIN,
    ServiceProcess,
    StackError,
    base_env,
    missing_artifacts,
)
from e2e_harness.webhooks import WebhookTLS

# Re-exported: the names the tests and the demo import from here.
__all__ = [
    "CONTAINER_VGPU_DIR",
    "DEFAULT_NODES",
    "FAKE_DRIVER_LIBRARIES",
    "GPU_RESOURCE",
    "HAMICORE_BUILD",
    "KUSTOMIZE",
    "NAMESPACE",
    "ROOT",
    "GpuNode",
    "GpuSpec",
    "HamiStack",
    "NodeSpec",
    "StackError",
    "kubectl",
    "registrations",
]

NODE_CONFIG_MAP = "hami-device-plugin-node-config"

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
        missing = missing_artifacts()
        if missing:
            raise StackError(f"missing {', '.join(missing)}: run `make setup hamicore`")
        kubectl(self.cluster.kubeconfig, "apply", "--server-side", "-k", str(KUSTOMIZE / "base" / "namespace"))
        kubectl(self.cluster.kubeconfig, "apply", "--server-side", "-k", str(KUSTOMIZE / "overlays" / "default"))
        self.docs = render_overlay("default")
        self._configure_nodes()
        try:
            await self._start_webhook()
            await self._start_extender()
            launcher = GpuNodeLauncher(
                self.cluster,
                self.docs,
                self.work_dir,
                self.real_nodes,
                self.node_indexes,
                self.hardened_device_lists,
                self._tmpfs_mounts,
            )
            for spec in self.nodes:
                self.gpu_nodes[spec.name] = await launcher.start(spec)
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
        await unmount_regions(self._tmpfs_mounts)
        # Idempotent: a second stop (after a failed start) finds nothing left to stop.
        self.gpu_nodes.clear()

    async def service_account_kubeconfig(self, name: str) -> Path:
        return await self.cluster.kubeconfig_for_service_account(NAMESPACE, name, create=False)

    def _configure_nodes(self) -> None:
        """The nodes' entries of the device plugin's per-node ConfigMap (``NodeSpec.node_config``), written as an
        operator edits it: in the cluster and in the rendered documents the node processes take their files from."""
        entries = [{"name": spec.name, **dict(spec.node_config)} for spec in self.nodes if spec.node_config]
        if not entries:
            return
        node_config = config_map(self.docs, NODE_CONFIG_MAP)
        document = json.loads(node_config["data"]["config.json"])
        document["nodeconfig"] = [*document.get("nodeconfig", []), *entries]
        text = json.dumps(document, indent=2)
        node_config["data"]["config.json"] = text
        kubectl(
            self.cluster.kubeconfig,
            "patch",
            "configmap",
            node_config["metadata"]["name"],
            f"--namespace={NAMESPACE}",
            "--type=merge",
            "-p",
            json.dumps({"data": {"config.json": text}}),
        )

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
            base_env(),
            self.work_dir / "logs" / "webhook.log",
            ready_url=f"https://127.0.0.1:{port}/readyz",
            ready_ca=self.work_dir / "webhook-tls" / "ca.crt",
        )
        await self.webhook.start()
        self._point_webhook_configurations(f"https://127.0.0.1:{port}", tls.ca_bundle)

    def _point_webhook_configurations(self, base_url: str, ca_bundle: str) -> None:
        """Both configurations (mutation of GPU pods, the tenant guard of every pod) call the local process."""
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            config = next(d for d in self.docs if d["kind"] == kind)
            patch = []
            for i, hook in enumerate(config["webhooks"]):
                path = hook["clientConfig"]["service"].get("path", "/")
                patch.append(
                    {
                        "op": "replace",
                        "path": f"/webhooks/{i}/clientConfig",
                        "value": {"url": f"{base_url}{path}", "caBundle": ca_bundle},
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
        files = write_config_files(rendered, self.work_dir / "extender-config")
        port, probe_port, metrics_port = free_ports(3)
        kubeconfig = await self.service_account_kubeconfig(rendered.service_account)
        args = override_args(
            localize(rendered.args, files),
            {
                "--listen": f"127.0.0.1:{port}",
                "--probe-listen": f"127.0.0.1:{probe_port}",
                "--metrics-listen": f"127.0.0.1:{metrics_port}",
                "--kubeconfig": str(kubeconfig),
            },
        )
        self.extender = ServiceProcess(
            "hami-scheduler-extender",
            [str(VENV_BIN / "hami-scheduler-extender"), *args],
            base_env(),
            self.work_dir / "logs" / "extender.log",
            ready_url=f"http://127.0.0.1:{probe_port}/readyz",
        )
        await self.extender.start()
        await self._restart_scheduler_with_extender(f"http://127.0.0.1:{port}", kubeconfig)

    async def _restart_scheduler_with_extender(self, url_prefix: str, kubeconfig: Path) -> None:
        scheduler_config = yaml.safe_load(config_map(self.docs, "hami-scheduler-config")["data"]["config.yaml"])
        for extender in scheduler_config.get("extenders", []):
            extender["urlPrefix"] = url_prefix
        # kube-scheduler too runs with the pod's ServiceAccount, so its ClusterRoleBindings are what it gets.
        scheduler_config.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
        await asyncio.to_thread(self.cluster.restart_scheduler, yaml.safe_dump(scheduler_config))

    # --- GPU nodes ------------------------------------------------------------------------------------------

    async def wait_node_advertised(self, node: GpuNode, limit_s: float = 90.0) -> None:
        """Until the plugin has (re-)registered and the kubelet shows its virtual devices (a non-zero allocatable
        count on the Node)."""
        await wait_node_advertised(self.cluster, node, limit_s)

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
                await self._restart_device_plugin(node)
        elif which == "lib-installer":
            for node in self.gpu_nodes.values():
                await node.lib_installer.restart()
        else:
            raise ValueError(f"unknown service {which!r}")

    async def _restart_device_plugin(self, node: GpuNode, limit_s: float = 60.0) -> None:
        before = registrations(node)
        await node.device_plugin.restart()
        deadline = asyncio.get_running_loop().time() + limit_s
        while registrations(node) <= before:
            if asyncio.get_running_loop().time() > deadline:
                raise StackError("timed out waiting for: device plugin re-registered")
            await asyncio.sleep(0.2)
        await self.wait_node_advertised(node)

    def logs(self) -> dict[str, Path]:
        out = {}
        for service in (self.extender, self.webhook):
            if service is not None:
                out[service.name] = service.log_path
        for node in self.gpu_nodes.values():
            out[node.device_plugin.name] = node.device_plugin.log_path
            out[node.lib_installer.name] = node.lib_installer.log_path
        out["localcluster"] = self.cluster.log_path
        return out
