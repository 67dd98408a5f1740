"""From what NVML says about each GPU's links to the node's interconnect (hami_shared.topology), as HAMi's
``pkg/device/nvidia/links.go`` reads it, and the topology-aware choice among the devices kubelet offers.

* :func:`node_topology`: per pair, the PCIe relation is NVML's common ancestor; the NVLinks are the ports of one
  GPU whose remote PCI bus ID is the other GPU's (direct links), else, when both GPUs have ports to NVSwitches,
  the fewer of their switch ports (every port reaches every other GPU through the switches).
* :func:`topology_preferred`: for GetPreferredAllocation when no scheduled container names the devices: the
  physical GPUs HAMi's ``topology-aware`` policy picks among the available ones, one device ID of each.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Final

from hami_shared.errors import MalformedInputError
from hami_shared.pod_devices import split_slot_id
from hami_shared.topology import NVML_LEVELS, GpuTopology, Link, NodeTopology, PairScores, best_set, set_score

NVLINK_GENERATIONS: Final[Mapping[int, int]] = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5, 8: 6}
"""NVML's ``nvmlNvlinkVersion_t`` (NVML_NVLINK_VERSION_1_0 = 1 .. 6_0 = 8) to the NVLink generation."""


@dataclasses.dataclass(frozen=True, slots=True)
class NvlinkPort:
    """One active NVLink port: the PCI bus ID at its other end and whether that end is an NVSwitch."""

    remote_bus_id: str
    to_switch: bool
    version: int = 0  # NVML's nvmlNvlinkVersion_t


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GpuLinks:
    """What NVML says about one GPU's own links."""

    uuid: str
    bus_id: str
    numa: int = 0
    ports: tuple[NvlinkPort, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Interconnect:
    """NVML's answers for a node: the GPUs (index order) and the common ancestor (``NVML_TOPOLOGY_*``) of each
    pair of positions it could tell."""

    gpus: tuple[GpuLinks, ...]
    ancestors: Mapping[tuple[int, int], int]


def bus_key(bus_id: str) -> str:
    """A PCI bus ID compared as HAMi does: lower case, without a zero domain's 8- or 4-digit prefix."""
    text = bus_id.lower()
    for prefix in ("00000000:", "0000:"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def node_topology(found: Interconnect) -> NodeTopology:
    gpus = tuple(
        GpuTopology(
            uuid=g.uuid,
            numa=max(g.numa, 0),
            nvlink_version=max((NVLINK_GENERATIONS.get(p.version, 0) for p in g.ports), default=0),
            nvlink_ports=len(g.ports),
            nvswitch=any(p.to_switch for p in g.ports),
        )
        for g in found.gpus
    )
    links = []
    for i, j in itertools.combinations(range(len(found.gpus)), 2):
        level = NVML_LEVELS.get(found.ancestors.get((i, j), -1))
        if level is None:
            continue  # NVML could not tell: HAMi drops such a pair's PCIe score too
        links.append(Link(found.gpus[i].uuid, found.gpus[j].uuid, level, _nvlinks(found.gpus[i], found.gpus[j])))
    return NodeTopology(gpus=gpus, links=tuple(links))


def restrict(topology: NodeTopology, uuids: Collection[str]) -> NodeTopology:
    """The part of ``topology`` among the GPUs ``uuids`` (those the node config keeps)."""
    return NodeTopology(
        gpus=tuple(g for g in topology.gpus if g.uuid in uuids),
        links=tuple(link for link in topology.links if link.a in uuids and link.b in uuids),
    )


def _nvlinks(a: GpuLinks, b: GpuLinks) -> int:
    direct = sum(1 for p in a.ports if bus_key(p.remote_bus_id) == bus_key(b.bus_id))
    if direct:
        return direct
    via_a = sum(1 for p in a.ports if p.to_switch)
    via_b = sum(1 for p in b.ports if p.to_switch)
    return min(via_a, via_b) if via_a and via_b else 0


MAX_MUST_COMBINATIONS: Final = 20_000
"""Sets tried when kubelet fixes some devices (``must_include``): more and the plugin's default order answers."""


def topology_preferred(
    scores: PairScores, available: Sequence[str], must_include: Sequence[str], size: int
) -> tuple[str, ...] | None:
    """Device IDs for a container of ``size`` devices on distinct GPUs (one device ID of each GPU, as the
    scheduler gives a multi-GPU container): HAMi's topology-aware set among the GPUs with an available device,
    with the GPUs of ``must_include`` kept. None when that is not possible (a device ID that is not ours, two
    required IDs of one GPU, fewer GPUs than ``size``): the caller falls back to its default order."""
    replicas: dict[str, str] = {}  # GPU -> the device ID to give of it (the required one, else the first)
    for device_id in [*must_include, *available]:
        try:
            uuid, _ = split_slot_id(device_id)
        except MalformedInputError:
            return None
        replicas.setdefault(uuid, device_id)
    must = list(dict.fromkeys(split_slot_id(d)[0] for d in must_include))
    if len(must) != len(set(must_include)) or len(must) > size or len(replicas) < size:
        return None
    free = [uuid for uuid in replicas if uuid not in must]
    chosen = _choose(scores, must, free, size)
    return None if chosen is None else tuple(replicas[uuid] for uuid in chosen)


def _choose(scores: PairScores, must: list[str], free: list[str], size: int) -> list[str] | None:
    if not must:
        choice = best_set(scores, free, size)
        return None if choice is None else list(choice.uuids)
    rest = size - len(must)
    if math.comb(len(free), rest) > MAX_MUST_COMBINATIONS:
        return None
    # the required GPUs are fixed; the others maximise the set's score with them (the first best, in order)
    best = max(
        itertools.combinations(free, rest),
        key=lambda combo: set_score(scores, [*must, *combo]),
    )
    return [*must, *best]
