"""NVML through nvidia-ml-py (pynvml): GPU discovery, XID events, probes, utilisation samples, per-process memory,
and MIG (the :class:`~hami_device_plugin.adapters.nvml_mig.MigDriver` port: MIG mode, GPU-instance profiles,
creating and destroying GPU and compute instances), and the device telemetry HAMi's vGPU monitor exports
(memory-controller utilisation, temperature, power, ECC).

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
from hami_shared.node_register import MigPlacement

from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.mig_device import GpuInstanceProfile, MigInstance

log = get_logger(__name__)

EVENT_WAIT_MS: Final = 500
MIB: Final = 1024 * 1024


class NvmlError(RuntimeError):
    """NVML failed; the message carries NVML's own error string, ``code`` NVML's return code (``NVML_ERROR_*``;
    None when the failure is not NVML's, e.g. an unknown GPU) so callers can tell ``NVML_ERROR_IN_USE`` from
    ``NVML_ERROR_INSUFFICIENT_RESOURCES``."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


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


SIZED_ATTEMPTS: Final = 4


def _sized(call: Callable[[], Any]) -> Any:
    """``call`` of a pynvml list query, asked again when NVML answers INSUFFICIENT_SIZE: pynvml sizes its buffer with
    a first call, and a sample or process that appears before its second call makes that one too small (NVML's
    documented answer, a real driver's habit under load)."""
    for _ in range(SIZED_ATTEMPTS - 1):
        try:
            return call()
        except pynvml.NVMLError_InsufficientSize:
            continue
    return call()


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
        samples = self._query(
            uuid, lambda handle: _sized(lambda: pynvml.nvmlDeviceGetProcessUtilization(handle, since_us))
        )
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
            infos = _sized(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
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

    # ---------------------------------------------------------------- MIG (the MigDriver port)

    def _mig(self, uuid: str, what: str, call: Callable[[Any], Any]) -> Any:
        """``call`` of the GPU's handle; NVML's failures become :class:`NvmlError` with NVML's code and message."""
        handle = self._handle(uuid)
        if handle is None:
            raise NvmlError(f"{what}: no GPU {uuid} on this node")
        try:
            return call(handle)
        except pynvml.NVMLError as exc:
            raise NvmlError(f"{what} on GPU {uuid}: {exc}", code=int(exc.value)) from exc

    def mig_capable(self, uuid: str) -> bool:
        try:
            self._mig(uuid, "reading the MIG mode", pynvml.nvmlDeviceGetMigMode)
        except NvmlError as exc:
            if exc.code == pynvml.NVML_ERROR_NOT_SUPPORTED:
                return False
            raise
        return True

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        current, pending = self._mig(uuid, "reading the MIG mode", pynvml.nvmlDeviceGetMigMode)
        return bool(current), bool(pending)

    def set_mig_mode(self, uuid: str, enabled: bool) -> bool:
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        what = f"turning MIG mode {'on' if enabled else 'off'}"
        status = int(self._mig(uuid, what, lambda handle: pynvml.nvmlDeviceSetMigMode(handle, mode)))
        if status == pynvml.NVML_SUCCESS:
            return True
        if status == pynvml.NVML_ERROR_RESET_REQUIRED:  # pending until the GPU is reset
            return False
        # e.g. NVML_ERROR_IN_USE: processes or instances on the GPU kept the driver from resetting it
        raise NvmlError(f"{what} on GPU {uuid}: {_text(pynvml.nvmlErrorString(status))}", code=status)

    def gpu_instance_profiles(self, uuid: str) -> tuple[GpuInstanceProfile, ...]:
        what = "listing GPU-instance profiles"
        profiles = tuple(self._mig(uuid, what, _gpu_instance_profiles))
        if not profiles:  # NVML answers NOT_SUPPORTED for every profile while MIG mode is off
            message = _text(pynvml.nvmlErrorString(pynvml.NVML_ERROR_NOT_SUPPORTED))
            raise NvmlError(f"{what} on GPU {uuid}: {message} (MIG mode off?)", code=pynvml.NVML_ERROR_NOT_SUPPORTED)
        return profiles

    def mig_instances(self, uuid: str) -> tuple[MigInstance, ...]:
        return tuple(self._mig(uuid, "listing MIG instances", lambda handle: _mig_instances(uuid, handle)))

    def create_mig_instance(self, uuid: str, profile_id: int, start: int) -> MigInstance:
        what = f"creating a MIG instance of profile {profile_id} at slice {start}"
        created: MigInstance = self._mig(uuid, what, lambda handle: _create_instance(uuid, handle, profile_id, start))
        return created

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        what = f"destroying GPU instance {gpu_instance_id}"
        self._mig(uuid, what, lambda handle: _destroy_instance(handle, gpu_instance_id))

    def close(self) -> None:
        if self._event_set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


# ---------------------------------------------------------------- MIG helpers (raise pynvml.NVMLError)


def _profile_name(info: Any) -> str:
    return _text(info.name).removeprefix("MIG ")


def _gpu_instance_profiles(handle: Any) -> list[GpuInstanceProfile]:
    """Every profile the card offers, enumerated by NVML_GPU_INSTANCE_PROFILE_* index as nvml.h advises (until
    INVALID_ARGUMENT; NOT_SUPPORTED marks an index this card lacks). The index is not the profile ID."""
    profiles = []
    for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
        except pynvml.NVMLError_NotSupported:
            continue
        except pynvml.NVMLError_InvalidArgument:
            break
        profiles.append(
            GpuInstanceProfile(
                profile_id=int(info.id),
                name=_profile_name(info),
                memory_mib=int(info.memorySizeMB),
                slice_count=int(info.sliceCount),
                multiprocessor_count=int(info.multiprocessorCount),
                instance_count=int(info.instanceCount),
                placements=_placements(handle, int(info.id)),
            )
        )
    return profiles


def _placements(handle: Any, profile_id: int) -> tuple[MigPlacement, ...]:
    count = ctypes.c_uint()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, None, ctypes.byref(count))
    placements = (pynvml.c_nvmlGpuInstancePlacement_t * max(count.value, 1))()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, placements, ctypes.byref(count))
    return tuple(MigPlacement(start=int(p.start), size=int(p.size)) for p in placements[: count.value])


