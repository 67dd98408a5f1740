"""NVML through nvidia-ml-py (pynvml): GPU discovery, XID events, probes, utilisation samples, per-process memory,
and the device telemetry HAMi's vGPU monitor exports (memory-controller utilisation, temperature, power, ECC).

:class:`GpuDriver` is the port the rest of the plugin uses; :class:`NvmlDriver` implements it with pynvml, which
opens ``libnvidia-ml.so.1`` by its soname: ``--nvml-library`` (a full path; tests give hamicore's fake NVML) is
loaded first with ``RTLD_GLOBAL`` so that pynvml finds that copy. NVML is thread-safe: the XID waiter runs in its
own thread while probes and samples run in worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import pathlib
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

import pynvml
from hami_shared.logging import get_logger

from hami_device_plugin.core.inventory import Gpu

log = get_logger(__name__)

EVENT_WAIT_MS: Final = 500
MIB: Final = 1024 * 1024


class NvmlError(RuntimeError):
    """NVML failed; the message carries NVML's own error string."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceTelemetry:
    """What NVML says of a GPU beyond memory and SM utilisation; None where the GPU (or driver) does not say."""

    memory_utilization_pct: int | None = None  # memory controller busy over NVML's sample period, 0..100
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_corrected: int | None = None  # lifetime aggregate counts
    ecc_uncorrected: int | None = None


