"""Pod JSON as the scheduler extender leaves it on a pod it bound (for unit and component tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hami_shared import names
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices


@dataclasses.dataclass(frozen=True)
class Ctr:
    """A container: name, init or not, and (uuid, replica, MiB, cores) per assigned GPU."""

    name: str
    gpus: Sequence[tuple[str, int, int, int]] = ()
    init: bool = False
    env: Sequence[tuple[str, str]] = ()
    priority: int | None = None


def pod_json(
    name: str,
    *,
    uid: str,
    node: str,
    containers: Sequence[Ctr],
    created: str = "2026-11-23T07:00:00Z",
    namespace: str = "default",
    phase: str = "allocating",
    vulkan: bool = False,
    extra_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    ordered = [c for c in containers if c.init] + [c for c in containers if not c.init]
    devices = [[ContainerDevice(uuid=u, usedmem=m, usedcores=c) for u, _, m, c in ctr.gpus] for ctr in ordered]
    slots = [[f"{u}-{r}" for u, r, _, _ in ctr.gpus] for ctr in ordered]
    annotations = {
        names.VGPU_NODE: node,
        names.DEVICES_TO_ALLOCATE: encode_pod_devices(devices),
        names.DEVICES_ALLOCATED: encode_pod_devices(devices),
        names.DEVICE_SLOTS: encode_device_slots(slots),
        names.BIND_PHASE: phase,
        names.BIND_TIME: "1795000000",
    }
    if vulkan:
        annotations[names.VULKAN] = "true"
    annotations.update(extra_annotations or {})

    def spec(ctr: Ctr) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        if ctr.gpus:
            limits = {"nvidia.com/gpu": str(len(ctr.gpus))}
        if ctr.priority is not None:
            limits["nvidia.com/priority"] = str(ctr.priority)
        out: dict[str, Any] = {"name": ctr.name, "image": "busybox", "resources": {"limits": limits}}
        if ctr.env:
            out["env"] = [{"name": k, "value": v} for k, v in ctr.env]
        return out

    pod_spec: dict[str, Any] = {
        "nodeName": node,
        "schedulerName": "hami-scheduler",
        "containers": [spec(c) for c in ordered if not c.init],
    }
    inits = [spec(c) for c in ordered if c.init]
    if inits:
        pod_spec["initContainers"] = inits
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": created,
            "resourceVersion": "1",
            "annotations": annotations,
        },
        "spec": pod_spec,
        "status": {"phase": "Pending"},
    }
