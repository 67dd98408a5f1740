"""The stack installed as an operator installs it, on real nodes: nothing of it runs as a host process.

An operator-style overlay per service is generated in a work directory; it references the repository's bases
and ``components/common`` (``resources: [<relative path>/deploy/kustomize/base/webhook, ...]``) and sets the
``images:`` tags the e2e images carry, and each is applied with ``kubectl apply --server-side -k`` as
docs/deploy.md says. The webhook's certificate is made by ``deploy/scripts/webhook-cert.sh --apply`` (the
documented by-hand path: the certgen Jobs' image, registry.k8s.io/ingress-nginx/kube-webhook-certgen, cannot be
fetched here, no registry is reachable). The images are already in the nodes' containerd (e2e_harness.stack_images);
the kubelet finds them there (their tags are not ``latest``, so the default pull policy is IfNotPresent).

What a node image provides (docs/deploy.md, deploy/README.md "Regions tmpfs"): the size-limited tmpfs at
``/run/hami/containers`` is mounted in each node's own mount namespace by :func:`provision_node` before the
DaemonSets are applied; ``/var/lib/kubelet/device-plugins`` is the kubelet's.

Waiting for Deployments and DaemonSets to be available fails with what an operator would look at: the
namespace's pods with their container statuses, its events, and each container's log (``kubectl logs`` through
the kubelet's port 10250).

The overlays themselves and the rollout-status decision are pure, in e2e_harness.deploy_overlays (re-exported
here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e_harness.cluster import LocalCluster
from e2e_harness.deploy_overlays import (
    AS_BUILT,
    INSTALL_ORDER,
    KUSTOMIZE,
    SERVICE_BASES,
    SERVICE_IMAGES,
    SERVICE_WORKLOADS,
    OverlaySettings,
    WorkloadStatus,
    overlay_kustomization,
    split_reference,
)
from e2e_harness.real_node import RealNode
from e2e_harness.stack_images import StackImages

ROOT = Path(__file__).resolve().parents[3]
WEBHOOK_CERT_SCRIPT = ROOT / "deploy" / "scripts" / "webhook-cert.sh"
NAMESPACE = "hami-system"
REGIONS_PATH = "/run/hami/containers"
# deploy/README.md "Regions tmpfs": what a node image mounts there (the plugin checks it is a tmpfs and its size).
REGIONS_MOUNT_OPTIONS = "size=64m,mode=0711,nosuid,nodev,noexec"

SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# Re-exported: the names the tests import from here.
__all__ = [
    "INSTALL_ORDER",
    "KUSTOMIZE",
    "NAMESPACE",
    "SERVICE_BASES",
    "SERVICE_IMAGES",
    "SERVICE_WORKLOADS",
    "DeployError",
    "DeployedStack",
    "OverlaySettings",
    "WorkloadStatus",
    "overlay_kustomization",
    "provision_node",
    "split_reference",
]


class DeployError(RuntimeError):
    """A kubectl step failed or a workload did not become available; the message carries the diagnostics."""


def provision_node(node: RealNode, regions_size: str = "64m") -> None:
    """What a GPU node image provides before the DaemonSets run (deploy/README.md): the regions tmpfs at
    /run/hami/containers, mounted in the node's own mount namespace (its hostPaths resolve there)."""
    options = REGIONS_MOUNT_OPTIONS.replace("size=64m", f"size={regions_size}")
    script = f"mkdir -p {REGIONS_PATH} && mount -t tmpfs -o {options} hami-regions {REGIONS_PATH}"
    result = subprocess.run(
        node.in_node(["/bin/sh", "-c", script]),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise DeployError(f"regions tmpfs on {node.name}: {result.stderr.strip()}")


class DeployedStack:
    """The four services installed from their overlays onto ``nodes`` (real nodes holding the stack images)."""

    def __init__(self, cluster: LocalCluster, images: StackImages, work_dir: Path) -> None:
        self.cluster = cluster
        self.images = images
        self.work_dir = work_dir
        self.timings: dict[str, float] = {}
        self._env = {"PATH": SHELL_PATH, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(work_dir)}

    # --- kubectl ---------------------------------------------------------------------------------------------

    async def run(self, *argv: str, check: bool = True, limit_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """A command with this cluster's admin kubeconfig as $KUBECONFIG (kubectl's current context)."""
        result = await asyncio.to_thread(
            subprocess.run, list(argv), env=self._env, capture_output=True, text=True, timeout=limit_s, check=False
        )
        if check and result.returncode != 0:
            raise DeployError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    async def kubectl(self, *args: str, check: bool = True) -> str:
        return (await self.run("kubectl", *args, check=check)).stdout

    async def get_json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.kubectl("get", *args, "-o", "json"))
        return data

    # --- overlays and apply ----------------------------------------------------------------------------------

    def write_overlay(self, service: str, settings: OverlaySettings = AS_BUILT) -> Path:
        """Write the operator overlay of ``service`` under the work dir and return its directory."""
        # One directory per service and settings: earlier overlays stay for the record.
        digest = hashlib.sha256(repr((sorted(settings.tags.items()), settings.extra_args)).encode()).hexdigest()
        directory = self.work_dir / "overlays" / f"{service}-{digest[:10]}"
        directory.mkdir(parents=True, exist_ok=True)
        kustomization = overlay_kustomization(service, directory, self.images.references, settings)
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return directory

    async def apply(self, service: str, settings: OverlaySettings = AS_BUILT) -> Path:
        """``kubectl apply --server-side -k`` of the service's overlay (docs/deploy.md)."""
        directory = self.write_overlay(service, settings)
        await self.kubectl("apply", "--server-side", "-k", str(directory))
        return directory

    async def make_webhook_certificate(self) -> None:
        """deploy/scripts/webhook-cert.sh --apply: CA + serving certificate, Secret, both caBundles."""
        await self.run(str(WEBHOOK_CERT_SCRIPT), str(self.work_dir / "webhook-cert"), "--apply")

    async def install(self, nodes: Sequence[RealNode], within: float = 180.0) -> None:
        """Provision the nodes, apply every service in order, make the certificate, wait until all are
        available."""
        start = time.monotonic()
        for node in nodes:
            await asyncio.to_thread(provision_node, node)
        for service in INSTALL_ORDER:
            await self.apply(service)
            if service == "webhook":
                await self.make_webhook_certificate()
        self.timings["applied_s"] = time.monotonic() - start
        await asyncio.gather(*(self.wait_available(service, within) for service in SERVICE_WORKLOADS))
        self.timings["available_s"] = time.monotonic() - start

    async def uninstall(self, within: float = 90.0) -> None:
        """Remove the webhook configurations, then the Deployments and DaemonSets with their pods (foreground
        deletion waits until the kubelet has stopped them). Before nodes stop: otherwise the DaemonSet controller
        recreates the pods a stopping node deletes."""
        await self.kubectl(
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "hami-webhook",
            "--ignore-not-found",
        )
        await self.kubectl(
            "delete",
            "deployments,daemonsets",
            "--all",
            "-n",
            NAMESPACE,
            "--cascade=foreground",
            f"--timeout={within:.0f}s",
            "--wait=true",
        )

    # --- waiting ---------------------------------------------------------------------------------------------

    async def workload(self, service: str) -> dict[str, Any]:
        kind, name = SERVICE_WORKLOADS[service]
        return await self.get_json(kind, name, "-n", NAMESPACE)

    async def wait_available(self, service: str, within: float = 180.0) -> WorkloadStatus:
        """Until the service's Deployment/DaemonSet has rolled out completely (every replica updated and
        available); otherwise DeployError with :meth:`diagnostics`."""
        deadline = time.monotonic() + within
        status = WorkloadStatus.of(await self.workload(service))
        while not status.complete:
            if time.monotonic() > deadline:
                raise DeployError(f"{service} not available after {within:.0f} s: {status}\n{await self.diagnostics()}")
            await asyncio.sleep(0.5)
            status = WorkloadStatus.of(await self.workload(service))
        return status

    async def diagnostics(self, namespace: str = NAMESPACE, log_lines: int = 40) -> str:
        """Pods with their container statuses, the namespace's events and each container's log tail."""
        out = [await self.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)]
        pods = (await self.get_json("pods", "-n", namespace)).get("items", [])
        for pod in pods:
            name = pod["metadata"]["name"]
            status = pod.get("status", {})
            out.append(f"--- pod {name}: phase {status.get('phase')}, conditions {status.get('conditions')}")
            for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
                out.append(
                    f"    {container['name']}: ready={container.get('ready')} "
                    f"restarts={container.get('restartCount')} state={container.get('state')} "
                    f"last={container.get('lastState')}"
                )
                for previous in (False, True):
                    if previous and not container.get("restartCount"):
                        continue
                    args = ["logs", "-n", namespace, name, "-c", container["name"], f"--tail={log_lines}"]
                    log = await self.run("kubectl", *args, *(["--previous"] if previous else []), check=False)
                    out.append(f"    log{' (previous)' if previous else ''}:\n{log.stdout}{log.stderr}")
        events = await self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
        out.append(f"--- events of {namespace}:\n{events}")
        return "\n".join(out)

    # --- images ----------------------------------------------------------------------------------------------

    async def retag(self, nodes: Sequence[RealNode], component: str, new_tag: str) -> str:
        """The same image under a new tag in every node's containerd (a new release as far as Kubernetes is
        concerned); returns the new reference."""
        name, _ = split_reference(self.images.reference(component))
        reference = f"{name}:{new_tag}"
        for node in nodes:
            argv = node.ctr_argv("images", "tag", "--force", self.images.reference(component), reference)
            await self.run(*argv)
        return reference
