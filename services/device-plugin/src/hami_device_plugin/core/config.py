"""The device configuration of this node: defaults from the settings, overridden per node.

HAMi's per-node file (ConfigMap ``<release>-device-plugin``, ``config.json``) is
``{"nodeconfig": [{"name": <node>, ...}]}``; the entry whose ``name`` is this node overrides the
defaults with HAMi's keys (:data:`_KEYS`, and ``filterdevices``). A wrong value is refused with its key path; an
unknown key is ignored, as HAMi's Go decoder does, and reported (:func:`node_config_warnings`) so a typo shows up
in the log.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.node_register import KNOWN_MODES, MODE_HAMI_CORE, MODE_MIG

from hami_device_plugin.core.backstop import OBSERVE, POLICIES

MIG_STRATEGY_NONE: Final = "none"
MIG_STRATEGY_SINGLE: Final = "single"
MIG_STRATEGY_MIXED: Final = "mixed"
MIG_STRATEGIES: Final = (MIG_STRATEGY_NONE, MIG_STRATEGY_SINGLE, MIG_STRATEGY_MIXED)
"""NVIDIA's ``--mig-strategy`` values for instances an operator made by hand (static MIG, core/mig_static.py)."""

MAX_SPLIT_COUNT: Final = 1024
"""Upper bound on replicas per GPU: kubelet's ListAndWatch message must stay well under 4 MiB."""


class NodeConfigError(ValueError):
    """The per-node configuration cannot be used; the message names the key and what to write."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """How this node's GPUs are advertised and registered."""

    split_count: int = 10
    memory_scaling: float = 1.0
    cores_scaling: float = 1.0
    preconfigured_memory_mib: int = 0
    """Memory to register for GPUs whose NVML memory query is unsupported (0 = skip such GPUs)."""
    filter_uuids: frozenset[str] = frozenset()
    filter_indices: frozenset[int] = frozenset()
    mode: str = MODE_HAMI_CORE
    libcuda_log_level: int | None = None
    numa_topology: bool = False
    preferred_allocation: bool = True
    memory_policy: str = OBSERVE
    """The node backstop's policy for a container over its memory limit (core/backstop.py)."""
    mig_strategy: str = MIG_STRATEGY_NONE
    """Static MIG: how operator-made instances are advertised (``none``: not at all)."""

    def __post_init__(self) -> None:
        if not 1 <= self.split_count <= MAX_SPLIT_COUNT:
            raise NodeConfigError(f"split count {self.split_count} must be between 1 and {MAX_SPLIT_COUNT}")
        if not 0 < self.memory_scaling <= 100:
            raise NodeConfigError(f"memory scaling {self.memory_scaling} must be > 0 and <= 100")
        if not 0 < self.cores_scaling <= 100:
            raise NodeConfigError(f"cores scaling {self.cores_scaling} must be > 0 and <= 100")
        if self.preconfigured_memory_mib < 0:
            raise NodeConfigError("preconfigured device memory must be >= 0 MiB")
        if self.mode not in KNOWN_MODES:
            raise NodeConfigError(
                f"operating mode {self.mode!r} is not one of {sorted(KNOWN_MODES)} (operatingmode: hami-core shares "
                "GPUs through hamicore, mig creates MIG instances per pod, mps is hami-core under another label)"
            )
        if self.mig_strategy not in MIG_STRATEGIES:
            raise NodeConfigError(
                f"MIG strategy {self.mig_strategy!r} is not one of {list(MIG_STRATEGIES)} (migstrategy: none, or "
                "single/mixed to advertise MIG instances made by hand)"
            )
        if self.mode == MODE_MIG and self.mig_strategy != MIG_STRATEGY_NONE:
            raise NodeConfigError(
                f"operating mode mig manages MIG instances itself and cannot be combined with MIG strategy "
                f"{self.mig_strategy!r}: set migstrategy none for dynamic MIG, or operatingmode hami-core with "
                "migstrategy single/mixed for instances made by hand"
            )
        if self.libcuda_log_level is not None and not 0 <= self.libcuda_log_level <= 5:
            raise NodeConfigError(f"libcuda log level {self.libcuda_log_level} must be between 0 and 5")
        if self.memory_policy not in POLICIES:
            raise NodeConfigError(f"GPU memory policy {self.memory_policy!r} is not one of {list(POLICIES)}")

    def is_filtered(self, uuid: str, index: int) -> bool:
        return uuid in self.filter_uuids or index in self.filter_indices


_KEYS: Final = {
    "devicesplitcount": "split_count",
    "devicememoryscaling": "memory_scaling",
    "devicecorescaling": "cores_scaling",
    "preconfigureddevicememory": "preconfigured_memory_mib",
    "libcudaloglevel": "libcuda_log_level",
    "enablenumatopology": "numa_topology",
    "operatingmode": "mode",
    "enablegetpreferredallocation": "preferred_allocation",
    "gpumemorypolicy": "memory_policy",
    "migstrategy": "mig_strategy",
}
# Keys read apart from _KEYS: the entry's name, and filterdevices (two lists).
_IGNORED: Final = frozenset({"name", "filterdevices"})


