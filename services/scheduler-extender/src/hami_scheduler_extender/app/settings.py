"""Settings of hami-scheduler-extender: flags > env (HAMI_EXTENDER_*) > --config file > defaults."""

from __future__ import annotations

import dataclasses
import pathlib

from hami_shared.config import parse_host_port, setting
from hami_shared.logging import LEVELS
from hami_shared.names import ResourceNames

from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import RequestDefaults

ENV_PREFIX = "HAMI_EXTENDER"
_POLICIES = tuple(p.value for p in Policy)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: tuple[str, int] = setting(
        ("127.0.0.1", 8888),
        help="HOST:PORT of the HTTP server (extender verbs, probes, metrics)",
        parse=parse_host_port,
    )
    kubeconfig: pathlib.Path | None = setting(
        None, help="kubeconfig file; empty = in-cluster service account (then $KUBECONFIG / ~/.kube/config)"
    )
    scheduler_name: str = setting("hami-scheduler", help="scheduler name shown as the source of pod Events")
    node_scheduler_policy: str = setting("binpack", help="default node policy", choices=_POLICIES)
    gpu_scheduler_policy: str = setting("spread", help="default GPU policy", choices=_POLICIES)
    resource_count: str = setting("nvidia.com/gpu", help="resource name: number of GPUs")
    resource_memory: str = setting("nvidia.com/gpumem", help="resource name: MiB per GPU")
    resource_memory_percentage: str = setting(
        "nvidia.com/gpumem-percentage", help="resource name: percent of GPU memory"
    )
    resource_cores: str = setting("nvidia.com/gpucores", help="resource name: percent of GPU cores")
    resource_priority: str = setting("nvidia.com/priority", help="resource name: task priority")
    default_memory: int = setting(0, help="MiB per GPU when a container gives neither memory nor percentage (0 = all)")
    default_cores: int = setting(0, help="cores per GPU when a container gives none")
    default_gpu_num: int = setting(1, help="GPUs per container when only memory or cores are given")
    memory_factor: int = setting(1, help="multiplier applied to requested gpumem")
    success_events: bool = setting(
        False,
        help="also record a BindingSucceed Event per bound pod (failures are always recorded); off by default: "
        "it costs one API write per pod, ~40%% of the end-to-end rate, and kube-scheduler's own Scheduled event "
        "already names the node",
    )
    vgpu_node_label: bool = setting(
        True,
        help="label each pod hami.io/vgpu-node=<node> as HAMi does (HAMi's vGPU monitor selects its pods by it): "
        "carried by the Binding where kube-apiserver copies Binding labels (PodTopologyLabelsAdmission), else one "
        "queued API write per pod once its device plugin reports bind-phase=success and has not set it; off: the "
        "annotation alone",
    )
    leader_elect: bool = setting(False, help="take part in Lease leader election; only the leader answers verbs")
    leader_elect_namespace: str = setting("kube-system", help="namespace of the leader Lease")
    leader_elect_name: str = setting("hami-scheduler-extender", help="name of the leader Lease")
    leader_elect_identity: str = setting("", help="identity in the Lease (default: hostname + random suffix)")
    lease_duration: float = setting(15.0, help="seconds a Lease is valid without renewal")
    renew_interval: float = setting(5.0, help="seconds between Lease renewals / acquisition attempts")
    assume_ttl: float = setting(300.0, help="seconds after which an unconfirmed reservation is dropped")
    log_level: str = setting("info", help="log level", choices=LEVELS)

    def __post_init__(self) -> None:
        self.resource_names()
        self.request_defaults()
        if self.renew_interval <= 0 or self.lease_duration <= self.renew_interval:
            raise ValueError("lease-duration must be greater than renew-interval, and both positive")
        if self.assume_ttl <= 0:
            raise ValueError("assume-ttl must be positive")

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