def _compute_instances(gpu_instance: Any) -> list[Any]:
    """The GPU instance's compute instances, lowest ID first."""
    found = []
    for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gpu_instance, index, 0)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            continue
        handles = (pynvml.c_nvmlComputeInstance_t * max(int(info.instanceCount), 1))()
        count = ctypes.c_uint()
        pynvml.nvmlGpuInstanceGetComputeInstances(gpu_instance, int(info.id), handles, ctypes.byref(count))
        found.extend(handles[: count.value])
    return sorted(found, key=lambda ci: int(pynvml.nvmlComputeInstanceGetInfo(ci).id))


def _mig_devices(handle: Any) -> dict[tuple[int, int], str]:
    """UUID of each MIG device, by (GPU-instance ID, compute-instance ID)."""
    uuids = {}
    for index in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            device = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except pynvml.NVMLError_NotFound:
            continue
        key = (int(pynvml.nvmlDeviceGetGpuInstanceId(device)), int(pynvml.nvmlDeviceGetComputeInstanceId(device)))
        uuids[key] = _text(pynvml.nvmlDeviceGetUUID(device))
    return uuids


def _instance(
    parent: str, gpu_instance: Any, profiles: dict[int, GpuInstanceProfile], uuids: dict[tuple[int, int], str]
) -> MigInstance | None:
    info = pynvml.nvmlGpuInstanceGetInfo(gpu_instance)
    cis = _compute_instances(gpu_instance)
    if not cis:
        return None
    ci = int(pynvml.nvmlComputeInstanceGetInfo(cis[0]).id)
    profile = profiles[int(info.profileId)]
    return MigInstance(
        parent_uuid=parent,
        gpu_instance_id=int(info.id),
        compute_instance_id=ci,
        profile_id=profile.profile_id,
        profile=profile.name,
        start=int(info.placement.start),
        size=int(info.placement.size),
        mig_uuid=uuids.get((int(info.id), ci), ""),
        memory_mib=profile.memory_mib,
    )


def _mig_instances(parent: str, handle: Any) -> list[MigInstance]:
    profiles = {p.profile_id: p for p in _gpu_instance_profiles(handle)}
    uuids = _mig_devices(handle)
    found = []
    for profile in profiles.values():
        handles = (pynvml.c_nvmlGpuInstance_t * max(profile.instance_count, 1))()
        count = ctypes.c_uint()
        pynvml.nvmlDeviceGetGpuInstances(handle, profile.profile_id, handles, ctypes.byref(count))
        for gpu_instance in handles[: count.value]:
            instance = _instance(parent, gpu_instance, profiles, uuids)
            if instance is not None:
                found.append(instance)
    return sorted(found, key=lambda i: i.gpu_instance_id)


def _create_instance(parent: str, handle: Any, profile_id: int, start: int) -> MigInstance:
    """The GPU instance at ``start``, then one compute instance spanning it; the GPU instance is destroyed again
    when its compute instance cannot be made, so a failure leaves nothing behind."""
    profiles = {p.profile_id: p for p in _gpu_instance_profiles(handle)}
    profile = profiles.get(profile_id)
    if profile is None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start = start
    placement.size = next((p.size for p in profile.placements if p.start == start), profile.placements[0].size)
    gpu_instance = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile_id, ctypes.byref(placement))
    try:
        pynvml.nvmlGpuInstanceCreateComputeInstance(gpu_instance, _spanning_compute_profile(gpu_instance, profile))
        instance = _instance(parent, gpu_instance, profiles, _mig_devices(handle))
    except pynvml.NVMLError:
        with contextlib.suppress(pynvml.NVMLError):
            for ci in _compute_instances(gpu_instance):
                pynvml.nvmlComputeInstanceDestroy(ci)
            pynvml.nvmlGpuInstanceDestroy(gpu_instance)
        raise
    if instance is None:  # another client destroyed the compute instance meanwhile
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    return instance


def _spanning_compute_profile(gpu_instance: Any, profile: GpuInstanceProfile) -> int:
    """The compute-instance profile that takes every compute slice of the GPU instance."""
    for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gpu_instance, index, 0)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            continue
        if int(info.sliceCount) == profile.slice_count:
            return int(info.id)
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _destroy_instance(handle: Any, gpu_instance_id: int) -> None:
    gpu_instance = pynvml.nvmlDeviceGetGpuInstanceById(handle, gpu_instance_id)
    for ci in _compute_instances(gpu_instance):
        pynvml.nvmlComputeInstanceDestroy(ci)
    pynvml.nvmlGpuInstanceDestroy(gpu_instance)


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
