"""The monitor trusts nothing a container writes (issue 16): a region is read at its fixed size only, whatever
the file is; node-wide decisions (GPU, priority, limits) take the plugin's own record; "active" is NVML's.

Regions are files in a temporary regions directory, built by the plugin's own region writer and then changed as
an attacker inside the container would; NVML's per-process samples are given to the scan as values (no driver)."""

from __future__ import annotations

import os
import resource
import struct
import time
from pathlib import Path

import pytest
from hami_device_plugin.adapters import files
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.core import region
from hami_device_plugin.core.hostpid import ProcIdentity
from hami_device_plugin.core.records import ContainerRecord, RecordDevice

G0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
G1 = "GPU-fa4e0000-0000-4000-8000-000000000001"
MIB = 1 << 20
TASK_PRIORITY_OFFSET = 64  # header: int32 task_priority (region_layout.h)
LAST_KERNEL_FIELD = region.LIMITER_OFFSET + 16


class NoProcs:
    """A /proc double with no process: host pids stay unknown, the slot's own pid is used (host PID namespace)."""

    def identity(self, host_pid: int) -> ProcIdentity | None:
        return None

    def index(self, start_times: frozenset[int]) -> list[ProcIdentity]:
        return []

    def cgroup(self, host_pid: int) -> str:
        return ""


def write_region(root: Path, name: str, *, pid: int, uuid: str = G0, priority: int = 1) -> Path:
    """A container's region as the plugin publishes it, with one live process slot ``pid``."""
    spec = region.RegionSpec(devices=(region.RegionDevice(uuid, 1000 * MIB, 50),), task_priority=priority)
    image = bytearray(region.build_region(spec, 1))
    struct.pack_into("<IiQi", image, region.SLOTS_OFFSET, region.SLOT_LIVE, pid, 500, 0)
    directory = root / name
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.cache"
    path.write_bytes(bytes(image))
    return path


