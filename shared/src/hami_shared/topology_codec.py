"""Codecs of the node's GPU interconnect, written by the device plugin and read by the scheduler extender.

* ``hami.io/node-nvidia-score`` (HAMi's, :data:`~hami_shared.names.NODE_SCORE`): HAMi's pair-score table, a JSON
  array of ``{"uuid": <gpu>, "score": {<peer uuid>: <int>}}`` (``pkg/device/nvidia/calculate_score.go``), which
  HAMi's scheduler reads for its ``topology-aware`` policy.
* ``hami.io/node-nvidia-topology`` (ours, :data:`~hami_shared.names.NODE_TOPOLOGY`): what the scores are made of,
  versioned: ``{"version": 1, "gpus": [{"uuid", "numa", "nvlinkVersion", "nvlinkPorts", "nvswitch"}],
  "links": [{"a": <gpu position>, "b": <gpu position>, "pcie": <level>, "nvlinks": <n>}]}`` with ``pcie`` one of
  ``internal single multiple hostbridge node system`` (NVML's ``NVML_TOPOLOGY_*`` names); zero and false fields
  are omitted. HAMi has no such field.

Both decoders treat the value as untrusted (anyone allowed to patch the node may have written it): they are
total (a value or :class:`~hami_shared.errors.MalformedInputError`) and bounded: the length and the JSON nesting
are checked before parsing, numbers are converted only when short, and counts and values have limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.bounds import INT32_MAX, KIB, MAX_NODE_DEVICES, MAX_UUID_CHARS, describe, require_text
from hami_shared.errors import MalformedInputError
from hami_shared.names import NODE_SCORE, NODE_TOPOLOGY
from hami_shared.node_register import (
    _json_depth_within,  # one bounded JSON reader for every node annotation
    _parse_json_int,
    _refuse_json_constant,
)
from hami_shared.topology import GpuTopology, Link, NodeTopology, PcieLevel

TOPOLOGY_VERSION: Final = 1
MAX_TOPOLOGY_GPUS: Final = 32
"""GPUs of one node in the topology annotation (the largest nodes have 16 to 20)."""
MAX_TOPOLOGY_CHARS: Final = 64 * KIB  # 32 GPUs: 496 links of about 50 characters
MAX_SCORE_CHARS: Final = 64 * KIB  # 32 GPUs: 32 x 31 entries of about 50 characters
MAX_NVLINKS: Final = 36  # NVML_NVLINK_MAX_LINKS
MAX_NVLINK_VERSION: Final = 16
MAX_NUMA_NODE: Final = 1023
MAX_DEPTH: Final = 4

PCIE_NAMES: Final[Mapping[PcieLevel, str]] = {
    PcieLevel.SAME_BOARD: "internal",
    PcieLevel.SINGLE_SWITCH: "single",
    PcieLevel.MULTI_SWITCH: "multiple",
    PcieLevel.HOST_BRIDGE: "hostbridge",
    PcieLevel.SAME_CPU: "node",
    PcieLevel.CROSS_CPU: "system",
}
_PCIE_BY_NAME: Final = {name: level for level, name in PCIE_NAMES.items()}


def encode_node_topology(topology: NodeTopology) -> str:
    """Our topology annotation (compact JSON, zero fields omitted)."""
    position = {g.uuid: i for i, g in enumerate(topology.gpus)}
    gpus = [
        {"uuid": g.uuid}
        | _non_zero(
            ("numa", g.numa),
            ("nvlinkVersion", g.nvlink_version),
            ("nvlinkPorts", g.nvlink_ports),
            ("nvswitch", g.nvswitch),
        )
        for g in topology.gpus
    ]
    links = [
        {"a": position[link.a], "b": position[link.b], "pcie": PCIE_NAMES[link.pcie]}
        | _non_zero(("nvlinks", link.nvlinks))
        for link in topology.links
        if link.a in position and link.b in position
    ]
    return _dumps({"version": TOPOLOGY_VERSION, "gpus": gpus, "links": links})


def encode_pair_scores(topology: NodeTopology) -> str:
    """HAMi's ``hami.io/node-nvidia-score`` value (Go's JSON: map keys sorted)."""
    table = topology.pair_scores()
    return _dumps([{"uuid": g.uuid, "score": dict(sorted(table[g.uuid].items()))} for g in topology.gpus])


def decode_node_topology(value: str) -> NodeTopology:
    raw = _loads(NODE_TOPOLOGY, value, MAX_TOPOLOGY_CHARS)
    if not isinstance(raw, dict):
        raise MalformedInputError(NODE_TOPOLOGY, describe(raw), "expected a JSON object")
    version = raw.get("version")
    if version != TOPOLOGY_VERSION:
        raise MalformedInputError(
            NODE_TOPOLOGY,
            describe(version),
            f"version {describe(version)} is not {TOPOLOGY_VERSION}, the one this release reads; run the device "
            "plugin and the scheduler extender of one release",
        )
    gpus_raw = _list(raw.get("gpus"), "gpus", MAX_TOPOLOGY_GPUS)
    gpus = tuple(_gpu(item) for item in gpus_raw)
    uuids = [g.uuid for g in gpus]
    if len(set(uuids)) != len(uuids):
        raise MalformedInputError(NODE_TOPOLOGY, ",".join(uuids), "lists a GPU twice")
    links_raw = _list(raw.get("links"), "links", len(gpus) * (len(gpus) - 1) // 2)
    links = []
    seen: set[tuple[int, int]] = set()
    for item in links_raw:
        a, b, link = _link(item, uuids)
        if (a, b) in seen:
            raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "lists a pair of GPUs twice")
        seen.add((a, b))
        links.append(link)
    return NodeTopology(gpus=gpus, links=tuple(links))


def decode_pair_scores(value: str) -> dict[str, dict[str, int]]:
    """HAMi's pair-score table from ``hami.io/node-nvidia-score``."""
    raw = _loads(NODE_SCORE, value, MAX_SCORE_CHARS)
    if not isinstance(raw, list):
        raise MalformedInputError(NODE_SCORE, describe(raw), "expected a JSON array of GPUs")
    if len(raw) > MAX_NODE_DEVICES:
        raise MalformedInputError(NODE_SCORE, describe(raw), f"lists more than {MAX_NODE_DEVICES} GPUs")
    table: dict[str, dict[str, int]] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise MalformedInputError(NODE_SCORE, _preview(item), "each GPU must be a JSON object")
        uuid = _uuid(NODE_SCORE, item, item.get("uuid"))
        scores = item.get("score", {})
        if not isinstance(scores, dict) or len(scores) > MAX_NODE_DEVICES:
            raise MalformedInputError(NODE_SCORE, _preview(item), f"score must map at most {MAX_NODE_DEVICES} GPUs")
        row = {}
        for peer, score in scores.items():
            if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= INT32_MAX:
                raise MalformedInputError(NODE_SCORE, _preview(item), f"score of {peer[:64]} is not in 0..{INT32_MAX}")
            row[_uuid(NODE_SCORE, item, peer)] = score
        if uuid in table:
            raise MalformedInputError(NODE_SCORE, _preview(item), "lists a GPU twice")
        table[uuid] = row
    return table


