"""The topology publisher (app/topology.py): the pair scores handed to GetPreferredAllocation and the two Node
annotations, for the GPUs the node config keeps; an edited annotation is put back, an unchanged one is not
patched again, API errors are retried at the next round, and NVML that cannot list the GPUs leaves it all off."""

from __future__ import annotations

import itertools

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.topology import TopologyPublisher
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.topology import GpuLinks, Interconnect, NvlinkPort, node_topology
from hami_shared import names
from hami_shared.service.kube import KubeError
from hami_shared.topology import PairScores
from hami_shared.topology_codec import decode_node_topology, decode_pair_scores

NODE = "node-a"
UUIDS = [f"GPU-0000000{i}-0000-4000-8000-000000000000" for i in range(3)]
BUS = [f"00000000:{0x10 + i:02X}:00.0" for i in range(3)]


class RingDriver:
    """Double of the GPU driver's interconnect reading (adapters/nvml_topology.py): three GPUs in an NVLink ring,
    2 links per neighbour, all under one PCIe switch (NVML_TOPOLOGY_SINGLE); or NVML failing when ``fail``."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def interconnect(self) -> Interconnect:
        if self.fail:
            raise NvmlError("cannot list GPUs: Driver Not Loaded", code=9)
        gpus = tuple(
            GpuLinks(
                uuid=UUIDS[i],
                bus_id=BUS[i],
                ports=tuple(NvlinkPort(BUS[(i + d) % 3], False, 6) for d in (1, 1, 2, 2)),
            )
            for i in range(3)
        )
        return Interconnect(gpus=gpus, ancestors=dict.fromkeys(itertools.combinations(range(3), 2), 10))


class Kube:
    """Double of the plugin's KubeClient node calls: one Node's annotations, scripted failures."""

    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}
        self.patches: list[dict[str, str]] = []
        self.failures: list[KubeError] = []

    async def node_annotation(self, node: str, key: str) -> str | None:
        assert node == NODE
        return self.annotations.get(key)

    async def patch_node_annotations(self, node: str, annotations: dict[str, str]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.patches.append(dict(annotations))
        self.annotations.update(annotations)


def publisher(
    kube: Kube | None, driver: RingDriver, seen: list[PairScores], filtered: frozenset[str]
) -> TopologyPublisher:
    health = DeviceHealth(
        gpus=tuple(Gpu(uuid=u, index=i, name="NVIDIA A100-SXM4-80GB", memory_mib=81920) for i, u in enumerate(UUIDS)),
        device_config=DeviceConfig(filter_uuids=filtered),
        injection=InjectionConfig(),
        metrics=PluginMetrics.create("test"),
    )
    return TopologyPublisher(
        node=NODE,
        reader=driver,
        health=health,
        on_scores=seen.append,
        kube=kube,  # type: ignore[arg-type]
        interval=0.01,
    )


async def test_scores_and_annotations_of_the_kept_gpus() -> None:
    kube, seen = Kube(), list[PairScores]()
    pub = publisher(kube, RingDriver(), seen, frozenset({UUIDS[2]}))
    found = node_topology(RingDriver().interconnect())
    await pub.publish(found)
    # NV2 direct links + single switch: 200 + 50; GPU 2 is filtered out by the node config
    assert seen == [{UUIDS[0]: {UUIDS[1]: 250}, UUIDS[1]: {UUIDS[0]: 250}}]
    assert decode_pair_scores(kube.annotations[names.NODE_SCORE]) == seen[0]
    topology = decode_node_topology(kube.annotations[names.NODE_TOPOLOGY])
    assert [g.uuid for g in topology.gpus] == UUIDS[:2]
    assert [(g.nvlink_version, g.nvlink_ports) for g in topology.gpus] == [(4, 4), (4, 4)]
    assert len(kube.patches) == 1
    await pub.publish(found)
    assert len(kube.patches) == 1  # unchanged: read, not patched


async def test_an_edited_annotation_is_put_back_and_errors_wait_for_the_next_round() -> None:
    kube, seen = Kube(), list[PairScores]()
    pub = publisher(kube, RingDriver(), seen, frozenset())
    found = node_topology(RingDriver().interconnect())
    kube.failures.append(KubeError("node patch refused (503)"))
    await pub.publish(found)  # logged, not raised
    assert kube.patches == []
    await pub.publish(found)
    good = dict(kube.annotations)
    kube.annotations[names.NODE_SCORE] = "[]"
    await pub.publish(found)
    assert kube.patches[-1] == {names.NODE_SCORE: good[names.NODE_SCORE]}
    assert kube.annotations == good


async def test_without_the_api_only_the_scores_and_without_nvml_nothing() -> None:
    seen: list[PairScores] = []
    pub = publisher(None, RingDriver(), seen, frozenset())
    await pub.publish(node_topology(RingDriver().interconnect()))
    assert seen[0][UUIDS[0]] == {UUIDS[1]: 250, UUIDS[2]: 250}
    failing: list[PairScores] = []
    await publisher(Kube(), RingDriver(fail=True), failing, frozenset()).run()  # returns: nothing to publish
    assert failing == []
