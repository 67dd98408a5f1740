"""The deploy manifests against the real kube-apiserver of the local control plane.

Every overlay passes a server-side dry run, the default overlay is then applied for real (server-side) and
every object is read back; re-applying changes nothing. The cert-manager overlay is checked without its
cert-manager objects, whose CRDs this cluster does not have.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml
from e2e_harness.cluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
SINGLE_SERVICE_OVERLAYS = ["webhook", "scheduler", "device-plugin", "lib-installer"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster.start(tmp_path_factory.mktemp("deploy-apply") / "cluster")
    try:
        yield local
    finally:
        assert local.stop() == 0


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"kubectl failed ({result.returncode}):\n{result.stderr}\n{result.stdout}"
    return result.stdout


@pytest.fixture(scope="module")
def namespace(cluster: LocalCluster) -> str:
    # Namespaced objects cannot be dry-run before their namespace exists; the namespace base is applied first.
    ok(kubectl(cluster, "apply", "--server-side", "-k", str(KUSTOMIZE / "base" / "namespace")))
    return "hami-system"


def test_default_overlay_passes_server_side_dry_run(cluster: LocalCluster, namespace: str) -> None:
    out = ok(
        kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-k", str(KUSTOMIZE / "overlays" / "default"))
    )
    assert out.count("(server dry run)") == len(render("default"))


def test_default_overlay_applies_and_every_object_reads_back(cluster: LocalCluster, namespace: str) -> None:
    out = ok(kubectl(cluster, "apply", "--server-side", "-k", str(KUSTOMIZE / "overlays" / "default")))
    docs = render("default")
    assert out.count("serverside-applied") == len(docs)
    for doc in docs:
        args = ["get", doc["kind"], doc["metadata"]["name"], "-o", "yaml"]
        if "namespace" in doc["metadata"]:
            args += ["-n", doc["metadata"]["namespace"]]
        live = yaml.safe_load(ok(kubectl(cluster, *args)))
        assert live["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hami"
    # A second apply of the same manifests is a no-op for the server: nothing changes its generation.
    generations = yaml.safe_load(ok(kubectl(cluster, "get", "deployments,daemonsets", "-n", namespace, "-o", "yaml")))
    ok(kubectl(cluster, "apply", "--server-side", "-k", str(KUSTOMIZE / "overlays" / "default")))
    again = yaml.safe_load(ok(kubectl(cluster, "get", "deployments,daemonsets", "-n", namespace, "-o", "yaml")))
    assert [i["metadata"]["generation"] for i in again["items"]] == [
        i["metadata"]["generation"] for i in generations["items"]
    ]


@pytest.mark.parametrize("overlay", SINGLE_SERVICE_OVERLAYS)
def test_single_service_overlay_passes_server_side_dry_run(cluster: LocalCluster, namespace: str, overlay: str) -> None:
    out = ok(
        kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-k", str(KUSTOMIZE / "overlays" / overlay))
    )
    assert out.count("(server dry run)") == len(render(overlay))


# components/mig-node adds SYS_ADMIN (with allowPrivilegeEscalation: true, what Kubernetes takes it as anyway).
@pytest.mark.parametrize("component", ["device-list-volume-mounts", "mig-node", "overwrite-env"])
def test_default_overlay_with_an_optional_component_passes_server_side_dry_run(
    cluster: LocalCluster, namespace: str, tmp_path: pathlib.Path, component: str
) -> None:
    up = os.path.relpath(KUSTOMIZE, tmp_path)  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{up}/overlays/default"],
                "components": [f"{up}/components/{component}"],
            }
        )
    )
    out = ok(kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-k", str(tmp_path)))
    assert out.count("(server dry run)") == len(render("default"))
    assert "daemonset.apps/hami-device-plugin serverside-applied (server dry run)" in out


def test_cert_manager_overlay_without_its_custom_resources_passes_server_side_dry_run(
    cluster: LocalCluster, namespace: str
) -> None:
    docs = [d for d in render("default-cert-manager") if not d["apiVersion"].startswith("cert-manager.io/")]
    assert len(docs) < len(render("default-cert-manager"))
    out = ok(kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(docs)))
    assert out.count("(server dry run)") == len(docs)


# What each ServiceAccount may do once the default overlay is applied: what the service needs, and not more.
ALLOWED = {
    "hami-scheduler": [
        "patch pods",
        "create pods --subresource=binding",
        "watch nodes",
        "create events",
        "get leases/hami-scheduler -n kube-system",
        "list resourcequotas",
        "watch resourcequotas",
    ],
    "hami-device-plugin": ["watch pods", "patch pods", "patch nodes", "create events"],
    "hami-webhook-certgen": [
        "create secrets -n hami-system",
        "get secrets/hami-webhook-tls -n hami-system",
        "patch mutatingwebhookconfigurations/hami-webhook",
        "patch validatingwebhookconfigurations/hami-webhook",
    ],
}
DENIED = {
    # (kube-scheduler's own role lets it delete pods: preemption evicts lower-priority victims.)
    "hami-scheduler": [
        "list secrets",
        "patch nodes",
        "update leases/other -n kube-system",
        "update nodes",
        "update resourcequotas",
        "patch resourcequotas --subresource=status",
    ],
    "hami-device-plugin": [
        "list secrets",
        "delete pods",
        "update pods",
        "create pods --subresource=binding",
        "delete nodes",
        "update nodes",
        "list nodes",
        "patch nodes --subresource=status",
    ],
    "hami-webhook": ["get pods", "list secrets", "create events"],
    "hami-lib-installer": ["get pods", "get nodes", "list secrets"],
    "hami-webhook-certgen": ["list secrets -n hami-system", "get secrets/other -n hami-system", "get pods"],
}


def can_i(cluster: LocalCluster, account: str, check: str) -> bool:
    verb, resource, *rest = check.split()
    result = kubectl(
        cluster, "auth", "can-i", verb, resource, *rest, f"--as=system:serviceaccount:hami-system:{account}"
    )
    return result.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def applied(cluster: LocalCluster, namespace: str) -> None:
    ok(kubectl(cluster, "apply", "--server-side", "-k", str(KUSTOMIZE / "overlays" / "default")))


@pytest.mark.parametrize("account", sorted(set(ALLOWED) | set(DENIED)))
def test_service_accounts_get_what_their_service_needs_and_nothing_more(
    cluster: LocalCluster, applied: None, account: str
) -> None:
    for check in ALLOWED.get(account, []):
        assert can_i(cluster, account, check), f"{account} may not {check}"
    for check in DENIED.get(account, []):
        assert not can_i(cluster, account, check), f"{account} may {check}"


def test_webhook_certificate_script_makes_a_certificate_the_apiserver_accepts(
    cluster: LocalCluster, applied: None, tmp_path: pathlib.Path
) -> None:
    """deploy/scripts/webhook-cert.sh (the no-cert-manager, no-Job path of docs/deploy.md) on the real apiserver."""
    out = tmp_path / "cert"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    result = subprocess.run(
        [str(ROOT / "deploy" / "scripts" / "webhook-cert.sh"), str(out), "--apply"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    secret = json.loads(ok(kubectl(cluster, "get", "secret", "hami-webhook-tls", "-n", "hami-system", "-o", "json")))
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.crt"]) == (out / "tls.crt").read_bytes()
    config = json.loads(ok(kubectl(cluster, "get", "mutatingwebhookconfiguration", "hami-webhook", "-o", "json")))
    ca_bundle = base64.b64encode((out / "ca.crt").read_bytes()).decode()
    assert [w["clientConfig"]["caBundle"] for w in config["webhooks"]] == [ca_bundle] * len(config["webhooks"])

    # The real webhook serves that certificate, and a client that trusts only the CA and checks the name the
    # apiserver checks (<service>.<namespace>.svc) completes the handshake.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    webhook = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "hami-webhook"),
            f"--listen=127.0.0.1:{port}",
            f"--cert-file={out / 'tls.crt'}",
            f"--key-file={out / 'tls.key'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        context = ssl.create_default_context(cafile=str(out / "ca.crt"))
        deadline = time.monotonic() + 60
        while True:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="hami-webhook.hami-system.svc") as tls,
                ):
                    tls.sendall(
                        b"GET /healthz HTTP/1.1\r\nHost: hami-webhook.hami-system.svc\r\nConnection: close\r\n\r\n"
                    )
                    assert tls.recv(64).startswith(b"HTTP/1.1 200")
                    break
            except ConnectionRefusedError:
                assert webhook.poll() is None, webhook.stderr.read() if webhook.stderr else ""
                assert time.monotonic() < deadline, "hami-webhook did not listen within 60 s"
                time.sleep(0.2)
    finally:
        webhook.terminate()
        webhook.communicate(timeout=30)
