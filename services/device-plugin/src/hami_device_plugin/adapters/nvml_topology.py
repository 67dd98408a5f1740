"""NVML's view of the GPU interconnect (the :class:`InterconnectReader` port), read as HAMi's
``pkg/device/nvidia/links.go`` reads it: each GPU's active NVLink ports (remote PCI bus ID, remote device type,
version) and NUMA node, each pair's PCIe common ancestor. Pure values in core/topology.py.

:class:`NvmlInterconnect` needs NVML initialised (``NvmlDriver.open()`` in adapters/nvml.py does it, with the
library ``--nvml-library`` names) and lists the whole GPUs by index itself; MIG devices have no links of their own.
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any, Protocol

import pynvml
from hami_shared.logging import get_logger

from hami_device_plugin.adapters.nvml import NvmlError
from hami_device_plugin.core.topology import GpuLinks, Interconnect, NvlinkPort

log = get_logger(__name__)


class InterconnectReader(Protocol):
    def interconnect(self) -> Interconnect:
        """How the GPUs are linked. Raises :class:`NvmlError` when NVML cannot list the GPUs."""
        ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlInterconnect:
    """:class:`InterconnectReader` on pynvml (NVML already initialised). Blocks: call it from a worker thread."""

    def interconnect(self) -> Interconnect:
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
            buses = [_text(pynvml.nvmlDeviceGetPciInfo(h).busId) for h in handles]
        except pynvml.NVMLError as exc:
            raise NvmlError(f"cannot list the GPUs and their PCI addresses: {exc}", code=int(exc.value)) from exc
        gpus = tuple(
            GpuLinks(uuid=uuid, bus_id=bus, numa=_numa(handle, bus), ports=_nvlink_ports(handle))
            for uuid, bus, handle in zip(uuids, buses, handles, strict=True)
        )
        ancestors = {}
        for i, j in itertools.combinations(range(len(handles)), 2):
            try:
                ancestors[(i, j)] = int(pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j]))
            except pynvml.NVMLError as exc:  # that pair scores no PCIe relation, as in HAMi
                log.warning("gpu_topology_unknown", gpus=[uuids[i], uuids[j]], error=str(exc))
        return Interconnect(gpus=gpus, ancestors=ancestors)


def _numa(handle: Any, bus_id: str) -> int:
    """NVML's NUMA node of the GPU; older drivers: the PCI device's ``numa_node`` in sysfs; else 0."""
    try:
        return int(pynvml.nvmlDeviceGetNumaNodeId(handle))
    except (pynvml.NVMLError, AttributeError):
        pass
    try:
        return max(int(pathlib.Path(f"/sys/bus/pci/devices/{bus_id.lower()[4:]}/numa_node").read_text()), 0)
    except (OSError, ValueError):
        return 0


def _nvlink_ports(handle: Any) -> tuple[NvlinkPort, ...]:
    """The GPU's active NVLink ports, as links.go walks them: every index below NVML_NVLINK_MAX_LINKS, skipping
    NOT_SUPPORTED (no NVLink, or a port the card lacks) and INVALID_ARGUMENT (past NVML's range)."""
    ports = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                continue
            remote = _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
            kind = pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
            version = int(pynvml.nvmlDeviceGetNvLinkVersion(handle, link))
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            continue
        except pynvml.NVMLError as exc:
            log.warning("nvlink_query_failed", link=link, error=str(exc))
            continue
        ports.append(NvlinkPort(remote, to_switch=kind == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH, version=version))
    return tuple(ports)
