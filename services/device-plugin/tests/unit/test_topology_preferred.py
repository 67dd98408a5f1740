"""The interconnect as the plugin derives it from NVML's answers (core/topology.py, HAMi's links.go rules) and
GetPreferredAllocation's topology-aware steering: a placement the extender made (its slots) still wins; a
multi-GPU container no placement names gets HAMi's best-connected set, one device ID per GPU; one device keeps
kubelet's order."""

from __future__ import annotations

import asyncio
import itertools

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.plugin import DevicePluginState
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.topology import (
    GpuLinks,
    Interconnect,
    NvlinkPort,
    node_topology,
    restrict,
    topology_preferred,
)
from hami_shared.topology import NodeTopology, PcieLevel, set_score
from podspecs import Ctr, pod_json

NODE = "node-a"
UUIDS = [f"GPU-0000000{i}-0000-4000-8000-000000000000" for i in range(8)]
BUS = [f"00000000:{0x10 + i:02X}:00.0" for i in range(8)]
SYSTEM, NODE_LEVEL, HOSTBRIDGE, SINGLE = 50, 40, 30, 10  # NVML_TOPOLOGY_*


def pcie_node() -> NodeTopology:
    """8 PCIe GPUs: pairs under a switch, halves under a host bridge each (the fake NVML's "pcie")."""
    ancestors = {}
    for i, j in itertools.combinations(range(8), 2):
        same = (i < 4) == (j < 4)
        ancestors[(i, j)] = SINGLE if i // 2 == j // 2 else HOSTBRIDGE if same else SYSTEM
    gpus = tuple(GpuLinks(uuid=UUIDS[i], bus_id=BUS[i], numa=int(i >= 4)) for i in range(8))
    return node_topology(Interconnect(gpus=gpus, ancestors=ancestors))


def test_direct_nvlinks_count_the_ports_that_reach_the_peer() -> None:
    # GPU 0 has 2 ports to GPU 1 (remote bus ID in NVML's 8-digit domain form or the short one) and 1 to GPU 2
    ports0 = (NvlinkPort(BUS[1], False, 6), NvlinkPort("0000:11:00.0", False, 6), NvlinkPort(BUS[2].lower(), False, 6))
    gpus = (
        GpuLinks(uuid=UUIDS[0], bus_id=BUS[0], ports=ports0),
        GpuLinks(uuid=UUIDS[1], bus_id=BUS[1], ports=(NvlinkPort(BUS[0], False, 6),) * 2),
        GpuLinks(uuid=UUIDS[2], bus_id=BUS[2], ports=(NvlinkPort(BUS[0], False, 6),)),
    )
    topology = node_topology(Interconnect(gpus=gpus, ancestors={(0, 1): SINGLE, (0, 2): SYSTEM}))
    links = {(link.a, link.b): (link.pcie, link.nvlinks) for link in topology.links}
    assert links == {
        (UUIDS[0], UUIDS[1]): (PcieLevel.SINGLE_SWITCH, 2),
        (UUIDS[0], UUIDS[2]): (PcieLevel.CROSS_CPU, 1),
        # (1, 2): NVML could not tell their common ancestor: no link, as HAMi scores such a pair 0
    }
    assert [(g.nvlink_version, g.nvlink_ports, g.nvswitch) for g in topology.gpus] == [
        (4, 3, False),
        (4, 2, False),
        (4, 1, False),
    ]
    assert topology.pair_scores()[UUIDS[0]] == {UUIDS[1]: 250, UUIDS[2]: 110}


def test_nvswitch_links_are_the_fewer_switch_ports_of_the_two() -> None:
    switch = NvlinkPort("00000000:A0:00.0", True, 6)
    gpus = (
        GpuLinks(uuid=UUIDS[0], bus_id=BUS[0], ports=(switch,) * 18),
        GpuLinks(uuid=UUIDS[1], bus_id=BUS[1], ports=(switch,) * 12),  # a degraded GPU: 6 ports down
        GpuLinks(uuid=UUIDS[2], bus_id=BUS[2]),  # no NVLink at all
    )
    ancestors = {(0, 1): NODE_LEVEL, (0, 2): NODE_LEVEL, (1, 2): NODE_LEVEL}
    topology = node_topology(Interconnect(gpus=gpus, ancestors=ancestors))
    assert [link.nvlinks for link in topology.links] == [12, 0, 0]
    assert topology.gpus[0].nvswitch
    assert not topology.gpus[2].nvswitch


def test_restrict_keeps_only_the_listed_gpus() -> None:
    kept = restrict(pcie_node(), set(UUIDS[:3]))
    assert [g.uuid for g in kept.gpus] == UUIDS[:3]
    assert len(kept.links) == 3


