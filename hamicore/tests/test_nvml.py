"""NVML through pynvml (nvidia-ml-py), a real client: the fake NVML's discovery, events and health
script, process lists and utilisation from the virtual timeline, and libvgpu's virtualised memory view."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import MIB, Hami

DISCOVER = """
import json, pynvml as n
n.nvmlInit()
out = []
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    out.append({"uuid": n.nvmlDeviceGetUUID(h), "name": n.nvmlDeviceGetName(h), "index": n.nvmlDeviceGetIndex(h),
                "bus": n.nvmlDeviceGetPciInfo(h).busId, "numa": n.nvmlDeviceGetNumaNodeId(h),
                "minor": n.nvmlDeviceGetMinorNumber(h), "cc": list(n.nvmlDeviceGetCudaComputeCapability(h)),
                "total": n.nvmlDeviceGetMemoryInfo(h).total,
                "total_v2": n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2).total,
                "by_uuid": n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(h)))})
print(json.dumps({"devices": out, "driver": n.nvmlSystemGetDriverVersion(),
                  "cuda": n.nvmlSystemGetCudaDriverVersion()}))
n.nvmlShutdown()
"""


@pytest.mark.parametrize("count", [1, 2, 8])
def test_pynvml_discovers_the_configured_gpus(hami: Hami, count: int) -> None:
    uuids = ",".join(f"GPU-{i:08x}-1111-2222-3333-444455556666" for i in range(count))
    names = ",".join(f"NVIDIA A{i}" for i in range(count))
    mems = ",".join(str(1024 * (i + 1)) for i in range(count))
    numa = ",".join(str(i // 4) for i in range(count))
    out = json.loads(
        hami.python(
            DISCOVER,
            preload=False,
            FAKE_GPU_COUNT=str(count),
            FAKE_GPU_UUIDS=uuids,
            FAKE_GPU_NAMES=names,
            FAKE_GPU_MEMORY_MIB=mems,
            FAKE_GPU_NUMA_NODES=numa,
            FAKE_GPU_COMPUTE_CAPABILITY="9.0",
        )
    )
    devices = out["devices"]
    assert [d["uuid"] for d in devices] == uuids.split(",")
    assert [d["name"] for d in devices] == names.split(",")
    assert [d["total"] for d in devices] == [1024 * (i + 1) * MIB for i in range(count)]
    assert [d["numa"] for d in devices] == [i // 4 for i in range(count)]
    assert [d["index"] for d in devices] == [d["by_uuid"] for d in devices] == list(range(count))
    assert len({d["bus"] for d in devices}) == count
    assert all(d["cc"] == [9, 0] for d in devices)
    assert out["cuda"] == 13000


@pytest.mark.parametrize("preload", [False, True])
def test_cuda_probe_lists_the_devices_the_process_sees(hami: Hami, preload: bool) -> None:
    """``cuda_probe devices`` (what the e2e containers report): the CUDA device count and UUIDs, in order, also
    under libvgpu.so."""
    uuids = [f"GPU-{i:08x}-aaaa-4bbb-8ccc-0123456789ab" for i in range(3)]
    out = hami.probe("init", "devices", preload=preload, FAKE_GPU_COUNT="3", FAKE_GPU_UUIDS=",".join(uuids))
    assert out == [{"cmd": "init", "rc": 0}, {"cmd": "devices", "rc": 0, "count": 3, "uuids": uuids}]


def test_the_config_file_describes_gpus_and_the_environment_wins(hami: Hami) -> None:
    config = hami.tmp / "gpus.conf"
    config.write_text("# two test GPUs\nFAKE_GPU_COUNT=2\nFAKE_GPU_NAMES=Tesla X, Tesla Y\nFAKE_GPU_MEMORY_MIB=4096\n")
    out = json.loads(hami.python(DISCOVER, preload=False, FAKE_NVML_CONFIG=str(config), FAKE_GPU_MEMORY_MIB="8192"))
    assert [d["name"] for d in out["devices"]] == ["Tesla X", "Tesla Y"]
    assert [d["total"] for d in out["devices"]] == [8192 * MIB] * 2


def test_nvml_memory_info_shows_the_slice_under_the_interposer(hami: Hami) -> None:
    holder = hami.spawn(
        "init",
        "ctx",
        "1",
        "alloc",
        "120m",
        "hold",
        FAKE_GPU_COUNT="2",
        CUDA_DEVICE_MEMORY_LIMIT_0="100m",
        CUDA_DEVICE_MEMORY_LIMIT_1="300m",
    )
    try:
        assert holder.stdout is not None
        for _ in range(4):
            holder.stdout.readline()
        code = """
