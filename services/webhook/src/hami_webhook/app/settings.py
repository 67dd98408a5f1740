"""Settings of hami-webhook: flag > ``HAMI_WEBHOOK_*`` environment > ``--config`` file > HAMi's device-config.yaml
(``--hami-device-config``; :data:`HAMI_KEYS`) > default (hami_shared.config); cross-field checks run in
``__post_init__``, reported like a bad single value."""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from typing import Final

from hami_shared import hami_config
from hami_shared.config import parse_host_port, setting
from hami_shared.logging import LEVELS
from hami_shared.names import DEFAULT_RESOURCE_NAMES, SCHEDULER_NAME, ResourceNames
from hami_shared.service.program import Program

from hami_webhook.adapters.tls import CertificateFiles
from hami_webhook.core.policy import CORE_POLICIES, CorePolicy, MutationPolicy

ENV_PREFIX: Final = "HAMI_WEBHOOK"
_DESCRIPTION: Final = (
    "Admission webhook of the GPU sharing stack: sends pods that ask for GPU resources to the "
    "HAMi scheduler, fills in defaults, opts pods into Vulkan limits and refuses what cannot work (POST /mutate); "
    "refuses, in every pod, placement annotations and env that would override the GPU limits (POST /validate). "
    "AdmissionReview v1 and v1beta1 over TLS, and /healthz, /readyz, /metrics."
)


def _host_port(text: str) -> str:
    parse_host_port(text)
    return text


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    cert_file: pathlib.Path | None = setting(None, help="PEM certificate served to the apiserver (reloaded on change)")
    key_file: pathlib.Path | None = setting(None, help="PEM private key of --cert-file (reloaded on change)")
    listen: str = setting("0.0.0.0:8443", parse=_host_port, metavar="HOST:PORT", help="address to serve HTTPS on")
    scheduler_name: str = setting(SCHEDULER_NAME, help="scheduler name written into GPU pods' spec.schedulerName")
    force_overwrite_default_scheduler: bool = setting(
        True, help="take over pods that name default-scheduler (pods naming other schedulers are always left alone)"
    )
    hami_device_config: pathlib.Path | None = setting(
        None,
        help="HAMi's device-config.yaml (the hami-scheduler-device ConfigMap): its nvidia resource names, "
        "defaultGPUNum, runtimeClassName, gpuCorePolicy and overwriteEnv set those settings' defaults; our flags, "
        "variables and config file override it",
    )
    gpu_resource: str = setting(DEFAULT_RESOURCE_NAMES.count, help="resource name of the GPU count")
    memory_resource: str = setting(DEFAULT_RESOURCE_NAMES.memory, help="resource name of GPU memory in MiB")
    memory_percentage_resource: str = setting(
        DEFAULT_RESOURCE_NAMES.memory_percentage, help="resource name of GPU memory as a percentage of the card"
    )
    cores_resource: str = setting(DEFAULT_RESOURCE_NAMES.cores, help="resource name of the share of SMs in percent")
    priority_resource: str = setting(DEFAULT_RESOURCE_NAMES.priority, help="resource name of the task priority")
    default_gpu_count: int = setting(1, help="GPU count added when a container asks only memory or cores")
    exclusive_cores: bool = setting(
        True, help="add gpucores=100 to whole-card requests so they get the card exclusively (HAMi v2.7+)"
    )
    runtime_class_name: str | None = setting(None, help="runtimeClassName set on GPU pods that name none")
    core_policy: str = setting(
        "default", choices=CORE_POLICIES, help="GPU_CORE_UTILIZATION_POLICY injected into GPU containers"
    )
    disable_control_namespaces: tuple[str, ...] = setting(
        (),
        help="comma-separated namespaces whose pods may set CUDA_DISABLE_CONTROL (run GPU containers without "
        "the interposer's limits); every other pod setting it is refused",
    )
    overwrite_env: bool = setting(
        False,
        help="set NVIDIA_VISIBLE_DEVICES=none in every container that asks no GPU (HAMi's overwriteEnv): on nodes "
        "whose default runtime is NVIDIA's, such containers otherwise see every GPU when their image sets "
        "NVIDIA_VISIBLE_DEVICES=all, as CUDA images do",
    )
    cert_reload_interval: float = setting(2.0, help="seconds between checks of the certificate files")
    shutdown_delay: float = setting(
        0.0,
        help="seconds to keep serving after SIGTERM, answering /readyz with 503 and closing each connection after "
        "its response, before the listener closes: the time the cluster needs to take the pod out of its "
        "Service (endpoints, kube-proxy), so no admission request meets a closed port during a rollout",
    )
    log_level: str = setting("info", choices=LEVELS, help="log level")

    def __post_init__(self) -> None:
        if self.cert_file is None or self.key_file is None:
            raise ValueError(
                "the webhook serves HTTPS only: give --cert-file and --key-file "
                f"(or {ENV_PREFIX}_CERT_FILE and {ENV_PREFIX}_KEY_FILE)"
            )
        if not 0.05 <= self.cert_reload_interval <= 3600:
            raise ValueError(f"cert reload interval {self.cert_reload_interval} must be between 0.05 and 3600 seconds")
        if not 0 <= self.shutdown_delay <= 300:
            raise ValueError(f"shutdown delay {self.shutdown_delay} must be between 0 and 300 seconds")
        self.policy()  # validates names and defaults

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_host_port(self.listen)

    @property
    def certificate_files(self) -> CertificateFiles:
        if self.cert_file is None or self.key_file is None:  # refused by __post_init__; narrows the type
            raise ValueError("certificate files are not set")
        return CertificateFiles(cert_file=self.cert_file, key_file=self.key_file)

    def resource_names(self) -> ResourceNames:
        return ResourceNames(
            count=self.gpu_resource,
            memory=self.memory_resource,
            memory_percentage=self.memory_percentage_resource,
            cores=self.cores_resource,
            priority=self.priority_resource,
        )

    def policy(self) -> MutationPolicy:
        # MutationPolicy checks the value; the cast only tells the type checker.
        core_policy = typing.cast(CorePolicy, self.core_policy)
        return MutationPolicy(
            scheduler_name=self.scheduler_name,
            resource_names=self.resource_names(),
            default_gpu_count=self.default_gpu_count,
            exclusive_cores_for_whole_card=self.exclusive_cores,
            force_overwrite_default_scheduler=self.force_overwrite_default_scheduler,
            runtime_class_name=self.runtime_class_name,
            core_policy=core_policy,
            disable_control_namespaces=frozenset(self.disable_control_namespaces),
            overwrite_env=self.overwrite_env,
        )


HAMI_KEYS: Final = {
    "resourceCountName": "gpu_resource",
    "resourceMemoryName": "memory_resource",
    "resourceMemoryPercentageName": "memory_percentage_resource",
    "resourceCoreName": "cores_resource",
    "resourcePriorityName": "priority_resource",
    "defaultGPUNum": "default_gpu_count",
    "runtimeClassName": "runtime_class_name",
    "gpuCorePolicy": "core_policy",
    "overwriteEnv": "overwrite_env",
}
"""The keys of HAMi's ``nvidia:`` section the webhook reads (HAMi's webhook is its scheduler, with the same file),
and the settings they set."""

PROGRAM: Final = Program(
    name="hami-webhook",
    settings=Settings,
    env_prefix=ENV_PREFIX,
    description=_DESCRIPTION,
    underlay=hami_config.underlay("hami_device_config", HAMI_KEYS),
    warnings=hami_config.warnings_of("hami_device_config"),
)
