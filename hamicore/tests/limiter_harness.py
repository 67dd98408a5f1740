"""Helpers of the compute limiter's tests: saturating workloads (``cuda_probe saturate``) on simulated GPUs,
an independent measurement of what each process got (NVML per-process utilisation from the fake driver's
kernel timeline, read by a separate process), and a stand-in for the node monitor that writes the signals the
device plugin's monitor writes in production.
"""

from __future__ import annotations

import json
import mmap
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pidns
from conftest import BUILD, Hami, region_layout
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.core.records import ContainerRecord, RecordDevice

WAVE_NS = 200_000  # FAKE_KERNEL_NS_PER_WAVE: device time of one full occupancy of a simulated GPU
GRID, BLOCK = 2048, 256  # the test kernel: 16 waves on 16 SMs, 2 (the second one partial) on 132 and 188 SMs


def gpu_env(sm_counts: list[int], **extra: str) -> dict[str, str]:
    """Fake-driver settings for GPUs with these SM counts, kernels costing waves of WAVE_NS."""
    env = {
        "FAKE_GPU_COUNT": str(len(sm_counts)),
        "FAKE_GPU_SM_COUNT": ",".join(map(str, sm_counts)),
        "FAKE_KERNEL_NS_PER_WAVE": str(WAVE_NS),
    }
    env.update(extra)
    return env