def node_pair_scores(annotations: Mapping[str, str]) -> dict[str, dict[str, int]] | None:
    """A Node's pair scores from its annotations: ours when present (what the scores are made of), else HAMi's
    table (a HAMi device plugin's node); None when the node has neither. Raises :class:`MalformedInputError`
    for a malformed value (ours is not passed over for HAMi's then: the node's publisher is broken)."""
    if NODE_TOPOLOGY in annotations:
        return decode_node_topology(annotations[NODE_TOPOLOGY]).pair_scores()
    if NODE_SCORE in annotations:
        return decode_pair_scores(annotations[NODE_SCORE])
    return None


# ---------------------------------------------------------------- helpers


def _non_zero(*fields: tuple[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields if value}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(what: str, value: str, max_chars: int) -> Any:
    text = require_text(value, what, max_chars)
    if not _json_depth_within(text, MAX_DEPTH):
        raise MalformedInputError(what, text, f"not valid JSON, or JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_parse_json_int, parse_constant=_refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedInputError(what, text, f"not valid JSON: {exc}") from exc


def _preview(item: Any) -> str:
    try:
        return _dumps(item)[:200]
    except (TypeError, ValueError):
        return describe(item)


def _list(value: Any, field: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedInputError(NODE_TOPOLOGY, describe(value), f"{field} must be a JSON array")
    if len(value) > limit:
        raise MalformedInputError(NODE_TOPOLOGY, describe(value), f"{field} lists more than {limit} items")
    return value


def _uuid(what: str, item: Any, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_UUID_CHARS:
        raise MalformedInputError(
            what, _preview(item), f"a GPU UUID must be a string of 1..{MAX_UUID_CHARS} characters"
        )
    return value


def _int(item: Any, field: str, high: int) -> int:
    value = item.get(field, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), f"{field} must be an integer in 0..{high}")
    return value


def _gpu(item: Any) -> GpuTopology:
    if not isinstance(item, dict):
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "each GPU must be a JSON object")
    nvswitch = item.get("nvswitch", False)
    if not isinstance(nvswitch, bool):
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "nvswitch must be true or false")
    return GpuTopology(
        uuid=_uuid(NODE_TOPOLOGY, item, item.get("uuid")),
        numa=_int(item, "numa", MAX_NUMA_NODE),
        nvlink_version=_int(item, "nvlinkVersion", MAX_NVLINK_VERSION),
        nvlink_ports=_int(item, "nvlinkPorts", MAX_NVLINKS),
        nvswitch=nvswitch,
    )


def _link(item: Any, uuids: list[str]) -> tuple[int, int, Link]:
    if not isinstance(item, dict):
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "each link must be a JSON object")
    top = len(uuids) - 1
    a, b = _int(item, "a", max(top, 0)), _int(item, "b", max(top, 0))
    if a >= b or b > top:
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "a link joins two listed GPUs, a before b")
    name = item.get("pcie")
    pcie = _PCIE_BY_NAME.get(name) if isinstance(name, str) else None
    if pcie is None:
        raise MalformedInputError(NODE_TOPOLOGY, _preview(item), "pcie must be one of " + " ".join(_PCIE_BY_NAME))
    return a, b, Link(uuids[a], uuids[b], pcie, _int(item, "nvlinks", MAX_NVLINKS))