class GpuDriver(Protocol):
    """What the plugin needs from the GPU driver. Methods may block: call them from a worker thread."""

    def discover(self) -> tuple[Gpu, ...]: ...

    def probe(self, uuid: str) -> bool:
        """True when the GPU answers a data query."""
        ...

    def wait_xid(self, timeout_ms: int) -> list[tuple[str, int]]:
        """XID critical errors (uuid, code) delivered within ``timeout_ms``; [] on timeout."""
        ...

    def process_utilization(self, uuid: str, since_us: int) -> tuple[dict[int, int], int]:
        """SM utilisation in percent per pid over NVML's samples newer than ``since_us`` (NVML's own
        timestamps; 0 = its whole buffer), and the newest timestamp among them (``since_us`` if none)."""
        ...

    def utilization(self, uuid: str) -> int | None:
        """The GPU's utilisation in percent over NVML's latest sample period, or None when unknown."""
        ...

    def memory(self, uuid: str) -> tuple[int, int] | None:
        """(used, total) bytes, or None when unknown."""
        ...

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        """Used device memory in bytes per host pid of the compute processes on the GPU, or None when unknown."""
        ...

    def telemetry(self, uuid: str) -> DeviceTelemetry:
        """Memory-controller utilisation, temperature, power and ECC counts; each None when unknown."""
        ...

    def close(self) -> None: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDriver:
    """:class:`GpuDriver` on pynvml. ``open()`` initialises NVML and the XID event set."""

    def __init__(self, library: pathlib.Path | None = None) -> None:
        self._library = library
        self._handles: dict[str, Any] = {}
        self._event_set: Any = None
        self._lock = threading.Lock()

    def open(self) -> NvmlDriver:
        if self._library is not None:
            if not self._library.is_file():
                raise NvmlError(f"NVML library {self._library} does not exist; fix --nvml-library")
            ctypes.CDLL(str(self._library), mode=ctypes.RTLD_GLOBAL)
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlError(f"cannot initialise NVML: {exc}") from exc
        self._refresh_handles()
        self._event_set = self._register_events()
        return self

    def _refresh_handles(self) -> None:
        handles = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            handles[_text(pynvml.nvmlDeviceGetUUID(handle))] = handle
        with self._lock:
            self._handles = handles

    def _register_events(self) -> Any:
        try:
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("nvml_events_unavailable", error=str(exc))
            return None
        for uuid, handle in self._handles.items():
            try:
                supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
                wanted = supported & pynvml.nvmlEventTypeXidCriticalError
                if wanted:
                    pynvml.nvmlDeviceRegisterEvents(handle, wanted, event_set)
            except pynvml.NVMLError as exc:
                log.warning("nvml_event_registration_failed", uuid=uuid, error=str(exc))
        return event_set

    def discover(self) -> tuple[Gpu, ...]:
        try:
            self._refresh_handles()
        except pynvml.NVMLError as exc:
            raise NvmlError(f"cannot list GPUs: {exc}") from exc
        gpus = []
        for uuid, handle in self._handles.items():
            try:
                index = int(pynvml.nvmlDeviceGetIndex(handle))
                name = _text(pynvml.nvmlDeviceGetName(handle))
            except pynvml.NVMLError as exc:
                raise NvmlError(f"cannot read GPU {uuid}: {exc}") from exc
            memory_mib: int | None
            healthy = True
            try:
                memory_mib = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
            except pynvml.NVMLError_NotSupported:
                memory_mib = None
            except pynvml.NVMLError as exc:
                log.warning("gpu_memory_query_failed", uuid=uuid, error=str(exc))
                memory_mib, healthy = None, False
            gpus.append(
                Gpu(uuid=uuid, index=index, name=name, memory_mib=memory_mib, numa=self._numa(handle), healthy=healthy)
            )
        return tuple(sorted(gpus, key=lambda g: g.index))

    def _numa(self, handle: Any) -> int:
        try:
            return int(pynvml.nvmlDeviceGetNumaNodeId(handle))
        except (pynvml.NVMLError, AttributeError):
            pass
        try:  # older drivers: the PCI device's numa_node in sysfs (-1 when the platform has none)
            bus_id = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId).lower()
            return max(int(pathlib.Path(f"/sys/bus/pci/devices/{bus_id[4:]}/numa_node").read_text()), 0)
        except (pynvml.NVMLError, OSError, ValueError):
            return 0

    def _handle(self, uuid: str) -> Any:
        with self._lock:
            return self._handles.get(uuid)

    def probe(self, uuid: str) -> bool:
        handle = self._handle(uuid)
        if handle is None:
            return False
        try:
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError_NotSupported:
            return True
        except pynvml.NVMLError:
            return False
        return True

    def wait_xid(self, timeout_ms: int) -> list[tuple[str, int]]:
        if self._event_set is None:
            threading.Event().wait(timeout_ms / 1000)
            return []
        try:
            data = pynvml.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return []
        except pynvml.NVMLError as exc:
            raise NvmlError(f"waiting for NVML events failed: {exc}") from exc
        if data.eventType != pynvml.nvmlEventTypeXidCriticalError:
            return []
        try:
            uuid = _text(pynvml.nvmlDeviceGetUUID(data.device))
        except pynvml.NVMLError as exc:
            raise NvmlError(f"XID event for an unknown device: {exc}") from exc
        return [(uuid, int(data.eventData))]

    def process_utilization(self, uuid: str, since_us: int) -> tuple[dict[int, int], int]:
        samples = self._query(uuid, lambda handle: pynvml.nvmlDeviceGetProcessUtilization(handle, since_us))
        if samples is None:  # NOT_FOUND: no process used the GPU in a period newer than since_us
            return {}, since_us
        sums: dict[int, list[int]] = {}
        newest = since_us
        for sample in samples:
            acc = sums.setdefault(int(sample.pid), [0, 0])
            acc[0] += int(sample.smUtil)
            acc[1] += 1
            newest = max(newest, int(sample.timeStamp))
        # the mean, rounded up: a process that used the GPU a little does not read as idle
        return {pid: -(-total // count) for pid, (total, count) in sums.items()}, newest

    def memory(self, uuid: str) -> tuple[int, int] | None:
        info = self._query(uuid, pynvml.nvmlDeviceGetMemoryInfo)
        return None if info is None else (int(info.used), int(info.total))

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        handle = self._handle(uuid)
        if handle is None:
            return None
        try:
            infos = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:
            return None
        out: dict[int, int] = {}
        for info in infos:
            used = info.usedGpuMemory  # None: NVML_VALUE_NOT_AVAILABLE (e.g. without rights to see it)
            if used is not None:
                out[int(info.pid)] = out.get(int(info.pid), 0) + int(used)
        return out

    def utilization(self, uuid: str) -> int | None:
        rates = self._query(uuid, pynvml.nvmlDeviceGetUtilizationRates)
        return None if rates is None else int(rates.gpu)

    def telemetry(self, uuid: str) -> DeviceTelemetry:
        rates = self._query(uuid, pynvml.nvmlDeviceGetUtilizationRates)
        temperature = self._query(uuid, lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
        milliwatts = self._query(uuid, pynvml.nvmlDeviceGetPowerUsage)

        def ecc(kind: int) -> int | None:
            count = self._query(uuid, lambda h: pynvml.nvmlDeviceGetTotalEccErrors(h, kind, pynvml.NVML_AGGREGATE_ECC))
            return None if count is None else int(count)

        return DeviceTelemetry(
            memory_utilization_pct=None if rates is None else int(rates.memory),
            temperature_c=None if temperature is None else int(temperature),
            power_w=None if milliwatts is None else int(milliwatts) / 1000,
            ecc_corrected=ecc(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ecc_uncorrected=ecc(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        )

    def _query(self, uuid: str, query: Callable[[Any], Any]) -> Any:
        """``query`` of the GPU's NVML handle; None when the GPU is unknown or NVML fails."""
        handle = self._handle(uuid)
        if handle is None:
            return None
        try:
            return query(handle)
        except pynvml.NVMLError:
            return None

    def close(self) -> None:
        if self._event_set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


class XidWatcher:
    """A daemon thread that waits on NVML events and hands each XID to ``on_xid`` (from that thread)."""

    def __init__(self, driver: GpuDriver, on_xid: Callable[[str, int], None], on_error: Callable[[str], None]) -> None:
        self._driver = driver
        self._on_xid = on_xid
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for uuid, code in self._driver.wait_xid(EVENT_WAIT_MS):
                    self._on_xid(uuid, code)
            except NvmlError as exc:
                self._on_error(str(exc))
                self._stop.wait(1.0)
