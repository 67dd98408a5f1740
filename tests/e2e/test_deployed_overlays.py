"""The operator overlays the deployed-stack tests apply (e2e_harness.deployed_stack), rendered with kubectl's
kustomize: they name the repository's bases and components/common, set the e2e images' tags and append
arguments; and the rollout status decision. No cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_harness.deployed_stack import (
    SERVICE_BASES,
    OverlaySettings,
    WorkloadStatus,
    overlay_kustomization,
    split_reference,
)

REFERENCES = {
    "webhook": "localhost/hami-webhook:0.1.0",
    "scheduler-extender": "localhost/hami-scheduler-extender:0.1.0",
    "device-plugin": "localhost/hami-device-plugin:0.1.0",
    "lib-installer": "localhost/hami-lib-installer:0.1.0",
    "kube-scheduler": "registry.k8s.io/kube-scheduler:v1.34.4",
}


def render(service: str, settings: OverlaySettings, directory: Path) -> list[dict[str, Any]]:
    kustomization = overlay_kustomization(service, directory, REFERENCES, settings)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def images_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        c["name"]: c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }


@pytest.mark.parametrize("service", sorted(SERVICE_BASES))
def test_each_overlay_renders_its_bases_with_the_e2e_images(service: str, tmp_path: Path) -> None:
    docs = render(service, OverlaySettings(), tmp_path)
    assert docs
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hami" for d in docs)  # components/common
    assert set(images_of(docs).values()) <= set(REFERENCES.values())


def test_new_tag_and_appended_arguments(tmp_path: Path) -> None:
    settings = OverlaySettings(tags={"lib-installer": "e2e-2"}, extra_args=("--lib-version=e2e.2",))
    docs = render("lib-installer", settings, tmp_path)
    [daemonset] = [d for d in docs if d["kind"] == "DaemonSet"]
    [container] = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/hami-lib-installer:e2e-2"
    assert container["args"][-1] == "--lib-version=e2e.2"
    assert "--mode=daemon" in container["args"]


def test_only_services_with_a_workload_take_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no workload"):
        overlay_kustomization("namespace", tmp_path, REFERENCES, OverlaySettings(extra_args=("--x",)))
    with pytest.raises(ValueError, match="unknown service"):
        overlay_kustomization("nope", tmp_path, REFERENCES, OverlaySettings())


def test_split_reference() -> None:
    assert split_reference("localhost:5000/hami/x:1.2") == ("localhost:5000/hami/x", "1.2")
    for bad in ("localhost:5000/hami/x", "x", ":1"):
        with pytest.raises(ValueError, match="not a name:tag"):
            split_reference(bad)


def workload(kind: str, generation: int, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "w", "generation": generation}, "spec": spec, "status": status}


def test_rollout_is_complete_only_when_every_replica_is_new_and_available() -> None:
    done = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    assert WorkloadStatus.of(workload("Deployment", 2, {"replicas": 2}, done)).complete
    # Not yet observed by the controller, or the surge pod's old sibling still counted.
    assert not WorkloadStatus.of(workload("Deployment", 3, {"replicas": 2}, done)).complete
    assert not WorkloadStatus.of(workload("Deployment", 2, {"replicas": 2}, done | {"replicas": 3})).complete
    daemonset = {"observedGeneration": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1}
    assert not WorkloadStatus.of(workload("DaemonSet", 1, {}, daemonset | {"numberAvailable": 0})).complete
    assert WorkloadStatus.of(workload("DaemonSet", 1, {}, daemonset | {"numberAvailable": 1})).complete
    # No node to run on is not "rolled out".
    assert not WorkloadStatus.of(workload("DaemonSet", 1, {}, {"observedGeneration": 1})).complete