def poke(path: Path, offset: int, fmt: str, value: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def record(name: str, priority: int, uuid: str = G0) -> ContainerRecord:
    uid, _, container = name.partition("_")
    return ContainerRecord(uid, container, priority, (RecordDevice(uuid, 1000 * MIB, 50),))


def monitor(root: Path, records: dict[str, ContainerRecord]) -> Monitor:
    return Monitor(
        regions_dir=root,
        driver=None,
        gpus=lambda: (),
        pods=None,
        metrics=PluginMetrics.create("test"),
        cleanup_grace=300,
        procs=NoProcs(),
        records=records.get,
    )


def device0(path: Path) -> region.DeviceUsage:
    return region.parse_region(path.read_bytes()).devices[0]


def test_a_container_writing_priority_minus_one_and_fresh_kernels_holds_nobody(tmp_path: Path) -> None:
    """The issue's attack: task_priority = -1 and a fresh last_kernel_ns in the attacker's own region."""
    attacker = write_region(tmp_path, "uid-a_c", pid=100)
    victim = write_region(tmp_path, "uid-v_c", pid=200)
    poke(attacker, TASK_PRIORITY_OFFSET, "<i", -1)
    poke(attacker, region.DEVICES_OFFSET + LAST_KERNEL_FIELD, "<Q", time.monotonic_ns())
    m = monitor(tmp_path, {"uid-a_c": record("uid-a_c", 1), "uid-v_c": record("uid-v_c", 1)})
    m._scan_regions({G0: {200: 60}})  # NVML: only the victim's process uses the GPU
    assert (device0(victim).contended, device0(victim).priority_hold) == (False, False)
    assert device0(attacker).contended  # the victim is active: the attacker is the one limited
    # Even while it really runs, its written priority counts for nothing: both have priority 1 by the record.
    poke(attacker, region.DEVICES_OFFSET + LAST_KERNEL_FIELD, "<Q", time.monotonic_ns())
    m._scan_regions({G0: {100: 40, 200: 60}})
    assert (device0(victim).contended, device0(victim).priority_hold) == (True, False)
    # A container whose record gives it priority 0 does hold the victim, whatever its region says.
    m = monitor(tmp_path, {"uid-a_c": record("uid-a_c", 0), "uid-v_c": record("uid-v_c", 1)})
    poke(attacker, TASK_PRIORITY_OFFSET, "<i", 7)
    m._scan_regions({G0: {100: 40, 200: 60}})
    assert device0(victim).priority_hold


def test_the_gpu_is_the_records_not_the_regions(tmp_path: Path) -> None:
    """A container that writes a neighbour's GPU UUID into its region is still decided on its own GPU."""
    liar = write_region(tmp_path, "uid-l_c", pid=100, uuid=G0)  # the record says G1
    victim = write_region(tmp_path, "uid-v_c", pid=200, uuid=G0)
    m = monitor(tmp_path, {"uid-l_c": record("uid-l_c", 0, uuid=G1), "uid-v_c": record("uid-v_c", 1)})
    m._scan_regions({G0: {100: 50, 200: 50}, G1: {100: 50}})
    assert (device0(victim).contended, device0(victim).priority_hold) == (False, False)
    assert not device0(liar).contended


def test_a_region_the_plugin_did_not_allocate_gets_no_signal_and_no_heartbeat(tmp_path: Path) -> None:
    stranger = write_region(tmp_path, "uid-s_c", pid=100, priority=0)
    victim = write_region(tmp_path, "uid-v_c", pid=200)
    poke(stranger, TASK_PRIORITY_OFFSET, "<i", -1)
    m = monitor(tmp_path, {"uid-v_c": record("uid-v_c", 1)})
    m._scan_regions({G0: {100: 90, 200: 10}})
    assert (device0(victim).contended, device0(victim).priority_hold) == (False, False)
    assert region.parse_region(stranger.read_bytes()).monitor_generation == 0  # hamicore: no monitor, enforce
    assert region.parse_region(victim.read_bytes()).monitor_generation == 1


def test_metrics_show_the_records_limit(tmp_path: Path) -> None:
    path = write_region(tmp_path, "uid-a_c", pid=100)
    poke(path, region.DEVICES_OFFSET + 8, "<Q", 80 << 30)  # limit_bytes rewritten to 80 GiB
    samples = monitor(tmp_path, {"uid-a_c": record("uid-a_c", 1)})._scan_regions({})
    assert [(s.device_uuid, s.limit_bytes) for s in samples] == [(G0, 1000 * MIB)]


def test_oversized_and_odd_files_are_refused_without_being_read(tmp_path: Path) -> None:
    """``truncate -s 600M`` on one's own region, a FIFO, a symlink, a directory: refused, counted, and the valid
    region next to them is read as usual."""
    good = write_region(tmp_path, "uid-g_c", pid=100)
    big = write_region(tmp_path, "uid-b_c", pid=200)
    os.truncate(big, 600 * MIB)
    (tmp_path / "uid-f_c").mkdir()
    os.mkfifo(tmp_path / "uid-f_c" / "uid-f_c.cache")
    (tmp_path / "uid-l_c").mkdir()
    (tmp_path / "uid-l_c" / "uid-l_c.cache").symlink_to(good)
    (tmp_path / "uid-d_c" / "uid-d_c.cache").mkdir(parents=True)
    m = monitor(tmp_path, {"uid-g_c": record("uid-g_c", 1)})
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m._scan_regions({})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024  # KiB: 600 MiB never read
    assert region.parse_region(good.read_bytes()).monitor_generation == 1
    refused = {
        s.labels["reason"]: s.value
        for family in m._metrics.registry.collect()
        if family.name == "hami_device_plugin_regions_refused"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert refused == {"size": 1, "not_regular": 1, "open": 2}  # a directory cannot even be opened for writing
    with pytest.raises(files.RegionRefusedError, match="exactly"):
        files.RegionHandle(str(big)).read(bytearray())


def test_a_header_that_moves_the_monitors_fields_is_refused(tmp_path: Path) -> None:
    path = write_region(tmp_path, "uid-a_c", pid=100)
    poke(path, 48, "<Q", region.DEVICES_OFFSET + 8)  # devices_offset: the monitor would write elsewhere
    before = path.read_bytes()
    monitor(tmp_path, {"uid-a_c": record("uid-a_c", 1)})._scan_regions({G0: {100: 10}})
    assert path.read_bytes() == before
