"""The benchmark's synthetic cluster (load generation for bench_extender.py): N nodes x G GPUs registered as the
device plugin registers them, P running GPU pods placed as the extender places them, and the shapes of the pods
the measured requests ask to place. Deterministic for a seed.

With ``mig_every`` = k > 0, every k-th node registers its GPUs in MIG mode (A100-SXM4-40GB with the real profiles
and placements), its running pods hold MIG instances of one geometry per card (``hami.io/vgpu-mig-allocations``),
and the requests include ``nvidia.com/vgpu-mode: mig`` and ``hami-core`` pods.

With ``topology``, every node publishes its interconnect (``hami.io/node-nvidia-topology``, as the device plugin
writes it), in turn DGX-style NVSwitch, NVLink ring and PCIe only (the fake NVML's shapes), and half the requests
ask for ``topology-aware`` (a seventh of those as ``binpack,topology-aware``)."""

from __future__ import annotations

import random
from typing import Any

from hami_shared import names
from hami_shared.mig import MigAllocation, encode_mig_allocations
from hami_shared.node_register import DeviceInfo, MigPlacement, MigProfile, encode_node_devices
from hami_shared.pod_devices import ContainerDevice, encode_device_slots, encode_pod_devices, slot_id
from hami_shared.topology import GpuTopology, Link, NodeTopology, PcieLevel
from hami_shared.topology_codec import encode_node_topology

SHAPES = ("nvswitch", "ring", "pcie")

TYPES = ("NVIDIA A100-SXM4-80GB", "NVIDIA-Tesla V100-PCIE-32GB", "NVIDIA H100 80GB HBM3")
MEMORY = {TYPES[0]: 81920, TYPES[1]: 32768, TYPES[2]: 81559}


MIG_TYPE = "NVIDIA A100-SXM4-40GB"
MIG_PROFILES = tuple(
    MigProfile(
        name=name,
        memory_mb=memory,
        slice_count=int(name.split("g.")[0]),
        placements=tuple(MigPlacement(start=s, size=size) for s in starts),
    )
    for name, memory, size, starts in (
        ("1g.5gb", 4864, 1, range(7)),
        ("1g.10gb", 9856, 2, (0, 2, 4, 6)),
        ("2g.10gb", 9856, 2, (0, 2, 4)),
        ("3g.20gb", 19968, 4, (0, 4)),
        ("4g.20gb", 19968, 4, (0,)),
        ("7g.40gb", 40192, 8, (0,)),
    )
)
# One layout per default A100-40GB geometry: (profile, start, size, memory) of every instance.
MIG_LAYOUTS = (
    tuple(("1g.5gb", s, 1, 5120) for s in range(7)),
    (("2g.10gb", 0, 2, 10240), ("2g.10gb", 2, 2, 10240), ("2g.10gb", 4, 2, 10240), ("1g.5gb", 6, 1, 5120)),
    (("3g.20gb", 0, 4, 20480), ("3g.20gb", 4, 4, 20480)),
)


def is_mig_node(n: int, mig_every: int) -> bool:
    return mig_every > 0 and n % mig_every == mig_every - 1


def machine_topology(uuids: list[str], shape: str) -> NodeTopology:
    """The fake NVML's machines: halves on two NUMA nodes, pairs 2k, 2k+1 under one PCIe switch; NVSwitch: 18
    NVLinks between every two GPUs; ring: 4 to each neighbour; PCIe only: none."""
    n = len(uuids)
    half = (n + 1) // 2
    links = []
    for i in range(n):
        for j in range(i + 1, n):
            same_node = (i >= half) == (j >= half)
            pair = same_node and i // 2 == j // 2
            if shape == "nvswitch":
                level, count = (PcieLevel.SAME_CPU if same_node else PcieLevel.CROSS_CPU), 18
            elif shape == "ring":
                level = (
                    PcieLevel.SINGLE_SWITCH if pair else PcieLevel.MULTI_SWITCH if same_node else PcieLevel.CROSS_CPU
                )
                count = 4 if (j - i) % n in (1, n - 1) else 0
            else:
                level = PcieLevel.SINGLE_SWITCH if pair else PcieLevel.HOST_BRIDGE if same_node else PcieLevel.CROSS_CPU
                count = 0
            links.append(Link(uuids[i], uuids[j], level, count))
    gpus = tuple(
        GpuTopology(uuid=u, numa=int(i >= half), nvlink_version=4 if shape != "pcie" else 0)
        for i, u in enumerate(uuids)
    )
    return NodeTopology(gpus=gpus, links=tuple(links))


