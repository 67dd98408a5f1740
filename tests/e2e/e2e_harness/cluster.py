"""The local control plane as a child process: starts tests/e2e/cluster/bin/localcluster (embedded etcd,
kube-apiserver, kube-scheduler and the kube-controller-manager loops a deployed stack needs), waits for its
ready file, hands out credentials, restarts the scheduler with a
new configuration and stops the process cleanly."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = ROOT / "tests" / "e2e" / "cluster" / "bin" / "localcluster"
# The controllers a harness cluster runs unless told otherwise: all of localcluster's but the workload ones. While
# HamiStack stands in for the stack's Deployments and DaemonSets with host processes, those controllers would also
# start the applied manifests' pods (images no node has), and re-create every pod a node's stop deletes. Tests of
# the workload controllers and of the stack as deployed ask for "*".
HARNESS_CONTROLLERS = "*,-deployment,-replicaset,-daemonset"
DEFAULT_SCHEDULER_CONFIG = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"


class ClusterStartError(RuntimeError):
    """The control plane did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class ReadyInfo:
    """What localcluster writes to <data-dir>/ready.json once it serves."""

    pid: int
    apiserver_url: str
    admin_kubeconfig: Path
    scheduler_kubeconfig: Path
    ca_cert: Path
    ca_key: Path
    etcd_url: str

    @classmethod
    def read(cls, path: Path) -> ReadyInfo:
        raw = json.loads(path.read_text())
        return cls(
            pid=int(raw["pid"]),
            apiserver_url=raw["apiserver_url"],
            admin_kubeconfig=Path(raw["admin_kubeconfig"]),
            scheduler_kubeconfig=Path(raw["scheduler_kubeconfig"]),
            ca_cert=Path(raw["ca_cert"]),
            ca_key=Path(raw["ca_key"]),
            etcd_url=raw["etcd_url"],
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalCluster:
    """A running localcluster process. Create with :meth:`start`; always :meth:`stop` it."""

    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, info: ReadyInfo, log_path: Path) -> None:
        self._proc = proc
        self.data_dir = data_dir
        self.info = info
        self.log_path = log_path
        self.scheduler_config_path = data_dir / "scheduler-config.yaml"
        self._credentials_dir = data_dir / "credentials"
        self._credentials_dir.mkdir(exist_ok=True)

    # --- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        binary: Path | None = None,
        scheduler_config: str | None = None,
        timeout: float = 240.0,
        address: str | None = None,
        controllers: str = HARNESS_CONTROLLERS,
    ) -> LocalCluster:
        """``address``: where kube-apiserver listens and what it advertises (default 127.0.0.1); a routable one
        (already on an interface, e.g. :data:`e2e_harness.real_node.CONTROL_PLANE_ADDRESS` inside the e2e
        namespace) also becomes the endpoint of the ``kubernetes`` Service, so pods reach the apiserver.
        ``controllers``: localcluster's ``--controllers`` (kube-controller-manager syntax; localcluster's own default
        is ``*``, this one :data:`HARNESS_CONTROLLERS`)."""
        binary = binary or Path(os.environ.get("LOCALCLUSTER_BIN", DEFAULT_BINARY))
        if not binary.is_file():
            raise ClusterStartError(f"{binary} does not exist: build it with `make localcluster`")
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = data_dir / "scheduler-config.yaml"
        config_path.write_text(scheduler_config or DEFAULT_SCHEDULER_CONFIG)
        log_path = data_dir / "localcluster.log"
        ready = data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        argv = [str(binary), f"--data-dir={data_dir}", f"--scheduler-config={config_path}"]
        if address is not None:
            argv.append(f"--address={address}")
        argv.append(f"--controllers={controllers}")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if proc.poll() is not None:
                raise ClusterStartError(f"localcluster exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                raise ClusterStartError(f"localcluster not ready after {timeout}s:\n{_tail(log_path)}")
            time.sleep(0.2)
        return cls(proc, data_dir, ReadyInfo.read(ready), log_path)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code (0 after a clean shutdown)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    @property
    def api_url(self) -> str:
        return self.info.apiserver_url

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user ``admin`` in ``system:masters``)."""
        return self.info.admin_kubeconfig

    # --- kube-scheduler --------------------------------------------------------------------------------------

    def scheduler_status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads((self.data_dir / "scheduler.json").read_text())
        return status

    def restart_scheduler(self, config_yaml: str | None = None, timeout: float = 90.0) -> None:
        """Replace the KubeSchedulerConfiguration (None: back to the default) and restart kube-scheduler in place.

        ``clientConnection.kubeconfig`` may be left out (the scheduler's own kubeconfig is filled in); leader election
        is always off. Returns once the new scheduler has synced its caches; raises with the scheduler's error
        if the configuration is rejected (the control plane keeps running then, without a scheduler)."""
        before = self.scheduler_status()["generation"]
        self.scheduler_config_path.write_text(config_yaml or DEFAULT_SCHEDULER_CONFIG)
        os.kill(self.info.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            status = self.scheduler_status()
            if status["generation"] > before:
                if not status["running"]:
                    raise RuntimeError(f"kube-scheduler rejected the configuration: {status['error']}")
                return
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"kube-scheduler not restarted after {timeout}s:\n{_tail(self.log_path)}")
            time.sleep(0.2)

    # --- credentials -----------------------------------------------------------------------------------------

    def _write_kubeconfig(self, path: Path, user: str, auth: dict[str, str]) -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.api_url, "certificate-authority": str(self.info.ca_cert)},
                }
            ],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def kubeconfig_for_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig with a client certificate for ``user`` in ``groups``, signed by the cluster CA, so RBAC and
        the Node authorizer see exactly that identity (e.g. ``system:node:<name>`` in ``system:nodes``)."""
        ca_cert = x509.load_pem_x509_certificate(self.info.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.info.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        safe = user.replace(":", "_").replace("/", "_")
        cert_path = self._credentials_dir / f"{safe}.crt"
        key_path = self._credentials_dir / f"{safe}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return self._write_kubeconfig(
            self._credentials_dir / f"{safe}.kubeconfig",
            user,
            {"client-certificate": str(cert_path), "client-key": str(key_path)},
        )

    async def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 24 * 3600
    ) -> Path:
        """A kubeconfig with a bound token for ServiceAccount ``namespace/name`` (TokenRequest API), as a pod of
        that ServiceAccount would get; ``create`` makes the namespace and the ServiceAccount when missing."""
        async with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            if create:
                for call, body in (
                    (core.create_namespace, {"metadata": {"name": namespace}}),
                    (
                        lambda body: core.create_namespaced_service_account(namespace, body),
                        {"metadata": {"name": name}},
                    ),
                ):
                    try:
                        await call(body)
                    except k8s.ApiException as e:
                        if e.status != 409:
                            raise
            token = await core.create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": expiration_seconds}}
            )
        user = f"system:serviceaccount:{namespace}:{name}"
        return self._write_kubeconfig(
            self._credentials_dir / f"sa_{namespace}_{name}.kubeconfig", user, {"token": token.status.token}
        )

    async def kubeconfig_for_pod(
        self, namespace: str, pod: str, *, service_account: str, node: str, expiration_seconds: int = 24 * 3600
    ) -> Path:
        """A kubeconfig with the token a kubelet would mount into pod ``namespace/pod``: the TokenRequest of
        ServiceAccount ``service_account`` bound to the pod. The pod is created first when missing (one container,
        no command, that ServiceAccount, bound to ``node``, whose Node must exist). kube-apiserver puts the pod's
        node into the user's extra (``authentication.kubernetes.io/node-name``), which node-scoped admission rules
        check."""
        async with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            try:
                found = await core.read_namespaced_pod(pod, namespace)
            except k8s.ApiException as e:
                if e.status != 404:
                    raise
                found = await core.create_namespaced_pod(
                    namespace,
                    {
                        "metadata": {"name": pod},
                        "spec": {
                            "nodeName": node,
                            "serviceAccountName": service_account,
                            "containers": [{"name": "stand-in", "image": "registry.local/x:1"}],
                        },
                    },
                )
            token = await core.create_namespaced_service_account_token(
                service_account,
                namespace,
                {
                    "spec": {
                        "expirationSeconds": expiration_seconds,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": found.metadata.uid},
                    }
                },
            )
        user = f"system:serviceaccount:{namespace}:{service_account}"
        return self._write_kubeconfig(
            self._credentials_dir / f"pod_{namespace}_{pod}.kubeconfig", user, {"token": token.status.token}
        )

    @asynccontextmanager
    async def api_client(self, kubeconfig: Path | None = None) -> AsyncIterator[k8s.ApiClient]:
        """A kubernetes-asyncio ApiClient (admin unless ``kubeconfig`` is given), closed on exit."""
        api = await k8s_config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))
        try:
            yield api
        finally:
            await api.close()
