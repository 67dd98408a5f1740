"""Settings of hami-device-plugin: flags, ``HAMI_DEVICE_PLUGIN_*`` environment variables, or a config file.

Precedence (hami_shared.config): flag > environment > ``--config`` file > HAMi's ``device-config.yaml``
(``--hami-device-config``, the ``hami-scheduler-device`` ConfigMap; :data:`HAMI_KEYS`) > default. The node name also
falls back to ``NODE_NAME`` (the downward-API variable HAMi's DaemonSet sets), the device list strategy to
``DEVICE_LIST_STRATEGY`` (HAMi's and NVIDIA's variable), each below our own variable. The per-node file
(``--node-config``, HAMi's ``{"nodeconfig": [...]}``) overrides the device settings for this node only.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Final

import yaml
from hami_shared import hami_config
from hami_shared.config import (
    ConfigError,
    load_yaml_bounded,
    parse_host_port,
    read_text_bounded,
    setting,
)
from hami_shared.logging import LEVELS
from hami_shared.names import DEFAULT_RESOURCE_NAMES, HOOK_DIR, SCHEDULER_NAME, ResourceNames
from hami_shared.node_register import KNOWN_MODES, MODE_HAMI_CORE
from hami_shared.service.program import Program

from hami_device_plugin.core.allocation import (
    CORE_POLICIES,
    DEVICE_LIST_ENVVAR,
    DEVICE_LIST_STRATEGIES,
    InjectionConfig,
    device_list_strategies,
)
from hami_device_plugin.core.backstop import (
    DEFAULT_TOLERANCE_MIB,
    DEFAULT_TOLERANCE_PERCENT,
    MIB,
    OBSERVE,
    POLICIES,
    Tolerance,
)
from hami_device_plugin.core.config import (
    MIG_STRATEGIES,
    MIG_STRATEGY_NONE,
    DeviceConfig,
    NodeConfigError,
    apply_node_config,
    node_config_warnings,
)
from hami_device_plugin.core.health import DEFAULT_IGNORED_XIDS

ENV_PREFIX: Final = "HAMI_DEVICE_PLUGIN"
_DESCRIPTION: Final = (
    "kubelet device plugin for shared NVIDIA GPUs (HAMi-compatible): advertises split-count virtual devices per "
    "GPU, publishes the node inventory (hami.io/node-nvidia-register), injects the GPUs, limits and hamicore at "
    "Allocate, and exports per-container GPU metrics from hamicore's accounting files."
)


def _host_port(text: str) -> str:
    parse_host_port(text)
    return text


def _xids(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if not p.isdigit():
            raise ValueError(f"XID {p!r} is not a number; write e.g. 13,31,43")
    return parts


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    node_name: str = setting("", help="this node's name (falls back to NODE_NAME)")
    device_plugin_dir: pathlib.Path = setting(
        pathlib.Path("/var/lib/kubelet/device-plugins"), help="kubelet's device-plugin directory (our socket goes here)"
    )
    kubelet_socket: str = setting("kubelet.sock", help="kubelet's registration socket, relative to the directory")
    socket_name: str = setting("hami-nvidia.sock", help="file name of this plugin's socket in the directory")
    resource_name: str = setting(DEFAULT_RESOURCE_NAMES.count, help="extended resource advertised to kubelet")
    priority_resource: str = setting(DEFAULT_RESOURCE_NAMES.priority, help="resource name of the task priority")
    split_count: int = setting(10, help="virtual devices per GPU (containers that may share one GPU)")
    memory_scaling: float = setting(1.0, help="registered memory = physical memory x this (above 1 oversubscribes)")
    cores_scaling: float = setting(1.0, help="registered cores = 100 x this")
    preconfigured_memory: int = setting(0, help="MiB to register for GPUs whose memory NVML cannot report (0 = skip)")
    mode: str = setting(
        MODE_HAMI_CORE,
        choices=sorted(KNOWN_MODES),
        help="operating mode (node config key operatingmode): hami-core shares GPUs through hamicore, mig creates a "
        "MIG instance per reserved device at Allocate (docs/mig.md), mps is hami-core published as mps",
    )
    mig_strategy: str = setting(
        MIG_STRATEGY_NONE,
        choices=MIG_STRATEGIES,
        help="static MIG (node config key migstrategy; NVIDIA's --mig-strategy): none, or single/mixed to advertise "
        "MIG instances an operator made by hand, bypassing hamicore (docs/mig.md)",
    )
    mig_geometries: pathlib.Path | None = setting(
        None,
        help="HAMi's device-config.yaml whose nvidia.knownMigGeometries MIG mode obeys: only the profiles the "
        "geometries of the card's model name are registered (default: --hami-device-config; without geometries, every "
        "profile NVML offers)",
    )
    mig_with_hamicore: bool = setting(
        False,
        help="MIG mode: also inject hamicore (libvgpu, limits) into MIG containers; by default a MIG instance is "
        "isolated by the hardware and gets no hamicore",
    )
    mig_reconcile_interval: float = setting(
        5.0, help="MIG mode: seconds between checks that destroy the instances of pods that are gone"
    )
    numa_topology: bool = setting(False, help="attach NUMA nodes to the advertised devices")
    preferred_allocation: bool = setting(
        True, help="offer GetPreferredAllocation (steers kubelet to the scheduled slots)"
    )
    hami_device_config: pathlib.Path | None = setting(
        None,
        help="HAMi's device-config.yaml (the hami-scheduler-device ConfigMap): its nvidia keys set the defaults of "
        "the settings they correspond to (docs/configuration.md); our flags, variables and config file override it",
    )
    node_config: pathlib.Path | None = setting(
        None, help='per-node config file (HAMi\'s {"nodeconfig": [...]}, JSON or YAML); re-read on change'
    )
    hook_path: pathlib.Path = setting(
        pathlib.Path(HOOK_DIR), help="host directory with libvgpu.so etc. (hami-lib-installer's destination)"
    )
    container_hook_path: str = setting(HOOK_DIR, help="where containers see --hook-path")
    regions_path: pathlib.Path | None = setting(
        None,
        help="host directory of the per-container directories and their accounting regions (default: "
        "<hook-path>/containers); on a tmpfs such as /run/hami/containers the regions stay in memory: no disk "
        "writeback of the counters, no filesystem locks when a container's processes start together",
    )
    require_regions_tmpfs: bool = setting(
        False,
        help="refuse to start unless --regions-path is a dedicated tmpfs mount no larger than --regions-tmpfs-max-mib "
        "(the DaemonSet sets it: a container that fills its directory then fills only that tmpfs, not the host's /run)",
    )
    regions_tmpfs_max_mib: int = setting(
        1024, help="largest size of the regions tmpfs accepted with --require-regions-tmpfs (MiB; a region is 200 KiB)"
    )
    scheduler_names: tuple[str, ...] = setting(
        (SCHEDULER_NAME,),
        metavar="NAME[,NAME...]",
        help="spec.schedulerName values whose pods Allocate serves (the kube-scheduler profiles that call the HAMi "
        "scheduler extender); a pod of any other scheduler is refused even when its annotations name this node",
    )
    core_policy: str | None = setting(None, choices=CORE_POLICIES, help="GPU_CORE_UTILIZATION_POLICY to inject")
    disable_core_limit: bool = setting(False, help="inject GPU_CORE_UTILIZATION_POLICY=disable")
    disable_control_namespaces: tuple[str, ...] = setting(
        (),
        help="namespaces (comma list; a YAML list in the config file) whose containers may turn hamicore off "
        "with CUDA_DISABLE_CONTROL=true; elsewhere hamicore ignores it (default: none)",
    )
    device_list_strategy: tuple[str, ...] = setting(
        (DEVICE_LIST_ENVVAR,),
        metavar="|".join(DEVICE_LIST_STRATEGIES),
        help="how the NVIDIA container toolkit gets a container's GPUs (NVIDIA's deviceListStrategy; also env "
        "DEVICE_LIST_STRATEGY): envvar puts the UUIDs in NVIDIA_VISIBLE_DEVICES; volume-mounts mounts /dev/null at "
        "/var/run/nvidia-container-devices/<uuid> per GPU, for a toolkit set to "
        "accept-nvidia-visible-devices-as-volume-mounts = true and "
        "accept-nvidia-visible-devices-envvar-when-unprivileged = false (docs/security.md); a comma list of both "
        "behaves as volume-mounts",
    )
    libcuda_log_level: int | None = setting(None, help="LIBCUDA_LOG_LEVEL to inject (0 errors .. 4 debug)")
    nvml_library: pathlib.Path | None = setting(
        None, help="full path of libnvidia-ml.so.1 to load (default: the dynamic loader's search)"
    )
    ignored_xids: tuple[str, ...] = setting(
        tuple(str(x) for x in sorted(DEFAULT_IGNORED_XIDS)), parse=_xids, help="XIDs that do not make a GPU unhealthy"
    )
    health_recovery: float = setting(30.0, help="seconds without errors before an unhealthy GPU is healthy again")
    health_probe_interval: float = setting(5.0, help="seconds between NVML probes of each GPU")
    register_interval: float = setting(30.0, help="seconds between re-scans of the node inventory annotation")
    enable_topology_score: bool = setting(
        True,
        help="read the GPUs' interconnect (NVLink, PCIe, NUMA) from NVML, publish it in hami.io/node-nvidia-score "
        "(HAMi's pair scores) and hami.io/node-nvidia-topology, and steer kubelet to the best-connected GPUs for "
        "multi-GPU containers no placement names (HAMi's ENABLE_TOPOLOGY_SCORE is read too)",
    )
    monitor_interval: float = setting(
        0.25,
        help="seconds between scans of the per-container accounting files (metrics, the limiter's contention and "
        "priority signals, host pids); hamicore's priority hand-over takes up to about two of them",
    )
    gpu_memory_policy: str = setting(
        OBSERVE,
        choices=POLICIES,
        help="what the node backstop does with a container whose real GPU memory (NVML) exceeds its limit beyond the "
        "tolerance: observe (metric + Event on the pod) or enforce (also SIGKILL its processes on that GPU); the "
        "node config key gpumemorypolicy overrides it per node",
    )
    gpu_memory_tolerance_mib: int = setting(
        DEFAULT_TOLERANCE_MIB, help="the backstop's tolerance over the limit: at least this many MiB ..."
    )
    gpu_memory_tolerance_percent: float = setting(
        DEFAULT_TOLERANCE_PERCENT, help="... or this percentage of the limit, whichever is larger"
    )
    cleanup_grace: float = setting(300.0, help="seconds a container directory outlives its pod before removal")
    allocate_wait: float = setting(5.0, help="seconds Allocate waits for the pod cache when no pod matches yet")
    pod_resources: bool = setting(
        True,
        help="ask kubelet's pod-resources API which pod it is admitting in GetPreferredAllocation and Allocate "
        "(--no-pod-resources: never; the pod is then inferred from the pod cache alone)",
    )
    pod_resources_socket: pathlib.Path = setting(
        pathlib.Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        help="kubelet's pod-resources API socket (<kubelet root-dir>/pod-resources/kubelet.sock); when it is missing "
        "or does not answer, the pod is inferred from the pod cache (counted in "
        "hami_device_plugin_pod_identifications)",
    )
    pod_resources_timeout: float = setting(
        1.0, help="seconds one pod-resources List may take (kubelet waits for the plugin meanwhile)"
    )
    metrics_listen: str = setting(
        "0.0.0.0:9394", parse=_host_port, metavar="HOST:PORT", help="/metrics, /healthz, /readyz"
    )
    kubeconfig: pathlib.Path | None = setting(None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    kubernetes: bool = setting(
        True, help="use the Kubernetes API; without it devices are advertised but every Allocate is refused"
    )
    legacy_metrics: bool = setting(
        False,
        help="also export HAMi's vGPU monitor names from before v2.9 (HostGPUMemoryUsage, "
        "vGPU_device_memory_usage_in_bytes, Device_memory_desc_of_container, ...; HAMi's --legacy-metrics) beside "
        "the current ones (docs/metrics.md)",
    )
    log_level: str = setting("info", choices=LEVELS, help="log level")

    def __post_init__(self) -> None:
        for name in ("kubelet_socket", "socket_name"):
            value = getattr(self, name)
            if not value or "/" in value:
                raise ValueError(f"{name.replace('_', '-')} {value!r} must be a file name inside --device-plugin-dir")
        if self.socket_name == self.kubelet_socket:
            raise ValueError("--socket-name must differ from --kubelet-socket")
        ResourceNames(count=self.resource_name, priority=self.priority_resource)
        for name in (
            "health_recovery",
            "health_probe_interval",
            "register_interval",
            "monitor_interval",
            "mig_reconcile_interval",
        ):
            if not 0.05 <= getattr(self, name) <= 86400:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0.05 and 86400 seconds")
        for namespace in self.disable_control_namespaces:
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
                raise ValueError(
                    f"--disable-control-namespaces: {namespace!r} is not a namespace name; write e.g. ml-team,research"
                )
        if not self.scheduler_names or not all(self.scheduler_names):
            raise ValueError("--scheduler-names needs at least one non-empty name")
        if not 1 <= self.regions_tmpfs_max_mib <= 1 << 20:
            raise ValueError("--regions-tmpfs-max-mib must be between 1 and 1048576")
        if not self.pod_resources_socket.is_absolute():
            raise ValueError(f"--pod-resources-socket {str(self.pod_resources_socket)!r} must be an absolute path")
        if not 0.01 <= self.pod_resources_timeout <= 30:
            raise ValueError("--pod-resources-timeout must be between 0.01 and 30 seconds")
        if self.allocate_wait < 0 or self.cleanup_grace < 0:
            raise ValueError("--allocate-wait and --cleanup-grace must be >= 0")
        try:
            device_list_strategies(self.device_list_strategy)
        except ValueError as exc:
            raise ValueError(f"--device-list-strategy (or its variable or config key): {exc}") from exc
        self.base_device_config()
        self.injection()
        self.memory_tolerance()

    def memory_tolerance(self) -> Tolerance:
        """The backstop's tolerance over a container's limit."""
        if not 0 <= self.gpu_memory_tolerance_mib <= 1 << 20:
            raise ValueError("--gpu-memory-tolerance-mib must be between 0 and 1048576")
        if not 0 <= self.gpu_memory_tolerance_percent <= 100:
            raise ValueError("--gpu-memory-tolerance-percent must be between 0 and 100")
        return Tolerance(self.gpu_memory_tolerance_mib * MIB, self.gpu_memory_tolerance_percent)

    @property
    def regions_dir(self) -> pathlib.Path:
        return pathlib.Path(self.injection().regions_dir)

    @property
    def resource_names(self) -> ResourceNames:
        return ResourceNames(count=self.resource_name, priority=self.priority_resource)

    @property
    def metrics_address(self) -> tuple[str, int]:
        return parse_host_port(self.metrics_listen)

    @property
    def ignored_xid_codes(self) -> frozenset[int]:
        return frozenset(int(x) for x in self.ignored_xids)

    def base_device_config(self) -> DeviceConfig:
        """The device config from the flags alone (before the per-node file)."""
        try:
            return DeviceConfig(
                split_count=self.split_count,
                memory_scaling=self.memory_scaling,
                cores_scaling=self.cores_scaling,
                preconfigured_memory_mib=self.preconfigured_memory,
                mode=self.mode,
                libcuda_log_level=self.libcuda_log_level,
                numa_topology=self.numa_topology,
                preferred_allocation=self.preferred_allocation,
                memory_policy=self.gpu_memory_policy,
                mig_strategy=self.mig_strategy,
            )
        except NodeConfigError as exc:
            raise ValueError(str(exc)) from exc

    def injection(self, device_config: DeviceConfig | None = None) -> InjectionConfig:
        config = device_config or self.base_device_config()
        return InjectionConfig(
            host_hook_dir=str(self.hook_path),
            container_hook_dir=self.container_hook_path,
            host_regions_dir=None if self.regions_path is None else str(self.regions_path),
            core_policy=self.core_policy,
            disable_core_limit=self.disable_core_limit,
            libcuda_log_level=config.libcuda_log_level,
            oversubscribe=config.memory_scaling > 1,
            disable_control_namespaces=frozenset(self.disable_control_namespaces),
            device_list_strategies=device_list_strategies(self.device_list_strategy),
        )


def read_node_config_document(path: pathlib.Path) -> Any:
    """The parsed per-node config file (JSON or YAML, at most MAX_CONFIG_FILE_BYTES, nesting bounded);
    NodeConfigError says what is wrong."""
    try:
        text = read_text_bounded(path, f"node config {path}")
    except ConfigError as exc:
        raise NodeConfigError(str(exc)) from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        # JSON is YAML: a document json.loads refused for its depth is refused here with the bound.
        return load_yaml_bounded(text)
    except yaml.YAMLError as exc:
        raise NodeConfigError(f"node config {path} is neither JSON nor YAML: {exc}") from exc


def node_config_warnings_of(settings: Settings) -> tuple[str, ...]:
    """What the per-node file leaves unread for this node (unknown keys, by path)."""
    if settings.node_config is None:
        return ()
    document = read_node_config_document(settings.node_config)
    return node_config_warnings(document, settings.node_name, source=str(settings.node_config))


def device_config_for_node(settings: Settings) -> DeviceConfig:
    base = settings.base_device_config()
    if settings.node_config is None:
        return base
    document = read_node_config_document(settings.node_config)
    return apply_node_config(base, document, settings.node_name, source=str(settings.node_config))


def _check(settings: Settings) -> None:
    # Checked here, not in __post_init__: the DaemonSet sets NODE_NAME, which only the program's fallbacks map.
    if not settings.node_name and settings.kubernetes:
        raise ConfigError(f"the node name is not set: give --node-name, {ENV_PREFIX}_NODE_NAME or NODE_NAME")
    try:
        device_config_for_node(settings)
    except NodeConfigError as exc:
        raise ConfigError(str(exc)) from exc


HAMI_KEYS: Final = {
    "resourceCountName": "resource_name",
    "resourcePriorityName": "priority_resource",
    "deviceSplitCount": "split_count",
    "deviceMemoryScaling": "memory_scaling",
    "deviceCoreScaling": "cores_scaling",
    "preConfiguredDeviceMemory": "preconfigured_memory",
    "enableNumaTopology": "numa_topology",
    "libCudaLogLevel": "libcuda_log_level",
    "gpuCorePolicy": "core_policy",
    "disableCoreLimit": "disable_core_limit",
}
"""The keys of HAMi's ``nvidia:`` section the device plugin reads, and the settings they set (HAMi's own device
plugin reads the same keys from the same file: ``--config-file=/device-config.yaml``)."""

PROGRAM: Final = Program(
    name="hami-device-plugin",
    settings=Settings,
    env_prefix=ENV_PREFIX,
    description=_DESCRIPTION,
    # HAMi's (and NVIDIA's) DaemonSets set these names; ours win when both are set.
    env_fallbacks=("NODE_NAME", "DEVICE_LIST_STRATEGY", "ENABLE_TOPOLOGY_SCORE"),
    check=_check,
    underlay=hami_config.underlay("hami_device_config", HAMI_KEYS),
    # The per-node file's warnings are logged each time it is (re)read (service.py).
    warnings=hami_config.warnings_of("hami_device_config"),
)
