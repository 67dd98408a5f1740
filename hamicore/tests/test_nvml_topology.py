"""The interconnect in the fake NVML (fake_topology.c), read through pynvml as the device plugin reads it: PCIe
common ancestors, P2P status, NVLink state / version / remote PCI info / remote device type per link and CPU
affinity, for the modelled machines (DGX-style NVSwitch, NVLink ring, PCIe only), with the real driver's error
codes (NOT_SUPPORTED on cards without NVLink or past a card's ports, INVALID_ARGUMENT past NVML's link range)."""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import pytest
from conftest import Hami

# nvml.h values (pynvml is only in the client processes: it has no type information)
NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED = 2, 3
NVML_FEATURE_DISABLED, NVML_FEATURE_ENABLED = 0, 1
NVML_NVLINK_VERSION_3_0, NVML_NVLINK_VERSION_4_0 = 4, 6
NVML_NVLINK_DEVICE_TYPE_GPU, NVML_NVLINK_DEVICE_TYPE_SWITCH = 0, 2
NVML_P2P_STATUS_OK, NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED, NVML_P2P_STATUS_NOT_SUPPORTED = 0, 1, 5
NVML_TOPOLOGY_INTERNAL, NVML_TOPOLOGY_SINGLE, NVML_TOPOLOGY_MULTIPLE = 0, 10, 20
NVML_TOPOLOGY_HOSTBRIDGE, NVML_TOPOLOGY_NODE, NVML_TOPOLOGY_SYSTEM = 30, 40, 50

H100 = {"FAKE_GPU_NAMES": "NVIDIA H100 80GB HBM3", "FAKE_GPU_COMPUTE_CAPABILITY": "9.0"}
A100 = {"FAKE_GPU_NAMES": "NVIDIA A100-SXM4-80GB", "FAKE_GPU_COMPUTE_CAPABILITY": "8.0"}

# Dumps what NVML says about every GPU, link and pair: {"gpus": [...], "pairs": {"i,j": {...}}}; a failing call
# is recorded as {"err": NVML return code}.
DUMP = r"""
import json, pynvml as n
n.nvmlInit()

def call(f, *args):
    try:
        value = f(*args)
    except n.NVMLError as e:
        return {"err": e.value}
    return value.decode() if isinstance(value, bytes) else value

def bus(pci):
    return pci if isinstance(pci, dict) else (pci.busId.decode() if isinstance(pci.busId, bytes) else pci.busId)

handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
gpus = []
for h in handles:
    links = []
    for link in range(n.NVML_NVLINK_MAX_LINKS + 1):
        state = call(n.nvmlDeviceGetNvLinkState, h, link)
        entry = {"state": state}
        if state == n.NVML_FEATURE_ENABLED or state == n.NVML_FEATURE_DISABLED:
            entry["version"] = call(n.nvmlDeviceGetNvLinkVersion, h, link)
            entry["remote"] = bus(call(n.nvmlDeviceGetNvLinkRemotePciInfo, h, link))
            entry["type"] = call(n.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
        links.append(entry)
    affinity = call(n.nvmlDeviceGetCpuAffinity, h, 2)
    gpus.append({
        "bus": bus(n.nvmlDeviceGetPciInfo(h)),
        "numa": call(n.nvmlDeviceGetNumaNodeId, h),
        "cpus": affinity if isinstance(affinity, dict) else [int(w) for w in affinity],
        "links": links,
    })
pairs = {}
for i, a in enumerate(handles):
    for j, b in enumerate(handles):
        p2p = {str(k): call(n.nvmlDeviceGetP2PStatus, a, b, k) for k in range(n.NVML_P2P_CAPS_INDEX_UNKNOWN + 1)}
        pairs[f"{i},{j}"] = {"ancestor": call(n.nvmlDeviceGetTopologyCommonAncestor, a, b), "p2p": p2p}
print(json.dumps({"gpus": gpus, "pairs": pairs}))
"""

NOT_SUPPORTED = {"err": NVML_ERROR_NOT_SUPPORTED}
INVALID = {"err": NVML_ERROR_INVALID_ARGUMENT}
NVLINK = "2"  # nvmlGpuP2PCapsIndex_t by value (pynvml defines READ as a tuple)
READ = "0"
PCI = "4"


def dump(hami: Hami, count: int, **env: str) -> dict[str, Any]:
    out = hami.python(DUMP, preload=False, timeout=120, FAKE_GPU_COUNT=str(count), **env)
    result: dict[str, Any] = json.loads(out)
    return result


def active(gpu: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in gpu["links"] if link["state"] == NVML_FEATURE_ENABLED]


def ancestor(topo: dict[str, Any], i: int, j: int) -> int:
    level: int = topo["pairs"][f"{i},{j}"]["ancestor"]
    return level


def p2p(topo: dict[str, Any], i: int, j: int, index: str) -> Any:
    return topo["pairs"][f"{i},{j}"]["p2p"][index]