def synthetic_nodes(
    count: int, gpus: int, rng: random.Random, mig_every: int = 0, topology: bool = False
) -> list[dict[str, Any]]:
    nodes = []
    for n in range(count):
        model = TYPES[n % len(TYPES)]
        if is_mig_node(n, mig_every):
            devices = [
                DeviceInfo(
                    id=f"GPU-{n:05d}-{g}",
                    index=g,
                    count=7,
                    devmem=40960,
                    devcore=100,
                    type=MIG_TYPE,
                    numa=g * 2 // gpus,
                    mode="mig",
                    mig_profiles=MIG_PROFILES,
                    health=rng.random() > 0.002,
                )
                for g in range(gpus)
            ]
        else:
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
        annotations = {names.NODE_REGISTER: encode_node_devices(devices)}
        if topology:
            shape = SHAPES[n % len(SHAPES)]
            annotations[names.NODE_TOPOLOGY] = encode_node_topology(machine_topology([d.id for d in devices], shape))
        nodes.append(
            {
                "metadata": {
                    "name": f"node-{n:05d}",
                    "labels": {"kubernetes.io/hostname": f"node-{n:05d}", "gpu": "on"},
                    "annotations": annotations,
                },
                "status": {"allocatable": {"nvidia.com/gpu": str(10 * gpus), "cpu": "64", "memory": "512Gi"}},
            }
        )
    return nodes


def synthetic_pods(
    nodes: list[dict[str, Any]], count: int, gpus: int, rng: random.Random, mig_every: int = 0
) -> list[dict[str, Any]]:
    pods = []
    taken: dict[str, int] = {}  # MIG card -> instances of its layout handed out
    for p in range(count):
        node = nodes[rng.randrange(len(nodes))]
        name = node["metadata"]["name"]
        n = int(name.split("-")[1])
        gpu = rng.randrange(gpus)
        uuid = f"GPU-{n:05d}-{gpu}"
        mem, cores = rng.choice([(2000, 0), (4000, 10), (8000, 20), (10000, 30), (16000, 25)])
        extra: dict[str, str] = {}
        if is_mig_node(n, mig_every):
            layout = MIG_LAYOUTS[(n + gpu) % len(MIG_LAYOUTS)]
            used = taken.get(uuid, 0)
            if used >= len(layout):
                continue  # the card is full: this pod does not exist
            taken[uuid] = used + 1
            profile, start, size, mem = layout[used]
            cores = 100
            reservation = MigAllocation(
                container_index=0, device_index=0, gpu_uuid=uuid, profile=profile, start=start, size=size
            )
            extra[names.MIG_ALLOCATIONS] = encode_mig_allocations([reservation])
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
                        **extra,
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


def request_pod(i: int, rng: random.Random, mig: bool = False, topology: bool = False) -> dict[str, Any]:
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
    if topology and i % 2 == 0:
        annotations[names.GPU_SCHEDULER_POLICY] = "binpack,topology-aware" if i % 7 == 0 else "topology-aware"
    if mig and i % 8 == 3:
        annotations[names.VGPU_MODE] = "mig"
    elif mig and i % 8 == 5:
        annotations[names.VGPU_MODE] = "hami-core"
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
