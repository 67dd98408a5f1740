"""The NVML interconnect reading (adapters/nvml_topology.py and core/topology.py) against hamicore's fake
NVML, a test double modelling DGX-style NVSwitch, NVLink ring and PCIe-only machines with the real driver's answers:
the links, PCIe levels, NVLink generations and HAMi pair scores the plugin publishes, and the GPUs
GetPreferredAllocation then prefers for a 4-GPU container."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_NVML_DIR

# One plugin process: the driver's reading, the topology and scores derived from it, and the preferred 4 GPUs
# (one device ID each; argv[1]: device IDs kubelet offers, as "<gpu index>-<replica>").
CLIENT = r"""
import json, os, pathlib, sys
from hami_device_plugin.adapters.nvml import NvmlDriver
from hami_device_plugin.adapters.nvml_topology import NvmlInterconnect
from hami_device_plugin.core.topology import node_topology, topology_preferred
from hami_shared.topology_codec import decode_node_topology, encode_node_topology, encode_pair_scores

driver = NvmlDriver(pathlib.Path(os.environ["HAMI_TEST_NVML_LIBRARY"])).open()
topology = node_topology(NvmlInterconnect().interconnect())
assert decode_node_topology(encode_node_topology(topology)) == topology
uuids = [g.uuid for g in topology.gpus]
offered = [f"{uuids[int(i)]}-{r}" for i, r in (d.split("-") for d in json.loads(sys.argv[1]))]
chosen = topology_preferred(topology.pair_scores(), offered, [], 4)
print(json.dumps({
    "gpus": [[g.numa, g.nvlink_version, g.nvlink_ports, g.nvswitch] for g in topology.gpus],
    "links": {f"{uuids.index(l.a)},{uuids.index(l.b)}": [l.pcie.name, l.nvlinks] for l in topology.links},
    "scores": json.loads(encode_pair_scores(topology)),
    "chosen": None if chosen is None else [uuids.index(d.rsplit("-", 1)[0]) for d in chosen],
    "chosen_ids": chosen,
}))
driver.close()
"""

H100 = {"FAKE_GPU_NAMES": "NVIDIA H100 80GB HBM3", "FAKE_GPU_COMPUTE_CAPABILITY": "9.0"}
A100 = {"FAKE_GPU_NAMES": "NVIDIA A100-SXM4-80GB", "FAKE_GPU_COMPUTE_CAPABILITY": "8.0"}
L40S = {"FAKE_GPU_NAMES": "NVIDIA L40S", "FAKE_GPU_COMPUTE_CAPABILITY": "8.9"}
ALL = [f"{i}-{r}" for i in range(8) for r in range(2)]


def read(tmp: Path, offered: list[str], **env: str) -> dict[str, Any]:
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").is_file():
        pytest.fail(f"hamicore's fake NVML is not built at {FAKE_NVML_DIR}: run `make hamicore` first")
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_")},
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "HAMI_TEST_NVML_LIBRARY": str(FAKE_NVML_DIR / "libnvidia-ml.so.1"),
        "FAKE_GPU_STATE_FILE": str(tmp / "gpu.state"),
        "FAKE_GPU_COUNT": "8",
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(offered)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def halves(i: int, j: int) -> bool:
    return (i < 4) == (j < 4)


def test_dgx_nvswitch_node(tmp_path: Path) -> None:
    found = read(tmp_path, ALL, FAKE_GPU_TOPOLOGY="nvswitch", **H100)
    assert found["gpus"] == [[int(i >= 4), 4, 18, True] for i in range(8)]
    for i, j in itertools.combinations(range(8), 2):
        assert found["links"][f"{i},{j}"] == ["SAME_CPU" if halves(i, j) else "CROSS_CPU", 18]
    row = found["scores"][0]["score"]
    assert sorted(row.values()) == [1810] * 4 + [1820] * 3  # NV18 + NODE within a CPU, + SYSTEM across
    assert found["chosen"] == [0, 1, 2, 3]
    assert len(found["chosen_ids"]) == 4


def test_dgx_nvswitch_node_with_busy_gpus(tmp_path: Path) -> None:
    # GPUs 0 and 5 have no free device: no CPU has four free GPUs; 1,2,3 + one across and 4,6,7 + one across
    # score the same (3 x 1820 + 3 x 1810), better than a 2 + 2 split; the first in kubelet's order wins
    offered = [d for d in ALL if d.split("-")[0] not in ("0", "5")]
    found = read(tmp_path, offered, FAKE_GPU_TOPOLOGY="nvswitch", **H100)
    assert found["chosen"] == [1, 2, 3, 4]


def test_ring_node(tmp_path: Path) -> None:
    found = read(tmp_path, ALL, FAKE_GPU_TOPOLOGY="ring", FAKE_GPU_NVLINKS="2", **A100)
    assert found["gpus"] == [[int(i >= 4), 3, 4, False] for i in range(8)]
    for i, j in itertools.combinations(range(8), 2):
        neighbours = (j - i) % 8 in (1, 7)
        level = "SINGLE_SWITCH" if i // 2 == j // 2 else "MULTI_SWITCH" if halves(i, j) else "CROSS_CPU"
        assert found["links"][f"{i},{j}"] == [level, 2 if neighbours else 0]
    assert found["chosen"] == [0, 1, 2, 3]
    # GPU 1 busy: the ring's unbroken run of four (4-7 is one NUMA node, 3 NVLink hops)
    busy = read(
        tmp_path, [d for d in ALL if not d.startswith("1-")], FAKE_GPU_TOPOLOGY="ring", FAKE_GPU_NVLINKS="2", **A100
    )
    assert busy["chosen"] == [4, 5, 6, 7]


def test_pcie_node(tmp_path: Path) -> None:
    found = read(tmp_path, ALL, FAKE_GPU_TOPOLOGY="pcie", **L40S)
    assert found["gpus"] == [[int(i >= 4), 0, 0, False] for i in range(8)]
    for i, j in itertools.combinations(range(8), 2):
        level = "SINGLE_SWITCH" if i // 2 == j // 2 else "HOST_BRIDGE" if halves(i, j) else "CROSS_CPU"
        assert found["links"][f"{i},{j}"] == [level, 0]
    assert found["chosen"] == [0, 1, 2, 3]
    assert found["chosen_ids"] == [f"{found['scores'][i]['uuid']}-0" for i in range(4)]
