"""The operator overlays of the stack as deployed (e2e_harness.deployed_stack applies them) and the rollout status
decision, both pure: per service the bases it names, its workloads and the stack images its manifests reference;
the kustomization.yaml of an overlay (the repository's bases by relative path, ``components/common``, the e2e
images' tags, arguments appended to the workload's first container); whether a Deployment or DaemonSet has
rolled out."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KUSTOMIZE = Path(__file__).resolve().parents[3] / "deploy" / "kustomize"

# Per service: the bases its overlay names (docs/deploy.md "Rolling out one component"), its workloads and the
# stack image components (e2e_harness.stack_images.COMPONENTS) whose references its manifests name.
SERVICE_BASES: dict[str, tuple[str, ...]] = {
    "namespace": ("base/namespace",),
    "webhook": ("base/webhook", "base/admission-policy"),
    "scheduler": ("base/scheduler",),
    "device-plugin": ("base/device-plugin",),
    "lib-installer": ("base/lib-installer",),
}
SERVICE_WORKLOADS: dict[str, tuple[str, str]] = {
    "webhook": ("deployment", "hami-webhook"),
    "scheduler": ("deployment", "hami-scheduler"),
    "device-plugin": ("daemonset", "hami-device-plugin"),
    "lib-installer": ("daemonset", "hami-lib-installer"),
}
SERVICE_IMAGES: dict[str, tuple[str, ...]] = {
    "namespace": (),
    "webhook": ("webhook",),
    "scheduler": ("kube-scheduler", "scheduler-extender"),
    "device-plugin": ("device-plugin",),
    "lib-installer": ("lib-installer",),
}
# Install order: the namespace first; the webhook before anything whose pods it admits (its configurations have
# failurePolicy Fail; the stack's own pods are in hami-system, which the guard skips).
INSTALL_ORDER = ("namespace", "webhook", "scheduler", "lib-installer", "device-plugin")


def split_reference(reference: str) -> tuple[str, str]:
    """``name:tag`` -> (name, tag); the tag is after the last ``:`` of the last path element."""
    name, _, tag = reference.rpartition(":")
    if not name or not tag or "/" in tag:
        raise ValueError(f"{reference!r} is not a name:tag image reference")
    return name, tag


@dataclass(frozen=True)
class OverlaySettings:
    """What an operator's overlay of one service changes: image tags per stack component (default: the e2e
    images' own) and arguments appended to the workload's first container (e.g. the lib installer's
    ``--lib-version``; a repeated flag's last value wins)."""

    tags: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()


# The overlay that changes nothing: the e2e images' own tags, the shipped arguments.
AS_BUILT = OverlaySettings()


def overlay_kustomization(
    service: str, overlay_dir: Path, references: Mapping[str, str], settings: OverlaySettings
) -> dict[str, Any]:
    """The kustomization.yaml of an operator overlay of ``service`` in ``overlay_dir`` (pure)."""
    if service not in SERVICE_BASES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICE_BASES)}")
    relative = Path(os.path.relpath(KUSTOMIZE, overlay_dir))
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize refuses absolute resource paths: the overlay names the repository's bases relative to itself.
        "resources": [str(relative / base) for base in SERVICE_BASES[service]],
        "components": [str(relative / "components" / "common")],
    }
    images = []
    for component in SERVICE_IMAGES[service]:
        name, tag = split_reference(references[component])
        # Matched against the name components/common already rewrote the placeholder to (the overlay's own
        # images transformer runs after its components').
        images.append({"name": name, "newTag": settings.tags.get(component, tag)})
    if images:
        kustomization["images"] = images
    if settings.extra_args:
        if service not in SERVICE_WORKLOADS:
            raise ValueError(f"{service} has no workload to give arguments to")
        kind, name = SERVICE_WORKLOADS[service]
        operations = [
            {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
            for arg in settings.extra_args
        ]
        kustomization["patches"] = [
            {
                "target": {"kind": {"deployment": "Deployment", "daemonset": "DaemonSet"}[kind], "name": name},
                "patch": json.dumps(operations),
            }
        ]
    return kustomization


@dataclass(frozen=True)
class WorkloadStatus:
    """Where a Deployment or DaemonSet is in its rollout (from its status; pure)."""

    kind: str
    name: str
    desired: int
    updated: int
    available: int
    observed: bool

    @property
    def complete(self) -> bool:
        return self.observed and self.desired > 0 and self.updated == self.desired == self.available

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> WorkloadStatus:
        kind = str(obj["kind"]).lower()
        status = obj.get("status") or {}
        observed = status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
        if kind == "deployment":
            desired = int(obj["spec"].get("replicas", 1))
            updated = int(status.get("updatedReplicas", 0))
            available = int(status.get("availableReplicas", 0))
            # Old pods still running (surge) mean the rollout is not done.
            if int(status.get("replicas", 0)) != desired:
                available = min(available, desired - 1)
        else:
            desired = int(status.get("desiredNumberScheduled", 0))
            updated = int(status.get("updatedNumberScheduled", 0))
            available = int(status.get("numberAvailable", 0))
        return cls(kind, obj["metadata"]["name"], desired, updated, available, observed)
