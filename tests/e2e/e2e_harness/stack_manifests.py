"""The deploy manifests as HamiStack (tests/e2e/hami_stack.py) uses them: ``kubectl`` against the cluster,
the rendered default overlay, one rendered container (its arguments, ServiceAccount and the ConfigMap files it
mounts), and the argument rewriting that turns a container's command line into a local process's (addresses,
paths and the kubeconfig changed, everything else as shipped)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e_harness.stack_processes import ROOT, StackError

KUSTOMIZE = ROOT / "deploy" / "kustomize"
NAMESPACE = "hami-system"


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


def write_config_files(rendered: RenderedContainer, directory: Path) -> dict[str, str]:
    """Write the container's ConfigMap files locally; return in-container path -> local path."""
    directory.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for container_path, text in rendered.config_files.items():
        local = directory / container_path.strip("/").replace("/", "_")
        local.write_text(text)
        mapping[container_path] = str(local)
    return mapping


def localize(args: list[str], files: Mapping[str, str]) -> list[str]:
    """``args`` with every value that names an in-container ConfigMap file replaced by its local copy."""
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        out.append(f"{flag}{sep}{files.get(value, value)}")
    return out


def config_map(docs: Sequence[dict[str, Any]], name_prefix: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(name_prefix))
