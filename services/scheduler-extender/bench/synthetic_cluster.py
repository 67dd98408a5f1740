"""The benchmark's synthetic cluster (load generation for bench_extender.py): N nodes x G GPUs registered as the
device plugin registers them, P running GPU pods placed as the extender places them, and the shapes of the pods
the measured requests ask to place. Deterministic for a seed."""

from __future__ import annotations

import random
from typing import Any

from hami_shared import names
from hami_shared.node_register import DeviceInfo, encode_node_devices
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices, slot_id

TYPES = ("NVIDIA A100-SXM4-80GB", "NVIDIA-Tesla V100-PCIE-32GB", "NVIDIA H100 80GB HBM3")
MEMORY = {TYPES[0]: 81920, TYPES[1]: 32768, TYPES[2]: 81559}


def synthetic_nodes(count: int, gpus: int, rng: random.Random) -> list[dict[str, Any]]:
    nodes = []
    for n in range(count):
        model = TYPES[n % len(TYPES)]
        devices = [
            DeviceInfo(
                id=f"GPU-{n:05d}-{g}",
                index=g,
                count=10,
                devmem=MEMORY[model],
                devcore=100,
                type=model,
                numa=g * 2 // gpus,
                mode="hami-core",
                health=rng.random() > 0.002,
            )
            for g in range(gpus)
        ]
        nodes.append(
            {
                "metadata": {
                    "name": f"node-{n:05d}",
                    "labels": {"kubernetes.io/hostname": f"node-{n:05d}", "gpu": "on"},
                    "annotations": {names.NODE_REGISTER: encode_node_devices(devices)},
                },
                "status": {"allocatable": {"nvidia.com/gpu": str(10 * gpus), "cpu": "64", "memory": "512Gi"}},
            }
        )
    return nodes


def synthetic_pods(nodes: list[dict[str, Any]], count: int, gpus: int, rng: random.Random) -> list[dict[str, Any]]:
    pods = []
    for p in range(count):
        node = nodes[rng.randrange(len(nodes))]
        name = node["metadata"]["name"]
        n = int(name.split("-")[1])
        gpu = rng.randrange(gpus)
        uuid = f"GPU-{n:05d}-{gpu}"
        mem, cores = rng.choice([(2000, 0), (4000, 10), (8000, 20), (10000, 30), (16000, 25)])
        devices = encode_pod_devices([[ContainerDevice(uuid=uuid, usedmem=mem, usedcores=cores)]])
        pods.append(
            {
                "metadata": {
                    "name": f"job-{p}",
                    "namespace": f"team-{p % 50}",
                    "uid": f"00000000-0000-0000-0000-{p:012d}",
                    "labels": {names.VGPU_NODE: name},
                    "annotations": {
                        names.VGPU_NODE: name,
                        names.VGPU_TIME: "1763880000",
                        names.DEVICES_ALLOCATED: devices,
                        names.DEVICES_TO_ALLOCATE: ";",
                        names.DEVICE_SLOTS: encode_device_slots([[slot_id(uuid, p % 10)]]),
                        names.BIND_PHASE: "success",
                        names.BIND_TIME: "1763880000",
                    },
                },
                "spec": {
                    "nodeName": name,
                    "schedulerName": "hami-scheduler",
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.example/train:latest",
                            "resources": {
                                "limits": {
                                    "nvidia.com/gpu": "1",
                                    "nvidia.com/gpumem": str(mem),
                                    "nvidia.com/gpucores": str(cores),
                                }
                            },
                        }
                    ],
                },
                "status": {"phase": "Running"},
            }
        )
    return pods


def request_pod(i: int, rng: random.Random) -> dict[str, Any]:
    count, mem, pct, cores = rng.choice(
        [
            (1, 1000, None, 0),
            (1, 8000, None, 20),
            (2, 4000, None, 10),
            (1, None, 25, 30),
            (1, 30000, None, 50),
            (4, 20000, None, 0),
        ]
    )
    limits = {"nvidia.com/gpu": str(count), "nvidia.com/gpucores": str(cores)}
    if mem is not None:
        limits["nvidia.com/gpumem"] = str(mem)
    if pct is not None:
        limits["nvidia.com/gpumem-percentage"] = str(pct)
    annotations = {}
    if i % 10 == 0:
        annotations[names.USE_GPUTYPE] = "A100,H100"
    if i % 7 == 0:
        annotations[names.GPU_SCHEDULER_POLICY] = "binpack"
    return {
        "metadata": {
            "name": f"new-{i}",
            "namespace": "bench",
            "uid": f"ffffffff-0000-0000-0000-{i:012d}",
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [{"name": "main", "image": "registry.example/infer:latest", "resources": {"limits": limits}}],
        },
        "status": {"phase": "Pending"},
    }


def synthetic_quotas(namespaces: list[str], *, tight: str = "") -> list[dict[str, Any]]:
    """One ResourceQuota per namespace with HAMi's GPU keys, set so high that nothing is refused: every filter
    pays the whole quota check and still sees every fitting node. ``tight`` (a namespace) gets 10,000 MiB instead:
    of the request shapes, 30,000 and 4 x 20,000 MiB are refused at once, and 25 % of a card is checked node by
    node (8,192 MiB of a V100 fits, 20,480 of an A100 not)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "gpu", "namespace": namespace},
            "spec": {
                "hard": {
                    "limits.nvidia.com/gpumem": "10000" if namespace == tight else "1000000000",
                    "limits.nvidia.com/gpucores": "100000000",
                }
            },
        }
        for namespace in namespaces
    ]


QUOTA_NAMESPACES = [*(f"team-{t}" for t in range(50)), "bench"]
"""The namespaces of the synthetic pods and of the requests."""