def apply_node_config(base: DeviceConfig, document: Any, node_name: str, *, source: str) -> DeviceConfig:
    """``base`` with the overrides of ``node_name``'s entry in the parsed per-node ``document``.

    ``source`` names the file in error messages. A document without an entry for this node
    leaves ``base`` unchanged.
    """
    if document is None:
        return base
    if not isinstance(document, Mapping) or not isinstance(document.get("nodeconfig", []), list):
        raise NodeConfigError(f"{source}: expected an object with a list 'nodeconfig', e.g. {{\"nodeconfig\": []}}")
    entries = [e for e in document.get("nodeconfig", []) if isinstance(e, Mapping) and e.get("name") == node_name]
    if any(not isinstance(e, Mapping) for e in document.get("nodeconfig", [])):
        raise NodeConfigError(f"{source}: every 'nodeconfig' entry must be an object with a 'name'")
    if not entries:
        return base
    if len(entries) > 1:
        raise NodeConfigError(f"{source}: node {node_name!r} has {len(entries)} entries in 'nodeconfig'; keep one")
    entry = entries[0]
    where = f"{source}: nodeconfig[name={node_name}]"
    config = base
    for key, field in _KEYS.items():
        if key in entry and entry[key] is not None:
            path = f"{where}.{key}"
            try:
                # One key at a time, so a value out of range is reported with its key path.
                config = dataclasses.replace(config, **{field: _typed(entry[key], field, path)})
            except NodeConfigError as exc:
                raise NodeConfigError(str(exc) if str(exc).startswith(path) else f"{path}: {exc}") from None
    if "filterdevices" in entry and entry["filterdevices"] is not None:
        uuids, indices = _filter_devices(entry["filterdevices"], f"{where}.filterdevices")
        config = dataclasses.replace(config, filter_uuids=uuids, filter_indices=indices)
    return config


def _typed(value: Any, field: str, where: str) -> Any:
    if field in ("numa_topology", "preferred_allocation"):
        if isinstance(value, bool):
            return value
        raise NodeConfigError(f"{where}: expected true or false, got {value!r}")
    if field in ("memory_scaling", "cores_scaling"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise NodeConfigError(f"{where}: expected a number, got {value!r}")
    if field in ("mode", "memory_policy", "mig_strategy"):
        if isinstance(value, str):
            return value
        raise NodeConfigError(f"{where}: expected a string, got {value!r}")
    if field == "libcuda_log_level" and isinstance(value, str) and re.fullmatch(r"[0-9]{1,2}", value.strip(), re.ASCII):
        return int(value)  # HAMi's LibCudaLogLevel is a Go string: config.json carries "1"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise NodeConfigError(f"{where}: expected an integer, got {value!r}")


def _filter_devices(value: Any, where: str) -> tuple[frozenset[str], frozenset[int]]:
    if not isinstance(value, Mapping) or set(value) - {"uuid", "index"}:
        raise NodeConfigError(f'{where}: expected {{"uuid": ["GPU-..."], "index": [0]}}, got {value!r}')
    uuids = value.get("uuid") or []
    indices = value.get("index") or []
    if not isinstance(uuids, list) or not all(isinstance(u, str) and u for u in uuids):
        raise NodeConfigError(f"{where}: 'uuid' must be a list of GPU UUID strings")
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise NodeConfigError(f"{where}: 'index' must be a list of integers")
    return frozenset(uuids), frozenset(indices)


def _mountinfo_path(text: str) -> str:
    """A path field of /proc/self/mountinfo (space, tab, newline and backslash are octal escapes)."""
    for raw, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(raw, char)
    return text


def regions_mount_problem(mountinfo: str, path: str, size_bytes: int, max_bytes: int) -> str | None:
    """Why ``path`` (resolved) is not a dedicated tmpfs of at most ``max_bytes`` (None: it is one).

    ``mountinfo`` is the text of /proc/self/mountinfo; ``size_bytes`` the file system's size (statvfs). The
    latest mount at ``path`` counts (mounts stack)."""
    fstype = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if _mountinfo_path(fields[4]) == path and separator + 1 < len(fields):
            fstype = fields[separator + 1]
    hint = (
        f"mount one on the node, e.g. `mount -t tmpfs -o size=64m,mode=0711,nosuid,nodev,noexec hami-regions {path}` "
        "(deploy/README.md, 'Regions tmpfs')"
    )
    if fstype is None:
        return f"{path} is not a mount point of its own: the regions need a dedicated tmpfs; {hint}"
    if fstype != "tmpfs":
        return f"{path} is a {fstype} mount, not a tmpfs; {hint}"
    if size_bytes > max_bytes:
        return (
            f"the tmpfs at {path} holds {size_bytes >> 20} MiB, more than --regions-tmpfs-max-mib "
            f"{max_bytes >> 20}: give it an explicit size= option; {hint}"
        )
    return None


def node_config_warnings(document: Any, node_name: str, *, source: str) -> tuple[str, ...]:
    """The key paths of ``document`` (checked by :func:`apply_node_config`) that are not read: unknown top-level
    keys, and unknown keys of this node's entry (other nodes' entries are their device plugins' business)."""
    if not isinstance(document, Mapping):
        return ()
    out = [
        f"{source}: {str(k)[:64]}: unknown key, ignored (only 'nodeconfig' is read)"
        for k in document
        if k != "nodeconfig"
    ]
    entries = document.get("nodeconfig")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and entry.get("name") == node_name:
            known = set(_KEYS) | _IGNORED
            out += [
                f"{source}: nodeconfig[name={node_name}].{str(k)[:64]}: unknown key, ignored; known: {sorted(known)}"
                for k in entry
                if k not in known
            ]
    return tuple(out)
