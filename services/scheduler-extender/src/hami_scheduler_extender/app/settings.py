"""Settings of hami-scheduler-extender: flags > env (HAMI_EXTENDER_*) > --config file > HAMi's device-config.yaml
(``--hami-device-config``; :data:`HAMI_KEYS`) > defaults."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from typing import Final

from hami_shared import hami_config
from hami_shared.config import parse_host_port, setting
from hami_shared.errors import MalformedInputError
from hami_shared.logging import LEVELS
from hami_shared.mig import DEFAULT_KNOWN_GEOMETRIES, MigConfigError, ModelGeometries, parse_known_geometries_text
from hami_shared.names import DEFAULT_RESOURCE_NAMES, SCHEDULER_NAME, ResourceNames
from hami_shared.service.program import Program

from hami_scheduler_extender.core.events import EventLimits
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.policy import GpuPolicy, parse_gpu_policy
from hami_scheduler_extender.core.request import RequestDefaults

ENV_PREFIX: Final = "HAMI_EXTENDER"
_DESCRIPTION: Final = (
    "GPU-aware kube-scheduler extender (filter, prioritize, bind), HAMi-compatible. "
    "Settings: flags > environment (HAMI_EXTENDER_<NAME>) > --config file > --hami-device-config > defaults."
)
_POLICIES = tuple(p.value for p in Policy)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: tuple[str, int] = setting(
        ("127.0.0.1", 8888),
        help="HOST:PORT of the extender verbs (filter, prioritize, bind); loopback: kube-scheduler runs in the same "
        "pod; any other address needs tls-cert-file, tls-key-file and client-ca-file (HTTPS, client certificates)",
        parse=parse_host_port,
    )
    tls_cert_file: pathlib.Path | None = setting(
        None,
        help="PEM server certificate (chain) for HTTPS on the verbs listener; needs tls-key-file and client-ca-file",
    )
    tls_key_file: pathlib.Path | None = setting(None, help="PEM private key of tls-cert-file")
    client_ca_file: pathlib.Path | None = setting(
        None, help="PEM CA bundle: callers of the verbs must present a client certificate it signed (kube-scheduler)"
    )
    probe_listen: tuple[str, int] = setting(
        ("0.0.0.0", 8889),
        help="HOST:PORT of /healthz and /readyz for the kubelet (their answers carry no cluster data)",
        parse=parse_host_port,
    )
    metrics_listen: tuple[str, int] = setting(
        ("127.0.0.1", 9395),
        help="HOST:PORT of /metrics (and the probes); loopback by default because the metrics name pods, "
        "namespaces and GPU UUIDs: open it (e.g. 0.0.0.0:9395) only behind a NetworkPolicy",
        parse=parse_host_port,
    )
    kubeconfig: pathlib.Path | None = setting(
        None, help="kubeconfig file; empty = in-cluster service account (then $KUBECONFIG / ~/.kube/config)"
    )
    scheduler_name: str = setting(
        SCHEDULER_NAME,
        help="the kube-scheduler profile (spec.schedulerName) this extender places GPU pods for; only pods of it "
        "(or of extra-scheduler-names) bound to their annotated node count as holding GPUs; also the source of "
        "pod Events",
    )
    extra_scheduler_names: tuple[str, ...] = setting(
        (), help="further kube-scheduler profiles (comma-separated) whose GPU pods this extender places"
    )
    node_scheduler_policy: str = setting("binpack", help="default node policy", choices=_POLICIES)
    gpu_scheduler_policy: str = setting(
        "spread",
        help="default GPU policy: a HAMi chain of binpack, spread, numa, mutex, topology-aware (comma-separated, "
        "e.g. 'binpack,topology-aware'); a pod's hami.io/gpu-scheduler-policy replaces it",
    )
    hami_device_config: pathlib.Path | None = setting(
        None,
        help="HAMi's device-config.yaml (the hami-scheduler-device ConfigMap, HAMi's --device-config-file): its "
        "nvidia resource names and request defaults set those settings' defaults; our flags, variables and config "
        "file override it",
    )
    resource_count: str = setting(DEFAULT_RESOURCE_NAMES.count, help="resource name: number of GPUs")
    resource_memory: str = setting(DEFAULT_RESOURCE_NAMES.memory, help="resource name: MiB per GPU")
    resource_memory_percentage: str = setting(
        DEFAULT_RESOURCE_NAMES.memory_percentage, help="resource name: percent of GPU memory"
    )
    resource_cores: str = setting(DEFAULT_RESOURCE_NAMES.cores, help="resource name: percent of GPU cores")
    resource_priority: str = setting(DEFAULT_RESOURCE_NAMES.priority, help="resource name: task priority")
    default_memory: int = setting(0, help="MiB per GPU when a container gives neither memory nor percentage (0 = all)")
    default_cores: int = setting(0, help="cores per GPU when a container gives none")
    default_gpu_num: int = setting(1, help="GPUs per container when only memory or cores are given")
    memory_factor: int = setting(1, help="multiplier applied to requested gpumem")
    success_events: bool = setting(
        True,
        help="also record FilteringSucceed and BindingSucceed Events, as HAMi does (failures are always recorded); "
        "--no-success-events saves up to two API writes per pod (the end-to-end rate, README), and kube-scheduler's "
        "own Scheduled event already names the node",
    )
    filter_best_nodes: int = setting(
        1,
        help="filter answers only the N fitting nodes prioritize would score highest (1: the best one, as HAMi's "
        "filter does; kube-scheduler then skips its scoring and needs no prioritizeVerb: a round trip less per pod); "
        "0: every fitting node, with prioritizeVerb in kube-scheduler's configuration so that its in-tree scores "
        "and ours choose together (README, Throughput)",
    )
    event_rate: float = setting(
        10.0, help="most Events per second of each reason (after event-burst); the rest are counted, not written"
    )
    event_burst: int = setting(100, help="Events of one reason that may be written at once before event-rate")
    event_pod_interval: float = setting(
        60.0, help="seconds between two Events of the same reason about the same pod (its retries are not news)"
    )
    vgpu_node_label: bool = setting(
        True,
        help="label each pod hami.io/vgpu-node=<node> as HAMi does (HAMi's vGPU monitor selects its pods by it): "
        "carried by the Binding where kube-apiserver copies Binding labels (PodTopologyLabelsAdmission), else one "
        "queued API write per pod once its device plugin reports bind-phase=success and has not set it; off: the "
        "annotation alone",
    )
    label_writes_per_second: float = setting(
        50.0,
        help="most hami.io/vgpu-node label patches per second (after label-write-burst): a first start on pods placed "
        "without the label writes them at this pace, oldest first, not all at once",
    )
    label_write_burst: int = setting(100, help="label patches that may go at once before label-writes-per-second")
    leader_elect: bool = setting(False, help="take part in Lease leader election; only the leader answers verbs")
    leader_elect_namespace: str = setting("kube-system", help="namespace of the leader Lease")
    leader_elect_name: str = setting("hami-scheduler-extender", help="name of the leader Lease")
    leader_elect_identity: str = setting("", help="identity in the Lease (default: hostname + random suffix)")
    lease_duration: float = setting(15.0, help="seconds a Lease is valid without renewal")
    renew_interval: float = setting(5.0, help="seconds between Lease renewals / acquisition attempts")
    assume_ttl: float = setting(300.0, help="seconds after which an unconfirmed reservation is dropped")
    max_pending_holds: int = setting(
        10_000,
        help="most reservations awaiting confirmation by the pod watch; when full, those older than assume-ttl "
        "are dropped and, if none is, further binds are refused with a message saying so",
    )
    legacy_metrics: bool = setting(
        False,
        help="also export HAMi's metric names from before v2.9 (GPUDeviceMemoryLimit, nodeGPUOverview, "
        "vGPUMemoryAllocated, ...; HAMi's --legacy-metrics) beside the current ones (docs/metrics.md)",
    )
    resource_quotas: bool = setting(
        True,
        help="enforce HAMi's GPU ResourceQuota items (limits.<resource-memory>, limits.<resource-cores>) in filter "
        "and bind; needs list/watch on resourcequotas (deploy/README.md); off: quotas are neither watched nor "
        "enforced, the quota metrics still show usage per namespace",
    )
    mig_geometries: str = setting(
        "",
        help="HAMi's knownMigGeometries (the hami-scheduler-device ConfigMap key) as YAML or JSON text: a list of "
        "{models, allowedGeometries}, each geometry a list of {name, memory, count}; a MIG card takes the first entry "
        "one of whose models is a substring of its type; empty = the defaults (A30, A100 40/80 GB, H100 80/94/96 GB, "
        "H200; docs/mig.md)",
        metavar="YAML",
    )
    log_level: str = setting("info", help="log level", choices=LEVELS)

    def __post_init__(self) -> None:
        self.gpu_policy_chain()
        self.allowed_mig_geometries()
        self.resource_names()
        self.request_defaults()
        self.event_limits()
        if self.renew_interval <= 0 or self.lease_duration <= self.renew_interval:
            raise ValueError("lease-duration must be greater than renew-interval, and both positive")
        if self.assume_ttl <= 0:
            raise ValueError("assume-ttl must be positive")
        if self.filter_best_nodes < 0:
            raise ValueError("filter-best-nodes must be 0 (every fitting node) or a positive number of nodes")
        if self.max_pending_holds < 1:
            raise ValueError("max-pending-holds must be at least 1")
        if not self.label_writes_per_second > 0 or self.label_write_burst < 1:
            raise ValueError("label-writes-per-second must be positive and label-write-burst at least 1")
        self._check_listeners()

    def gpu_policy_chain(self) -> GpuPolicy:
        """The default GPU policy chain (core.policy); ValueError when it names no known policy."""
        try:
            return parse_gpu_policy(self.gpu_scheduler_policy, key="gpu-scheduler-policy")
        except MalformedInputError as exc:
            raise ValueError(str(exc)) from exc

    def scheduler_names(self) -> frozenset[str]:
        return frozenset({self.scheduler_name, *self.extra_scheduler_names})

    def tls_files(self) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path] | None:
        """(certificate, key, client CA) when the verbs are served over HTTPS."""
        if self.tls_cert_file and self.tls_key_file and self.client_ca_file:
            return self.tls_cert_file, self.tls_key_file, self.client_ca_file
        return None

    def _check_listeners(self) -> None:
        given = [f for f in ("tls_cert_file", "tls_key_file", "client_ca_file") if getattr(self, f) is not None]
        if given and len(given) != 3:
            missing = sorted({"tls_cert_file", "tls_key_file", "client_ca_file"} - set(given))
            raise ValueError(
                f"HTTPS for the verbs needs all of tls-cert-file, tls-key-file and client-ca-file; "
                f"missing: {', '.join(m.replace('_', '-') for m in missing)}"
            )
        host = self.listen[0]
        if not given and not is_loopback(host):
            raise ValueError(
                f"listen={host}:{self.listen[1]} is not a loopback address: anyone who reaches it could bind pods and "
                "take GPUs. Keep the verbs on 127.0.0.1 (kube-scheduler runs in the same pod) or set tls-cert-file, "
                "tls-key-file and client-ca-file to require HTTPS with client certificates"
            )
        addresses = {"listen": self.listen, "probe-listen": self.probe_listen, "metrics-listen": self.metrics_listen}
        ports = [address[1] for address in addresses.values() if address[1] != 0]
        if len(ports) != len(set(ports)):
            shown = ", ".join(f"{k}={h}:{p}" for k, (h, p) in addresses.items())
            raise ValueError(f"listen, probe-listen and metrics-listen need different ports ({shown})")

    def known_mig_geometries(self) -> tuple[ModelGeometries, ...]:
        """HAMi's ``knownMigGeometries`` of ``--hami-device-config`` (checked at load; empty without the file)."""
        path = self.hami_device_config
        if path is None or not path.exists():
            return ()
        return hami_config.read_device_config(path).known_mig_geometries

    def event_limits(self) -> EventLimits:
        return EventLimits(pod_interval=self.event_pod_interval, rate=self.event_rate, burst=self.event_burst)

    def allowed_mig_geometries(self) -> tuple[ModelGeometries, ...]:
        """The MIG geometries per model: ``mig-geometries`` parsed and checked (ValueError naming the bad key), else
        HAMi's ``knownMigGeometries`` of ``--hami-device-config``, else the defaults
        (``hami_shared.mig.DEFAULT_KNOWN_GEOMETRIES``)."""
        if not self.mig_geometries.strip():
            return self.known_mig_geometries() or DEFAULT_KNOWN_GEOMETRIES
        try:
            return parse_known_geometries_text(self.mig_geometries)
        except MigConfigError as exc:
            raise ValueError(f"mig-geometries: {exc}") from None

    def resource_names(self) -> ResourceNames:
        return ResourceNames(
            count=self.resource_count,
            memory=self.resource_memory,
            memory_percentage=self.resource_memory_percentage,
            cores=self.resource_cores,
            priority=self.resource_priority,
        )

    def request_defaults(self) -> RequestDefaults:
        return RequestDefaults(
            default_memory=self.default_memory,
            default_cores=self.default_cores,
            default_gpu_num=self.default_gpu_num,
            memory_factor=self.memory_factor,
        )


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


HAMI_KEYS: Final = {
    "resourceCountName": "resource_count",
    "resourceMemoryName": "resource_memory",
    "resourceMemoryPercentageName": "resource_memory_percentage",
    "resourceCoreName": "resource_cores",
    "resourcePriorityName": "resource_priority",
    "defaultMemory": "default_memory",
    "defaultCores": "default_cores",
    "defaultGPUNum": "default_gpu_num",
    "memoryFactor": "memory_factor",
}
"""The keys of HAMi's ``nvidia:`` section the extender reads (as HAMi's scheduler does), and the settings they set."""

PROGRAM: Final = Program(
    name="hami-scheduler-extender",
    settings=Settings,
    env_prefix=ENV_PREFIX,
    description=_DESCRIPTION,
    underlay=hami_config.underlay("hami_device_config", HAMI_KEYS),
    warnings=hami_config.warnings_of("hami_device_config"),
)
