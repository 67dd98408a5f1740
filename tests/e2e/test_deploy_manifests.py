"""The deploy manifests (deploy/kustomize): every overlay renders, and what it renders is deployable.

Rendering uses the real ``kubectl kustomize``. The checks then read the rendered objects: one namespace,
labels and images resolved in one place, hardened containers with probes and resources, Services that
select and target real ports, and flags, environment variables and config files that the services'
own settings loaders accept (so a renamed flag breaks this test, not a rollout). The server-side apply
of the default overlay to the real kube-apiserver is in test_deploy_apply.py.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import posixpath
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from hami_device_plugin.app.settings import PROGRAM
from hami_device_plugin.core.allocation import (
    DEVICE_LIST_ENVVAR,
    DEVICE_LIST_MOUNT_ROOT,
    DEVICE_LIST_MOUNT_SOURCE,
    DEVICE_LIST_VOLUME_MOUNTS,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
NAMESPACE = "hami-system"
OUR_IMAGES = {
    "hami-webhook": "hami_webhook",
    "hami-scheduler-extender": "hami_scheduler_extender",
    "hami-device-plugin": "hami_device_plugin",
    "hami-lib-installer": "hami_lib_installer",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "PriorityClass",
}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "Job"}


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def workloads(docs: tuple[dict[str, Any], ...]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def image_name(image: str) -> str:
    """``localhost/hami-webhook:0.1.0`` -> ``hami-webhook``."""
    return posixpath.basename(image.rsplit(":", 1)[0])


def test_every_overlay_is_found() -> None:
    assert {"default", "default-cert-manager", "webhook", "scheduler", "device-plugin", "lib-installer"} <= set(
        OVERLAYS
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_one_namespace_labels_and_resolved_images(overlay: str) -> None:
    docs = render(overlay)
    assert docs, f"overlays/{overlay} rendered nothing"
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], where
        elif not (doc["kind"] in {"Role", "RoleBinding"} and doc["metadata"]["namespace"] == "kube-system"):
            assert doc["metadata"].get("namespace") == NAMESPACE, where
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "hami", where
    for workload in workloads(docs):
        for container in containers(workload):
            image = container["image"]
            # Set in components/common: a registry path and an explicit tag, never a bare placeholder name.
            assert "/" in image, f"{overlay}: image {image!r} was not resolved by components/common"
            assert ":" in image.rsplit("/", 1)[1], f"{overlay}: image {image!r} has no tag"
            assert not image.endswith(":latest"), image


def test_default_overlay_holds_every_component() -> None:
    docs = render("default")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Namespace", NAMESPACE),
        ("Deployment", "hami-webhook"),
        ("Deployment", "hami-scheduler"),
        ("DaemonSet", "hami-device-plugin"),
        ("DaemonSet", "hami-lib-installer"),
        ("Job", "hami-webhook-certgen-create"),
        ("Job", "hami-webhook-certgen-patch"),
    } <= names
    assert any(d["kind"] == "MutatingWebhookConfiguration" for d in docs)
    scheduler = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hami-scheduler")
    assert [image_name(c["image"]) for c in containers(scheduler)] == ["kube-scheduler", "hami-scheduler-extender"]
    # The device plugin's monitor maps container PIDs to host PIDs (hamicore's limiter needs them): host PID namespace.
    plugin = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "hami-device-plugin")
    assert plugin["spec"]["template"]["spec"].get("hostPID") is True


@pytest.mark.parametrize("overlay", ["webhook", "scheduler", "device-plugin", "lib-installer"])
def test_per_service_overlay_is_a_subset_of_default(overlay: str) -> None:
    default = {(d["kind"], d["metadata"]["name"]) for d in render("default")}
    single = {(d["kind"], d["metadata"]["name"]) for d in render(overlay)}
    assert single <= default, f"overlays/{overlay} has objects the default overlay lacks: {single - default}"
    assert not any(kind == "Namespace" for kind, _ in single)


def test_certificate_components_fill_in_the_webhook_configuration_name() -> None:
    docs = render("default")
    webhook_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    patch_job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "hami-webhook-certgen-patch")
    assert f"--webhook-name={webhook_name}" in containers(patch_job)[0]["args"]
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "hami-webhook-certgen")
    assert role["rules"][0]["resourceNames"] == [webhook_name]
    cm_docs = render("default-cert-manager")
    config = next(d for d in cm_docs if d["kind"] == "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/hami-webhook"
    certificate = next(d for d in cm_docs if d["kind"] == "Certificate" and d["metadata"]["name"] == "hami-webhook")
    service = next(d for d in cm_docs if d["kind"] == "Service" and d["metadata"]["name"] == "hami-webhook")
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    deployment = next(d for d in cm_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hami-webhook")
    secrets = [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert certificate["spec"]["secretName"] in secrets


def test_webhook_configuration_points_at_the_webhook_service() -> None:
    docs = render("default")
    config = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "hami-webhook")
    for hook in config["webhooks"]:
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"]) == ("hami-webhook", NAMESPACE)
        assert ref.get("port", 443) in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", ["default"])
def test_containers_are_hardened_and_sized(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert not pod.get("hostNetwork"), workload["metadata"]["name"]
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert not security.get("privileged"), where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            added = set(security.get("capabilities", {}).get("add", []))
            assert added <= {"DAC_OVERRIDE", "KILL", "SYS_PTRACE"}, f"{where} adds {added}"
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), where
            assert "memory" in container["resources"].get("limits", {}), where
            if workload["kind"] != "Job":
                assert "livenessProbe" in container, where
                assert "readinessProbe" in container, where
        if workload["kind"] != "Job":
            labels = workload["spec"]["template"]["metadata"]["labels"]
            # Our own pods are never sent through our webhook.
            assert labels.get("hami.io/webhook") == "ignore", workload["metadata"]["name"]


def test_services_select_pods_and_target_named_ports() -> None:
    docs = render("default")
    pods = [(w["spec"]["template"]["metadata"]["labels"], containers(w)) for w in workloads(docs)]
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matching = [ctrs for labels, ctrs in pods if selector.items() <= labels.items()]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        port_names = {p.get("name") for ctrs in matching for c in ctrs for p in c.get("ports", [])}
        port_numbers = {p["containerPort"] for ctrs in matching for c in ctrs for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in port_names | port_numbers, f"Service {service['metadata']['name']}: no port {target!r}"


def test_probes_use_declared_ports() -> None:
    for workload in workloads(render("default")):
        for container in containers(workload):
            declared = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe_name in ("livenessProbe", "readinessProbe"):
                http = container.get(probe_name, {}).get("httpGet")
                if http:
                    assert http["port"] in declared, f"{workload['metadata']['name']}/{container['name']} {probe_name}"


def test_pods_use_their_own_service_accounts_and_rbac_binds_them() -> None:
    docs = render("default")
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for workload in workloads(docs):
        account = workload["spec"]["template"]["spec"].get("serviceAccountName")
        assert account in accounts, f"{workload['metadata']['name']} runs as {account!r}"
    for binding in (d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        for subject in binding["subjects"]:
            assert subject["name"] in accounts, binding["metadata"]["name"]
            assert subject["namespace"] == NAMESPACE, binding["metadata"]["name"]


def test_leader_election_leases_are_granted_where_the_configurations_put_them() -> None:
    docs = render("default")
    scheduler_config = yaml.safe_load(
        next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("hami-scheduler-config"))[
            "data"
        ]["config.yaml"]
    )
    election = scheduler_config["leaderElection"]
    extender = next(
        c
        for w in workloads(docs)
        if w["metadata"]["name"] == "hami-scheduler"
        for c in containers(w)
        if c["name"] == "extender"
    )
    args = dict(a.partition("=")[::2] for a in extender["args"])
    wanted = [(election["resourceNamespace"], election["resourceName"])]
    if "--leader-elect" in args:
        wanted.append((args["--leader-elect-namespace"], args["--leader-elect-name"]))
    bound_roles = {
        (b["metadata"]["namespace"], b["roleRef"]["name"])
        for b in docs
        if b["kind"] == "RoleBinding" and any(s["name"] == "hami-scheduler" for s in b["subjects"])
    }
    for namespace, lease in wanted:
        granted = [
            rule
            for role in docs
            if role["kind"] == "Role" and (role["metadata"]["namespace"], role["metadata"]["name"]) in bound_roles
            if role["metadata"]["namespace"] == namespace
            for rule in role["rules"]
            if "leases" in rule["resources"] and lease in rule.get("resourceNames", [])
        ]
        assert any({"get", "update"} <= set(rule["verbs"]) for rule in granted), (
            f"no Role grants Lease {namespace}/{lease}"
        )


# --- flags, environment and config files against the services' own settings loaders ------------------------


def settings_loader(package: str) -> tuple[Callable[[list[str], dict[str, str]], object], str]:
    """How the service loads its settings (``<package>.app.settings.PROGRAM``, with its fallbacks such as
    NODE_NAME) and its env prefix."""
    program = importlib.import_module(f"{package}.app.settings").PROGRAM
    return (lambda argv, environ: program.load_settings(argv, environ)), program.env_prefix


SETTINGS_CHECKED = {"hami_webhook", "hami_scheduler_extender", "hami_lib_installer", "hami_device_plugin"}


def our_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    for workload in workloads(render("default")):
        for container in containers(workload):
            name = image_name(container["image"])
            if name in OUR_IMAGES and OUR_IMAGES[name] in SETTINGS_CHECKED:
                yield workload, container, OUR_IMAGES[name]


def config_files(
    workload: dict[str, Any],
    container: dict[str, Any],
    tmp: pathlib.Path,
    docs: tuple[dict[str, Any], ...] | None = None,
) -> dict[str, str]:
    """Mounted ConfigMap files of the container (from ``docs``, by default the default overlay's), written under
    ``tmp``: in-container path -> local path."""
    docs = render("default") if docs is None else docs
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    out: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        config_map = next(
            d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
        )
        for key, text in config_map.get("data", {}).items():
            local = tmp / mount["name"] / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(text)
            out[posixpath.join(mount["mountPath"], key)] = str(local)
    return out


def manifest_argv_env(
    workload: dict[str, Any],
    container: dict[str, Any],
    tmp: pathlib.Path,
    docs: tuple[dict[str, Any], ...] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The container's args (mounted ConfigMap files of ``docs`` written under ``tmp``) and env, as its service
    sees them."""
    files = config_files(workload, container, tmp, docs)
    argv = []
    for arg in container.get("args", []):
        flag, sep, value = arg.partition("=")
        if sep and value in files:
            value = files[value]
        argv.append(f"{flag}{sep}{value}")
    # Downward-API values (fieldRef) become placeholders; literal values are taken as they are.
    env = {e["name"]: e.get("value", f"value-from-{e['name'].lower()}") for e in container.get("env", [])}
    return argv, env


CONTAINER_IDS = [f"{w['metadata']['name']}/{c['name']}" for w, c, _ in our_containers()]


@pytest.mark.parametrize(("workload", "container", "package"), list(our_containers()), ids=CONTAINER_IDS)
def test_manifest_flags_env_and_config_are_accepted_by_the_service(
    workload: dict[str, Any], container: dict[str, Any], package: str, tmp_path: pathlib.Path
) -> None:
    load, _prefix = settings_loader(package)
    argv, env = manifest_argv_env(workload, container, tmp_path)
    try:
        settings = load(argv, env)
    except SystemExit as exc:  # argparse refuses an unknown flag or a bad value
        pytest.fail(
            f"{workload['metadata']['name']}/{container['name']}: {package} refused args {argv}: exit {exc.code}"
        )
    assert settings is not None
    for arg in argv:
        if arg.startswith(("--config=", "--hami-device-config=")):
            assert pathlib.Path(arg.partition("=")[2]).is_file(), f"{arg} names no mounted ConfigMap key"


# --- optional components, added to overlays/default the way an operator's overlay adds them ---------------------


def render_default_with(component: str, tmp: pathlib.Path) -> tuple[dict[str, Any], ...]:
    tmp.mkdir(parents=True, exist_ok=True)
    up = os.path.relpath(KUSTOMIZE, tmp)  # kustomize refuses absolute paths
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{up}/overlays/default"],
        "components": [f"{up}/components/{component}"],
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        ["kubectl", "kustomize", str(tmp)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"overlays/default + components/{component} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def plugin_strategies(workload: dict[str, Any], tmp: pathlib.Path) -> frozenset[str]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    argv, env = manifest_argv_env(workload, container, tmp)
    return PROGRAM.load_settings(argv=argv, environ=env).injection().device_list_strategies


def test_device_list_volume_mounts_component_switches_the_device_plugin_only(tmp_path: pathlib.Path) -> None:
    docs = render_default_with("device-list-volume-mounts", tmp_path / "overlay")
    changed = [d for d in docs if d not in render("default")]
    assert [(d["kind"], d["metadata"]["name"]) for d in changed] == [("DaemonSet", "hami-device-plugin")]
    assert len(docs) == len(render("default"))
    (plugin,) = changed
    default_plugin = next(d for d in workloads(render("default")) if d["metadata"]["name"] == "hami-device-plugin")
    # The default stays envvar (compatible with every toolkit configuration); the component's flag is accepted.
    assert plugin_strategies(default_plugin, tmp_path / "default") == frozenset({DEVICE_LIST_ENVVAR})
    assert plugin_strategies(plugin, tmp_path / "component") == frozenset({DEVICE_LIST_VOLUME_MOUNTS})
    # The plugin's own NVML comes through the same toolkit path: /dev/null mounted as device "all", read-only.
    pod_spec = plugin["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    (container,) = pod_spec["containers"]
    device_mounts = [m for m in container["volumeMounts"] if m["mountPath"].startswith(DEVICE_LIST_MOUNT_ROOT + "/")]
    assert [(m["mountPath"], m.get("readOnly"), volumes[m["name"]]["hostPath"]) for m in device_mounts] == [
        (f"{DEVICE_LIST_MOUNT_ROOT}/all", True, {"path": DEVICE_LIST_MOUNT_SOURCE, "type": "CharDevice"})
    ]


def test_the_placement_policy_guards_exactly_the_placement_annotations_the_stack_writes() -> None:
    """The ValidatingAdmissionPolicy names the keys in CEL; they must not drift from hami_shared.names (and the
    webhook's tenant guard, which refuses the same keys on create)."""
    from hami_shared import names
    from hami_webhook.core.guard import PLACEMENT_ANNOTATIONS

    policy = next(d for d in render("default") if d["kind"] == "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    in_policy = set(re.findall(r"'([^']+)'", variables["placementKeys"]))
    written_by_the_stack = {
        value
        for value in vars(names).values()
        if isinstance(value, str) and value.startswith(("hami.io/vgpu-", "hami.io/bind-"))
    }
    assert in_policy == written_by_the_stack == set(PLACEMENT_ANNOTATIONS)
    # Node annotations are guarded by prefix; every one the device plugin writes carries it.
    node_keys = (names.NODE_REGISTER, names.NODE_HANDSHAKE, names.NODE_SCORE, names.NODE_TOPOLOGY)
    assert all(key.startswith("hami.io/node-") for key in node_keys)
    assert "k.startsWith('hami.io/node-')" in variables["changedNodeKeys"]


def test_device_plugin_reaches_the_kubelets_pod_resources_socket_read_only(tmp_path: pathlib.Path) -> None:
    """The plugin's --pod-resources-socket (its default, as the DaemonSet leaves it) lies in a read-only hostPath
    mount of the kubelet's pod-resources directory at the same path: connecting to a unix socket needs no write."""
    plugin = next(d for d in workloads(render("default")) if d["metadata"]["name"] == "hami-device-plugin")
    pod_spec = plugin["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    load, _prefix = settings_loader("hami_device_plugin")
    settings: Any = load(*manifest_argv_env(plugin, container, tmp_path))
    socket = pathlib.PurePosixPath(str(settings.pod_resources_socket))
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    covering = [m for m in container["volumeMounts"] if socket.parent == pathlib.PurePosixPath(m["mountPath"])]
    assert [(m.get("readOnly"), volumes[m["name"]]["hostPath"]) for m in covering] == [
        (True, {"path": str(socket.parent), "type": "Directory"})
    ]


def test_mig_node_component_adds_exactly_the_documented_privileges(tmp_path: pathlib.Path) -> None:
    """components/mig-node changes the device plugin's DaemonSet by CAP_SYS_ADMIN and the two MIG capability
    requests to the NVIDIA toolkit, nothing else, and puts its example node in dynamic MIG mode; deploy/README.md
    lists exactly those privileges for it."""
    from hami_device_plugin.app.settings import device_config_for_node

    docs = render_default_with("mig-node", tmp_path / "overlay")
    default = render("default")
    changed = sorted((d["kind"], d["metadata"]["name"]) for d in docs if d not in default)
    assert changed == [("ConfigMap", "hami-device-plugin-node-config"), ("DaemonSet", "hami-device-plugin")]
    assert len(docs) == len(default)
    plugin = next(d for d in workloads(docs) if d["metadata"]["name"] == "hami-device-plugin")
    before = next(d for d in workloads(default) if d["metadata"]["name"] == "hami-device-plugin")
    (container,) = plugin["spec"]["template"]["spec"]["containers"]
    (container_before,) = before["spec"]["template"]["spec"]["containers"]
    security, security_before = container["securityContext"], container_before["securityContext"]
    added = set(security["capabilities"]["add"]) - set(security_before["capabilities"]["add"])
    assert added == {"SYS_ADMIN"}
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("privileged")
    # allowPrivilegeEscalation is true for a container with CAP_SYS_ADMIN whatever the manifest says (Kubernetes'
    # own rule); the component says so instead of a false that only passes validation by spelling.
    assert security_before["allowPrivilegeEscalation"] is False
    assert security["allowPrivilegeEscalation"] is True
    kept = ("capabilities", "allowPrivilegeEscalation")
    assert {k: v for k, v in security.items() if k not in kept} == {
        k: v for k, v in security_before.items() if k not in kept
    }
    assert security["readOnlyRootFilesystem"] is True
    env = [e for e in container["env"] if e not in container_before["env"]]
    assert env == [
        {"name": "NVIDIA_MIG_CONFIG_DEVICES", "value": "all"},
        {"name": "NVIDIA_MIG_MONITOR_DEVICES", "value": "all"},
    ]
    # Nothing else of the pod changes: no hostPath, no host namespace, no other mount.
    strip = ("env", "securityContext")
    assert {k: v for k, v in container.items() if k not in strip} == {
        k: v for k, v in container_before.items() if k not in strip
    }
    pod_spec = {k: v for k, v in plugin["spec"]["template"]["spec"].items() if k != "containers"}
    assert pod_spec == {k: v for k, v in before["spec"]["template"]["spec"].items() if k != "containers"}

    # The plugin reads the component's node file: its example node is in MIG mode, any other node is not.
    argv, environ = manifest_argv_env(plugin, container, tmp_path / "files", docs)
    for node, mode in (("example-mig-node", "mig"), ("another-node", "hami-core")):
        settings = PROGRAM.load_settings(argv=argv, environ=environ | {"NODE_NAME": node})
        assert device_config_for_node(settings).mode == mode, node

    # deploy/README.md's privileges table has a row per privilege the component adds, and no other.
    readme = (ROOT / "deploy" / "README.md").read_text()
    rows = [
        line for line in readme.splitlines() if line.startswith("| device plugin (only with `components/mig-node`)")
    ]
    documented = sorted(re.findall(r"`(CAP_[A-Z_]+|NVIDIA_MIG_[A-Z_]+=all)`", " ".join(r.split("|")[2] for r in rows)))
    assert documented == ["CAP_SYS_ADMIN", "NVIDIA_MIG_CONFIG_DEVICES=all", "NVIDIA_MIG_MONITOR_DEVICES=all"]


def test_overwrite_env_component_hides_gpus_from_pods_the_gpu_webhook_is_not_sent(tmp_path: pathlib.Path) -> None:
    """components/overwrite-env: the webhook's --overwrite-env on, and a second, fail-open mutating webhook for the
    pods that ask for no nvidia.com/ resource (disjoint from the GPU webhook's, whose names all carry the prefix),
    with no objectSelector (the ignore label is the pod author's) and kube-system skipped as by the guard."""
    docs = render_default_with("overwrite-env", tmp_path / "overlay")
    changed = [d for d in docs if d not in render("default")]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in changed) == [
        ("Deployment", "hami-webhook"),
        ("MutatingWebhookConfiguration", "hami-webhook"),
    ]
    webhook = next(d for d in changed if d["kind"] == "Deployment")
    (container,) = webhook["spec"]["template"]["spec"]["containers"]
    load, _prefix = settings_loader("hami_webhook")
    settings: Any = load(*manifest_argv_env(webhook, container, tmp_path))
    assert settings.policy().overwrite_env
    gpu, hide = next(d for d in changed if d["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    assert (gpu["failurePolicy"], hide["failurePolicy"]) == ("Fail", "Ignore")
    assert hide["clientConfig"] == gpu["clientConfig"]
    for key in ("rules", "admissionReviewVersions", "sideEffects"):
        assert hide[key] == gpu[key], key
    assert "objectSelector" not in hide
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]} in hide[
        "namespaceSelector"
    ]["matchExpressions"]
    (asks,) = gpu["matchConditions"]
    (asks_none,) = hide["matchConditions"]
    # Every resource the GPU webhook is sent for carries the prefix the second one excludes: no pod reaches both.
    names = re.findall(r"'([^']+)'", asks["expression"])
    assert names
    assert all(name.startswith("nvidia.com/") for name in names)
    assert asks_none["expression"].lstrip().startswith("![")
    assert asks_none["expression"].count("r.startsWith('nvidia.com/')") == 2