def test_the_best_connected_gpus_one_device_each() -> None:
    scores = pcie_node().pair_scores()
    available = [f"{u}-{r}" for u in UUIDS for r in range(3)]
    assert topology_preferred(scores, available, [], 4) == tuple(f"{u}-0" for u in UUIDS[:4])
    # GPU 0 busy (no free device): the intact half
    without_0 = [d for d in available if not d.startswith(UUIDS[0])]
    assert topology_preferred(scores, without_0, [], 4) == tuple(f"{u}-0" for u in UUIDS[4:])
    # kubelet must keep replica 2 of GPU 5: the rest maximises the score with it (its switch partner 4 first)
    chosen = topology_preferred(scores, available, [f"{UUIDS[5]}-2"], 2)
    assert chosen == (f"{UUIDS[5]}-2", f"{UUIDS[4]}-0")
    best4 = topology_preferred(scores, available, [f"{UUIDS[5]}-2"], 4)
    assert best4 is not None
    gpus = [d.rsplit("-", 1)[0] for d in best4]
    assert set(gpus) == set(UUIDS[4:])
    assert set_score(scores, gpus) == max(
        set_score(scores, [UUIDS[5], *rest]) for rest in itertools.combinations(UUIDS[:5] + UUIDS[6:], 3)
    )


def test_no_topology_answer_for_what_it_cannot_do() -> None:
    scores = pcie_node().pair_scores()
    two_gpus = [f"{UUIDS[0]}-0", f"{UUIDS[0]}-1", f"{UUIDS[1]}-0"]
    assert topology_preferred(scores, two_gpus, [], 3) is None  # three devices on two GPUs
    assert topology_preferred(scores, ["not-ours"], [], 1) is None
    assert topology_preferred(scores, two_gpus, [f"{UUIDS[0]}-0", f"{UUIDS[0]}-1"], 2) is None  # one GPU twice


def state(pods: PodCache | None) -> DevicePluginState:
    plugin = DevicePluginState(
        node=NODE,
        gpus=tuple(Gpu(uuid=u, index=i, name="NVIDIA L40S", memory_mib=46068) for i, u in enumerate(UUIDS)),
        device_config=DeviceConfig(),
        injection=InjectionConfig(),
        metrics=PluginMetrics.create("test"),
        pods=pods,
        allocate_wait=0.2,
    )
    plugin.topology_scores = pcie_node().pair_scores()
    return plugin


AVAILABLE = [f"{u}-{r}" for u in UUIDS for r in range(10)]


async def test_preferred_keeps_the_extenders_slots() -> None:
    cache = PodCache()
    # the extender placed this 4-GPU container across the CPUs (e.g. binpack); its slots stay the answer
    scheduled = [(UUIDS[i], 3, 1000, 0) for i in (0, 2, 4, 6)]
    cache.replace([pod_json("placed", uid="uid-placed", node=NODE, containers=[Ctr("main", scheduled)])])
    plugin = state(cache)
    assert await plugin.preferred(AVAILABLE, [], 4) == tuple(f"{UUIDS[i]}-3" for i in (0, 2, 4, 6))


async def test_preferred_steers_an_unplaced_multi_gpu_container_by_topology() -> None:
    cache = PodCache()
    cache.replace([])
    plugin = state(cache)
    # kubelet's own order would be four replicas of GPU 0; no pod names devices: the best-connected 4 GPUs
    without_1 = [d for d in AVAILABLE if not d.startswith(UUIDS[1])]
    chosen = await asyncio.wait_for(plugin.preferred(without_1, [], 4), timeout=5)
    assert chosen == tuple(f"{u}-0" for u in UUIDS[4:])
    # a single device keeps kubelet's order
    assert await plugin.preferred(AVAILABLE, [], 1) == (f"{UUIDS[0]}-0",)


async def test_preferred_without_the_api_uses_the_topology_too() -> None:
    plugin = state(None)
    assert await plugin.preferred(AVAILABLE, [], 2) == (f"{UUIDS[0]}-0", f"{UUIDS[1]}-0")
    plugin.topology_scores = {}  # NVML could not tell: kubelet's order
    assert await plugin.preferred(AVAILABLE, [], 2) == (f"{UUIDS[0]}-0", f"{UUIDS[0]}-1")


def test_hamis_env_turns_the_topology_score_off() -> None:
    from hami_device_plugin.app.settings import PROGRAM

    assert PROGRAM.load_settings(["--no-kubernetes"], {}).enable_topology_score
    assert not PROGRAM.load_settings(["--no-kubernetes"], {"ENABLE_TOPOLOGY_SCORE": "false"}).enable_topology_score
    assert not PROGRAM.load_settings(["--no-kubernetes", "--no-enable-topology-score"], {}).enable_topology_score