@dataclass
class Workload:
    """A running ``cuda_probe ... saturate`` process; its JSON lines are collected as they come."""

    name: str
    proc: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    in_pid_namespace: bool = False

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        out, err = self.proc.stdout, self.proc.stderr

        def read_lines() -> None:
            for line in out:
                if line.startswith("{"):
                    self.lines.append(json.loads(line))

        def read_errors() -> None:
            for line in err:
                self.stderr.append(line)

        self._readers = [
            threading.Thread(target=read_lines, daemon=True),
            threading.Thread(target=read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        """Its host pid, the pid NVML names it by (in a PID namespace: the namespace's pid 1)."""
        if self.in_pid_namespace:
            return pidns.host_pid(self.proc.pid)
        return self.proc.pid

    def progress(self) -> list[tuple[float, int]]:
        """(CLOCK_MONOTONIC seconds, kernels completed) samples, about every 50 ms while it runs."""
        return [(line["t"], line["n"]) for line in list(self.lines) if line["cmd"] == "progress"]

    def summary(self, timeout: float = 120) -> dict[str, Any]:
        """Waits for the saturate summary line (the process may go on with later commands)."""
        deadline = time.monotonic() + timeout
        while not (done := [line for line in list(self.lines) if line["cmd"] == "saturate"]):
            assert time.monotonic() < deadline, (
                f"{self.name}: no summary (exit status {self.proc.poll()}):\n{''.join(self.stderr)[-3000:]}"
            )
            time.sleep(0.01)
        assert done[0]["rc"] == 0, f"{self.name}: CUresult {done[0]['rc']}\n{''.join(self.stderr)[-3000:]}"
        return done[0]

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Waits for the end; returns the summary line (asserting the workload succeeded)."""
        self.proc.wait(timeout=timeout)
        self.stop()  # reaped: this only drains and closes the pipes
        assert self.proc.returncode == 0, f"{self.name} failed:\n{''.join(self.stderr)[-3000:]}"
        return self.summary(timeout=0)

    def stop(self) -> None:
        """Kills it if it still runs, reaps it, and closes its pipes once everything was read."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def start_workload(
    hami: Hami,
    name: str,
    dev: int,
    seconds: float,
    *,
    path: str = "kernel",
    grid: int = GRID,
    block: int = BLOCK,
    batch: int = 8,
    preload: bool = True,
    region: Path | None = None,
    then: tuple[str, ...] = (),
    pid_namespace: bool = False,
    **env: str,
) -> Workload:
    """A saturating workload on fake GPU ``dev`` (its only visible GPU), with its own region file (one
    container each): ``region``, by default ``<name>.cache`` in the test's directory. ``then``: probe
    commands to run afterwards (``("hold",)``: stay alive, idle, until stopped). ``pid_namespace``: run it as
    pid 1 of its own PID namespace (tests/pidns.py), as in a container."""
    args = [
        str(BUILD / "tests" / "cuda_probe"),
        "init",
        "ctx",
        "0",
        "kernel",
        "saturate",
        path,
        str(grid),
        str(block),
        str(seconds),
        str(batch),
        *then,
    ]
    region = region or hami.tmp / f"{name}.cache"
    if pid_namespace:
        host_proc = hami.tmp / f"{name}.hostproc"
        host_proc.mkdir()
        args = pidns.command(args, host_proc)
        env["FAKE_GPU_HOST_PROC"] = str(host_proc)
    environ = hami.environ(preload, CUDA_VISIBLE_DEVICES=str(dev), CUDA_DEVICE_MEMORY_SHARED_CACHE=str(region), **env)
    proc = subprocess.Popen(args, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Workload(name, proc, in_pid_namespace=pid_namespace)


MEASURE = """
import json, sys, time, pynvml as n
targets, seconds, step = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n.nvmlInit()
handles = {dev: n.nvmlDeviceGetHandleByIndex(dev) for dev, _ in targets}
t0, rows = time.monotonic(), []
last = {dev: time.monotonic_ns() // 1000 for dev, _ in targets}
while len(rows) * step < seconds - 1e-9:
    time.sleep(max(0.0, t0 + (len(rows) + 1) * step - time.monotonic()))
    row, samples = [], {}
    for dev in handles:
        for attempt in range(5):
            try:
                samples[dev] = list(n.nvmlDeviceGetProcessUtilization(handles[dev], last[dev]))
                break
            except n.NVMLError_NotFound:
                samples[dev] = []
                break
            except n.NVMLError_InsufficientSize:
                # pynvml sizes its buffer with a first call; a sample published between its two calls makes the
                # second too small (NVML's documented answer; a real driver does it too): ask again.
                if attempt == 4:
                    raise
        # NVML publishes a period's sample after the period: ask next time from the newest one seen, not from now.
        last[dev] = max([last[dev], *(s.timeStamp for s in samples[dev])])
    for dev, pid in targets:
        periods = len({s.timeStamp for s in samples[dev]})
        mine = [s.smUtil for s in samples[dev] if s.pid == pid]
        row.append(round(sum(mine) / periods) if periods else 0)  # a period without a sample of pid: idle
    rows.append(row)
print(json.dumps(rows))
"""


def start_measurer(
    hami: Hami, targets: list[tuple[int, int]], seconds: float, step: float = 1.0, **env: str
) -> subprocess.Popen[str]:
    """NVML's per-process utilisation of each (device, pid), one row per ``step`` seconds: the average of NVML's
    samples (one per sample period, published late) that came out since the previous row, read by a process outside
    the workloads."""
    environ = hami.environ(False, FAKE_NVML_UTIL_WINDOW_MS="10000", **env)
    return subprocess.Popen(
        [sys.executable, "-c", MEASURE, json.dumps(targets), str(seconds), str(step)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def measured_rows(measurer: subprocess.Popen[str]) -> list[list[int]]:
    out, err = measurer.communicate(timeout=120)  # also closes its pipes
    assert measurer.returncode == 0, err
    rows: list[list[int]] = json.loads(out)
    return rows


def utilisation(samples: list[tuple[float, int]], start: float, end: float, kernel_s: float) -> float:
    """Percent of the device a workload used in [start, end], from its own completion counts (kernels of a
    fixed cost ``kernel_s``); the samples nearest inside the interval are used."""
    inside = [(t, n) for t, n in samples if start <= t <= end]
    assert len(inside) >= 2, f"no progress samples in [{start:.2f}, {end:.2f}]"
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return 100.0 * (n1 - n0) * kernel_s / (t1 - t0)


class MonitorStandIn:
    """Stands in for the device plugin's node monitor, which writes these fields in production: keeps the
    heartbeat (``monitor_generation`` + 1, ``monitor_interval_ms``) moving every ``interval`` seconds and sets
    ``contended`` / ``priority_hold`` of a device when told. ``stop_heartbeat`` plays a monitor that died."""

    def __init__(self, region: Path, interval: float = 0.1) -> None:
        self.region, self.interval = region, interval
        self.lay = region_layout()
        self._beating = threading.Event()
        self._done = threading.Event()
        self._map: mmap.mmap | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MonitorStandIn:
        deadline = time.monotonic() + 30
        while not (self.region.exists() and self.region.stat().st_size == self.lay["region_size"]):
            assert time.monotonic() < deadline, f"{self.region} was never created"
            time.sleep(0.01)
        with self.region.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._beating.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        assert self._map is not None
        self._map.close()

    def _u32(self, offset: int, value: int) -> None:
        assert self._map is not None
        struct.pack_into("<I", self._map, offset, value)

    def _run(self) -> None:
        generation = 0
        while not self._done.wait(self.interval):
            if self._beating.is_set():
                generation += 1
                self._u32(self.lay["header.monitor_interval_ms"], round(self.interval * 1000))
                self._u32(self.lay["header.monitor_generation"], generation)

    def set(self, dev: int = 0, *, contended: bool | None = None, priority_hold: bool | None = None) -> float:
        """Writes the signals; returns the CLOCK_MONOTONIC time of the write."""
        base = self.lay["devices_offset"] + dev * self.lay["device_record_size"]
        if contended is not None:
            self._u32(base + self.lay["limiter.contended"], int(contended))
        if priority_hold is not None:
            self._u32(base + self.lay["limiter.priority_hold"], int(priority_hold))
        return time.monotonic()

    def stop_heartbeat(self) -> float:
        self._beating.clear()
        return time.monotonic()


class NodeMonitor:
    """The device plugin's own node monitor (``monitor_runner.py``: region reading, host pids from /proc,
    activity and priority decisions, signal and heartbeat writes) over ``hook``'s container directories, every
    ``interval`` seconds (``"default"``: the plugin's default ``--monitor-interval``)."""

    def __init__(self, hami: Hami, hook: Path, interval: str = "default", **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "monitor_runner.py"), str(hook), interval],
            env=hami.environ(False, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> NodeMonitor:
        assert self.proc.stdout is not None
        while (line := self.proc.stdout.readline()) and not line.startswith("ready"):
            pass
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=60)


def container_region(hook: Path, name: str, *, priority: int = 1, device: int = 0) -> Path:
    """Where the device plugin puts a container's region, ``<hook>/containers/<podUID>_<container>/<podUID>_
    <container>.cache``, and the plugin's record of the container (fake GPU ``device``, ``priority``) that its
    Allocate writes: the monitor decides on the record, not on what the container writes into its region."""
    directory = hook / "containers" / f"uid-{name}_{name}"
    directory.mkdir(parents=True)
    uuid = f"GPU-fa4e0000-0000-4000-8000-{device:012x}"  # the fake driver's UUIDs (FAKE_GPU_UUIDS unset)
    RecordStore(hook / "containers").write(ContainerRecord(f"uid-{name}", name, priority, (RecordDevice(uuid, 0, 0),)))
    return directory / f"{directory.name}.cache"


def live_slots(region: Path) -> list[dict[str, int]]:
    """pid, start_time and host_pid of every live process slot (offsets from ``hami-region-inspect --layout``)."""
    lay, data = region_layout(), region.read_bytes()
    out = []
    for k in range(lay["max_procs"]):
        base = lay["slots_offset"] + k * lay["slot_size"]
        if struct.unpack_from("<I", data, base + lay["slot.state"])[0] == 2:
            out.append(
                {
                    "pid": struct.unpack_from("<i", data, base + lay["slot.pid"])[0],
                    "start_time": struct.unpack_from("<Q", data, base + lay["slot.start_time"])[0],
                    "host_pid": struct.unpack_from("<i", data, base + lay["slot.host_pid"])[0],
                }
            )
    return out