import json, pynvml as n
n.nvmlInit()
out = []
for i in range(2):
    h = n.nvmlDeviceGetHandleByIndex(i)
    m, m2 = n.nvmlDeviceGetMemoryInfo(h), n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    out.append([m.total, m.used, m.free, m2.total, m2.used, m2.free])
print(json.dumps(out))
"""
        out = json.loads(
            hami.python(code, FAKE_GPU_COUNT="2", CUDA_DEVICE_MEMORY_LIMIT_0="100m", CUDA_DEVICE_MEMORY_LIMIT_1="300m")
        )
        assert out[0] == [100 * MIB, 0, 100 * MIB] * 2
        assert out[1] == [300 * MIB, 120 * MIB, 180 * MIB] * 2
    finally:
        hami.stop(holder)


def test_xid_events_and_health_script(hami: Hami) -> None:
    events = hami.tmp / "events"
    events.write_text("")
    code = """
import json, sys, pynvml as n
n.nvmlInit()
h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
s = n.nvmlEventSetCreate()
for h in (h0, h1):
    n.nvmlDeviceRegisterEvents(h, n.nvmlDeviceGetSupportedEventTypes(h) & n.nvmlEventTypeXidCriticalError, s)
print("ready", flush=True)
got = []
while len(got) < 2:
    try:
        e = n.nvmlEventSetWait_v2(s, 20000)
    except n.NVMLError_Timeout:
        break
    got.append([n.nvmlDeviceGetIndex(e.device), e.eventType, e.eventData])
print(json.dumps(got), flush=True)
for line in sys.stdin:  # one health check per line, answered at once
    try:
        n.nvmlDeviceGetMemoryInfo(h1)
        print("ok", flush=True)
    except n.NVMLError as e:
        print("lost" if e.value == n.NVML_ERROR_GPU_IS_LOST else str(e), flush=True)