def test_dgx_nvswitch_every_port_reaches_a_switch(hami: Hami) -> None:
    topo = dump(hami, 8, FAKE_GPU_TOPOLOGY="nvswitch", **H100)
    gpus = topo["gpus"]
    buses = {g["bus"] for g in gpus}
    switches: set[str] = set()
    for i, gpu in enumerate(gpus):
        ports = active(gpu)
        assert len(ports) == 18  # H100 SXM: NVLink 4, 18 ports, all up
        assert all(p["version"] == NVML_NVLINK_VERSION_4_0 for p in ports)
        assert all(p["type"] == NVML_NVLINK_DEVICE_TYPE_SWITCH for p in ports)
        assert not {p["remote"] for p in ports} & buses  # the remote end is an NVSwitch, never a GPU
        switches |= {p["remote"] for p in ports}
        assert all(link["state"] == NOT_SUPPORTED for link in gpu["links"][18:36])  # ports this card lacks
        assert gpu["links"][36]["state"] == INVALID  # past NVML_NVLINK_MAX_LINKS
        assert gpu["numa"] == (0 if i < 4 else 1)
        assert gpu["cpus"] == ([0xFFFFFFFF, 0] if i < 4 else [0xFFFFFFFF << 32, 0])
    assert len(switches) == 4  # HGX H100: four NVSwitch chips
    for i, j in combinations(range(8), 2):
        assert p2p(topo, i, j, NVLINK) == NVML_P2P_STATUS_OK
        assert p2p(topo, i, j, READ) == NVML_P2P_STATUS_OK
        same_node = (i < 4) == (j < 4)
        assert ancestor(topo, i, j) == (NVML_TOPOLOGY_NODE if same_node else NVML_TOPOLOGY_SYSTEM)
        assert ancestor(topo, i, j) == ancestor(topo, j, i)


def test_ring_links_each_gpu_to_its_two_neighbours(hami: Hami) -> None:
    topo = dump(hami, 8, FAKE_GPU_TOPOLOGY="ring", FAKE_GPU_NVLINKS="2", **A100)
    gpus = topo["gpus"]
    for i, gpu in enumerate(gpus):
        ports = active(gpu)
        assert all(p["version"] == NVML_NVLINK_VERSION_3_0 for p in ports)
        assert all(p["type"] == NVML_NVLINK_DEVICE_TYPE_GPU for p in ports)
        peers = sorted(p["remote"] for p in ports)
        assert peers == sorted([gpus[(i + 1) % 8]["bus"]] * 2 + [gpus[(i - 1) % 8]["bus"]] * 2)
        # the card's other ports exist but are down: DISABLED, and their remote end is unknown
        down = [link for link in gpu["links"][:12] if link["state"] == NVML_FEATURE_DISABLED]
        assert len(down) == 8
        assert all(link["remote"] == NOT_SUPPORTED for link in down)
        assert all(link["state"] == NOT_SUPPORTED for link in gpu["links"][12:36])  # A100: 12 ports
    for i, j in combinations(range(8), 2):
        neighbours = (j - i) % 8 in (1, 7)
        expected = NVML_P2P_STATUS_OK if neighbours else NVML_P2P_STATUS_NOT_SUPPORTED
        assert p2p(topo, i, j, NVLINK) == expected
        same_node, pair = (i < 4) == (j < 4), i // 2 == j // 2
        level = NVML_TOPOLOGY_SINGLE if pair else NVML_TOPOLOGY_MULTIPLE if same_node else NVML_TOPOLOGY_SYSTEM
        assert ancestor(topo, i, j) == level


def test_ring_of_two_joins_both_neighbour_sets(hami: Hami) -> None:
    topo = dump(hami, 2, FAKE_GPU_TOPOLOGY="ring", FAKE_GPU_NVLINKS="3", **H100)
    for i, gpu in enumerate(topo["gpus"]):
        assert [p["remote"] for p in active(gpu)] == [topo["gpus"][1 - i]["bus"]] * 6


def test_pcie_only_has_no_nvlink_and_a_switch_tree(hami: Hami) -> None:
    topo = dump(hami, 8, FAKE_GPU_TOPOLOGY="pcie", FAKE_GPU_NAMES="NVIDIA L40S", FAKE_GPU_COMPUTE_CAPABILITY="8.9")
    for gpu in topo["gpus"]:
        assert all(link["state"] == NOT_SUPPORTED for link in gpu["links"][:36])
        assert gpu["links"][36]["state"] == INVALID
    for i, j in combinations(range(8), 2):
        same_node, pair = (i < 4) == (j < 4), i // 2 == j // 2
        level = NVML_TOPOLOGY_SINGLE if pair else NVML_TOPOLOGY_HOSTBRIDGE if same_node else NVML_TOPOLOGY_SYSTEM
        assert ancestor(topo, i, j) == level
        assert p2p(topo, i, j, NVLINK) == NVML_P2P_STATUS_NOT_SUPPORTED
        pcie = NVML_P2P_STATUS_OK if same_node else NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED
        assert p2p(topo, i, j, READ) == pcie
        assert p2p(topo, i, j, PCI) == pcie


def test_p2p_and_ancestor_arguments_are_checked(hami: Hami) -> None:
    topo = dump(hami, 2, FAKE_GPU_TOPOLOGY="pcie")
    assert ancestor(topo, 0, 0) == NVML_TOPOLOGY_INTERNAL
    assert p2p(topo, 0, 0, READ) == INVALID  # a GPU with itself
    assert p2p(topo, 0, 1, "5") == INVALID


@pytest.mark.parametrize("numa", ["", "0,1"])
def test_without_a_topology_the_old_answers_stay(hami: Hami, numa: str) -> None:
    topo = dump(hami, 2, **({"FAKE_GPU_NUMA_NODES": numa} if numa else {}))
    assert all(link["state"] == NOT_SUPPORTED for link in topo["gpus"][0]["links"][:36])
    level = NVML_TOPOLOGY_SYSTEM if numa else NVML_TOPOLOGY_HOSTBRIDGE
    assert ancestor(topo, 0, 1) == level
