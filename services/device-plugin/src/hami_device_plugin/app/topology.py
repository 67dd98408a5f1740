"""The node's GPU interconnect: read from NVML once (the links do not change while the driver runs), handed to
GetPreferredAllocation as HAMi's pair scores, and published on the Node for the scheduler extender:
``hami.io/node-nvidia-score`` (HAMi's pair-score table) and ``hami.io/node-nvidia-topology`` (ours: the links
the scores come from), both through hami_shared.topology_codec. Only the GPUs the node config keeps are listed.
Each interval the annotations are compared with the Node's and patched when they differ (someone may have
edited them); a failed read or patch is retried at the next interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hami_shared.logging import get_logger
from hami_shared.names import NODE_SCORE, NODE_TOPOLOGY
from hami_shared.service.kube import KubeError
from hami_shared.topology import NodeTopology, PairScores
from hami_shared.topology_codec import encode_node_topology, encode_pair_scores

from hami_device_plugin.adapters.kube import KubeClient
from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.adapters.nvml_topology import InterconnectReader
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.core.inventory import usable_gpus
from hami_device_plugin.core.topology import node_topology, restrict

log = get_logger(__name__)


class TopologyPublisher:
    """Reads the interconnect, keeps the plugin's pair scores current and the Node's annotations in step."""

    def __init__(
        self,
        *,
        node: str,
        reader: InterconnectReader,
        health: DeviceHealth,
        on_scores: Callable[[PairScores], None],
        kube: KubeClient | None,
        interval: float,
    ) -> None:
        self._node, self._reader, self._health, self._on_scores = node, reader, health, on_scores
        self._kube, self._interval = kube, interval

    async def run(self) -> None:
        try:
            found = node_topology(await asyncio.to_thread(self._reader.interconnect))
        except NvmlError as exc:
            # without it the plugin works as before: kubelet's order for containers no placement names
            log.warning("gpu_topology_unreadable", node=self._node, error=str(exc))
            return
        log.info(
            "gpu_topology_read",
            node=self._node,
            gpus=len(found.gpus),
            nvlinked_pairs=sum(1 for link in found.links if link.nvlinks),
        )
        while True:
            await self.publish(found)
            await asyncio.sleep(self._interval)

    async def publish(self, found: NodeTopology) -> None:
        """One round: the scores of the GPUs the node config keeps, and the Node's annotations."""
        health = self._health
        topology = restrict(found, {g.uuid for g in usable_gpus(health.current_gpus(), health.device_config)})
        self._on_scores(topology.pair_scores())
        if self._kube is None:
            return
        wanted = {NODE_SCORE: encode_pair_scores(topology), NODE_TOPOLOGY: encode_node_topology(topology)}
        try:
            stale = {
                key: value
                for key, value in wanted.items()
                if await self._kube.node_annotation(self._node, key) != value
            }
            if stale:
                await self._kube.patch_node_annotations(self._node, stale)
                log.info("gpu_topology_published", node=self._node, annotations=sorted(stale))
        except KubeError as exc:
            log.warning("gpu_topology_patch_failed", node=self._node, error=str(exc))