n.nvmlEventSetFree(s)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=hami.environ(False, FAKE_GPU_COUNT="2", FAKE_NVML_EVENTS_FILE=str(events)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None

    def health_after(line: str) -> str:
        with events.open("a") as f:
            f.write(line)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("check\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert proc.stdout.readline().strip() == "ready"
        with events.open("a") as f:
            f.write("xid 1 79\nxid GPU-fa4e0000-0000-4000-8000-000000000000 48\n")
        xid = 8  # nvmlEventTypeXidCriticalError
        assert json.loads(proc.stdout.readline()) == [[1, xid, 79], [0, xid, 48]]
        assert health_after("") == "ok"
        assert health_after("lost 1\n") == "lost"
        assert health_after("xid 0 13\n") == "lost"  # an event is not a recovery
        assert health_after("recover GPU-fa4e0000-0000-4000-8000-000000000001\n") == "ok"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream:
                stream.close()


def test_process_list_and_utilisation_come_from_the_virtual_timeline(hami: Hami) -> None:
    # 2000 launches of 100x1024 threads at 1 ns/thread = 0.2 s of device time for GPU 1, synchronised so that
    # all of it lies in the past when NVML is asked (a fast interpreter start would otherwise see only part).
    worker = hami.spawn(
        "init",
        "ctx",
        "1",
        "alloc",
        "64m",
        "kernel",
        "launch",
        "100",
        "1024",
        "2000",
        "sync",
        "ready",
        "hold",
        FAKE_GPU_COUNT="2",
    )
    try:
        assert worker.stdout is not None
        lines = [json.loads(worker.stdout.readline()) for _ in range(7)]
        assert [line["rc"] for line in lines[:6]] == [0] * 6
        code = """
import json, pynvml as n
n.nvmlInit()
h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
procs = [(p.pid, p.usedGpuMemory) for p in n.nvmlDeviceGetComputeRunningProcesses(h1)]
util = n.nvmlDeviceGetUtilizationRates(h1).gpu
samples = [(s.pid, s.smUtil) for s in n.nvmlDeviceGetProcessUtilization(h1, 0)]
idle = n.nvmlDeviceGetUtilizationRates(h0).gpu
print(json.dumps({"procs": procs, "util": util, "samples": samples, "idle": idle,
                  "used": n.nvmlDeviceGetMemoryInfo(h1).used}))
"""
        # A 10 s window: a slow interpreter start cannot miss the 0.2 s of kernels (2 % of it).
        # Sampling off (FAKE_NVML_SAMPLE_PERIOD_MS=0): the exact busy share of the window, to check the plumbing;
        # the realistic, sampled readings have their own tests below.
        out = json.loads(
            hami.python(
                code,
                preload=False,
                FAKE_GPU_COUNT="2",
                FAKE_NVML_UTIL_WINDOW_MS="10000",
                FAKE_NVML_SAMPLE_PERIOD_MS="0",
            )
        )
        assert out["procs"] == [[worker.pid, 64 * MIB]]
        assert out["used"] == 64 * MIB
        assert out["util"] == 2
        assert out["idle"] == 0
        assert out["samples"] == [[worker.pid, 2]]
    finally:
        hami.stop(worker)


def test_synchronize_waits_for_the_virtual_device_time(hami: Hami) -> None:
    # 1000 x 1000 threads at 300 ns each: the kernel occupies the device for 0.3 s.
    started = time.monotonic()
    lines = hami.probe(
        "init", "ctx", "0", "kernel", "launch", "1000", "1000", "1", "sync", FAKE_KERNEL_NS_PER_THREAD="300"
    )
    assert [line["rc"] for line in lines] == [0] * 5
    assert time.monotonic() - started >= 0.3


SAMPLES = """
import json, sys, time, pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
start = time.monotonic()
while time.monotonic() - start < 1.0:
    time.sleep(0.05)
now_us = int(time.monotonic() * 1e6)
try:
    samples = [(s.pid, s.smUtil, s.timeStamp) for s in n.nvmlDeviceGetProcessUtilization(h, 0)]
    error = None
except n.NVMLError as e:
    samples, error = [], e.value
try:
    device = n.nvmlDeviceGetUtilizationRates(h).gpu
except n.NVMLError as e:
    device = -e.value
print(json.dumps({"samples": samples, "now_us": now_us, "error": error, "device": device}))
"""


def _sampled(hami: Hami, **settings: str) -> tuple[int, dict[str, Any]]:
    """NVML's view of a process that keeps GPU 0 half busy (kernels of 5 ms, then 5 ms idle) for 1.5 s."""
    hami.env.update(settings)  # the workload's and NVML reader's fake driver alike
    worker = hami.spawn(
        "init",
        "ctx",
        "0",
        "kernel",
        "ready",
        *(["launch", "50", "1024", "1", "sync", "sleep-ms", "5"] * 150),
        "hold",
        FAKE_KERNEL_NS_PER_THREAD="100",
    )
    try:
        assert worker.stdout is not None
        for _ in range(4):
            worker.stdout.readline()
        out = json.loads(hami.python(SAMPLES, preload=False))
    finally:
        hami.stop(worker)
    return worker.pid, out


def test_nvml_utilisation_is_sampled_per_period_lags_and_is_noisy(hami: Hami) -> None:
    pid, out = _sampled(
        hami, FAKE_NVML_SAMPLE_PERIOD_MS="167", FAKE_NVML_SAMPLE_LAG_MS="100", FAKE_NVML_UTIL_NOISE_PCT="3"
    )
    samples = [s for s in out["samples"] if s[0] == pid]
    stamps = [s[2] for s in samples]
    assert len(samples) >= 4  # one per 167 ms period of the last second
    assert all(b - a == 167000 for a, b in itertools.pairwise(stamps))
    assert all(stamp % 167000 == 0 for stamp in stamps)  # periods on the driver's clock
    assert out["now_us"] - stamps[-1] >= 100000  # the newest sample is at least the lag old
    # about half busy (sleeps overshoot), noisy; the oldest period may hold the workload's start
    assert all(20 <= s[1] <= 65 for s in samples[1:]), samples
    assert 20 <= out["device"] <= 65


def test_nvml_utilisation_can_be_not_supported(hami: Hami) -> None:
    _, out = _sampled(hami, FAKE_NVML_PROCESS_UTILIZATION="not_supported", FAKE_NVML_DEVICE_UTILIZATION="not_supported")
    assert out["error"] == 3  # NVML_ERROR_NOT_SUPPORTED
    assert out["device"] == -3
