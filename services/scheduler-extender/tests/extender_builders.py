"""Test builders: Kubernetes JSON for nodes and pods, and core values, from a few arguments."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import Policy
from hami_scheduler_extender.core.request import PodRequest, RequestDefaults, resolve_pod
from hami_scheduler_extender.core.state import ClusterState
from hami_shared import names
from hami_shared.node_register import DeviceInfo, MigPlacement, MigProfile, encode_node_devices
from hami_shared.quantity import pod_gpu_requests

_uids = itertools.count(1)


def gpu(
    uuid: str,
    *,
    count: int = 10,
    devmem: int = 16000,
    devcore: int = 100,
    type: str = "NVIDIA-Tesla T4",
    numa: int = 0,
    health: bool = True,
    mode: str = "hami-core",
    index: int = 0,
    mig_profiles: tuple[MigProfile, ...] = (),
) -> DeviceInfo:
    return DeviceInfo(
        id=uuid,
        index=index,
        count=count,
        devmem=devmem,
        devcore=devcore,
        type=type,
        numa=numa,
        mode=mode,
        mig_profiles=mig_profiles,
        health=health,
    )


def _profile(name: str, memory: int, core: int, slices: int, size: int, starts: Sequence[int]) -> MigProfile:
    return MigProfile(
        name=name,
        memory_mb=memory,
        core=core,
        slice_count=slices,
        placements=tuple(MigPlacement(start=s, size=size) for s in starts),
    )


# An A100-SXM4-40GB's GPU-instance profiles and legal placements as `nvidia-smi mig -lgipp` lists them (memory
# slices 0..7; 1g at 0..6, 2g at 0/2/4, 3g at 0/4, 4g and 7g at 0), as its device plugin registers them.
A100_40GB_PROFILES: tuple[MigProfile, ...] = (
    _profile("1g.5gb", 4864, 14, 1, 1, range(7)),
    _profile("1g.10gb", 9856, 14, 1, 2, (0, 2, 4, 6)),
    _profile("2g.10gb", 9856, 28, 2, 2, (0, 2, 4)),
    _profile("3g.20gb", 19968, 42, 3, 4, (0, 4)),
    _profile("4g.20gb", 19968, 56, 4, 4, (0,)),
    _profile("7g.40gb", 40192, 98, 7, 8, (0,)),
)


def mig_gpu(uuid: str, *, index: int = 0, type: str = "NVIDIA A100-SXM4-40GB", **kwargs: Any) -> DeviceInfo:
    """A MIG-mode A100-40GB as HAMi's device plugin registers it (count = most instances, devcore 100)."""
    return gpu(
        uuid,
        count=7,
        devmem=40960,
        type=type,
        mode="mig",
        index=index,
        mig_profiles=kwargs.pop("mig_profiles", A100_40GB_PROFILES),
        **kwargs,
    )


def node_json(
    name: str,
    devices: Sequence[DeviceInfo] | None = None,
    *,
    allocatable: str | None = None,
    cordon: Sequence[str] = (),
    register: bool = True,
) -> dict[str, Any]:
    devices = list(devices if devices is not None else [gpu(f"GPU-{name}-{i}", index=i) for i in range(2)])
    annotations: dict[str, str] = {}
    if register:
        annotations[names.NODE_REGISTER] = encode_node_devices(devices)
    if cordon:
        annotations[names.DEVICE_CORDON] = ",".join(cordon)
    total = sum(d.count for d in devices)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "status": {"allocatable": {"nvidia.com/gpu": allocatable if allocatable is not None else str(total)}},
    }


def container(name: str = "c", **resources: int | str) -> dict[str, Any]:
    mapping = {
        "gpu": "nvidia.com/gpu",
        "mem": "nvidia.com/gpumem",
        "pct": "nvidia.com/gpumem-percentage",
        "cores": "nvidia.com/gpucores",
        "priority": "nvidia.com/priority",
    }
    limits = {mapping[k]: str(v) for k, v in resources.items()}
    return {"name": name, "image": "busybox", "resources": {"limits": limits} if limits else {}}


def pod_json(
    name: str = "p",
    *,
    containers: Sequence[Mapping[str, Any]] | None = None,
    init_containers: Sequence[Mapping[str, Any]] = (),
    annotations: Mapping[str, str] | None = None,
    uid: str | None = None,
    namespace: str = "default",
    node_name: str | None = None,
    phase: str = "Pending",
    scheduler_name: str = "hami-scheduler",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": list(containers if containers is not None else [container(gpu=1, mem=1000)]),
        "schedulerName": scheduler_name,
    }
    if init_containers:
        spec["initContainers"] = list(init_containers)
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{next(_uids)}",
            "annotations": dict(annotations or {}),
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def request_of(
    pod: Mapping[str, Any],
    *,
    defaults: RequestDefaults | None = None,
    node_policy: Policy = Policy.BINPACK,
    gpu_policy: Policy = Policy.SPREAD,
) -> PodRequest:
    return resolve_pod(
        pod_gpu_requests(pod["spec"]),
        objects.annotations_of(pod),
        defaults=defaults or RequestDefaults(),
        node_policy=node_policy,
        gpu_policy=gpu_policy,
    )


def state_with(*nodes: Mapping[str, Any]) -> ClusterState:
    state = ClusterState()
    state.replace_nodes(objects.node_inventory(n) for n in nodes)
    return state
