"""The monitor in the real plugin process against accounting regions written by the real hamicore
(libvgpu.so preloaded into hamicore's CUDA test client, over the fake driver -- test doubles for the GPU):
per-container memory metrics with HAMi's names, the contention and priority signals and the heartbeat written
back into the regions while two containers run kernels on one GPU, and hamicore holding the lower-priority
container's launches (its utilisation falls to 0) while the higher-priority one runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FAKE_NVML_DIR, ROOT, StartPlugin
from hami_device_plugin.core.region import parse_region
from prometheus_client.parser import text_string_to_metric_families

BUILD = ROOT / "hamicore" / "build"
PROBE = BUILD / "tests" / "cuda_probe"
GPU0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
MIB = 1024 * 1024


def spawn_container(hook: Path, name: str, priority: int, state: Path, cycles: int) -> subprocess.Popen[bytes]:
    """One "container": a CUDA client under libvgpu.so with its own accounting file, launching small kernels."""
    directory = hook / "containers" / f"uid-{name}_{name}"
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
        "LD_PRELOAD": str(BUILD / "libvgpu.so"),
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(directory / f"uid-{name}_{name}.cache"),
        "CUDA_DEVICE_MEMORY_LIMIT_0": "1000m",
        "CUDA_DEVICE_SM_LIMIT": "50",
        "CUDA_TASK_PRIORITY": str(priority),
        "FAKE_GPU_COUNT": "1",
        "FAKE_GPU_STATE_FILE": str(state),
        "FAKE_KERNEL_NS_PER_THREAD": "100",
    }
    work = ["launch", "100", "1024", "1", "sync"] * cycles
    args = [str(PROBE), "init", "ctx", "0", "alloc", f"{100 + priority * 50}m", "kernel", *work, "hold"]
    with (directory.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_memory_metrics_and_limiter_signals(start_plugin: StartPlugin, tmp_path: Path) -> None:
    if not PROBE.is_file():
        pytest.fail(f"hamicore's test client is missing at {PROBE}: run `make hamicore` first")
    state = tmp_path / "gpu.state"
    plugin = await start_plugin(
        gpus=1, split=4, env={"FAKE_GPU_STATE_FILE": str(state), "FAKE_KERNEL_NS_PER_THREAD": "100"}
    )
    procs = [spawn_container(plugin.hook, "high", 0, state, 3000), spawn_container(plugin.hook, "low", 1, state, 3000)]
    try:
        regions = {n: plugin.hook / "containers" / f"uid-{n}_{n}" / f"uid-{n}_{n}.cache" for n in ("high", "low")}
        seen_contended = seen_hold = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (seen_contended and seen_hold):
            await asyncio.sleep(0.2)
            snaps = {}
            for name, path in regions.items():
                try:
                    snaps[name] = parse_region(path.read_bytes())
                except (OSError, ValueError):
                    break
            if len(snaps) < 2 or not all(s.devices for s in snaps.values()):
                continue
            high, low = snaps["high"].devices[0], snaps["low"].devices[0]
            if high.contended and low.contended:
                seen_contended = True
            if low.priority_hold and not high.priority_hold:
                seen_hold = True
        for p in procs:
            assert p.poll() is None, f"test client {p.args} exited with {p.returncode}"
        assert seen_contended, f"contention never signalled; plugin log:\n{plugin.log_text()[-3000:]}"
        assert seen_hold, "the lower-priority container was never held for the higher-priority one"
        # hamicore honours the hold: the low-priority container stops using the GPU, the other goes on
        deadline = time.monotonic() + 30
        while True:
            high_region, low_region = (parse_region(p.read_bytes()) for p in (regions["high"], regions["low"]))
            if low_region.devices[0].utilization_pct == 0 and high_region.devices[0].utilization_pct > 0:
                break
            assert time.monotonic() < deadline, f"low-priority container not held: {low_region.devices[0]}"
            await asyncio.sleep(0.2)
        assert high_region.monitor_generation > 0  # the heartbeat hamicore checks
        assert low_region.monitor_generation > 0
        while True:  # the metrics of that scan are published when the scan ends
            text = await asyncio.to_thread(metrics, plugin.metrics_port)
            samples = {
                (sample.name, sample.labels.get("container"), sample.labels.get("device_uuid")): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if samples.get(("hami_container_device_utilization_ratio", "low", GPU0)) == 0:
                break
            assert time.monotonic() < deadline, "the held container's utilisation metric never fell to 0"
            await asyncio.sleep(0.2)
        for name, used in (("high", 100), ("low", 150)):
            assert samples[("hami_vgpu_memory_used_bytes", name, GPU0)] == used * MIB
            assert samples[("hami_vgpu_memory_limit_bytes", name, GPU0)] == 1000 * MIB
        assert 0 < samples[("hami_container_device_utilization_ratio", "high", GPU0)] <= 1
        assert samples[("hami_container_device_utilization_ratio", "low", GPU0)] == 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()

    # once the work stops, the signals are cleared again
    async def quiet() -> bool:
        snaps = [parse_region(p.read_bytes()).devices[0] for p in regions.values()]
        return not any(d.contended or d.priority_hold for d in snaps)

    deadline = time.monotonic() + 60
    while not await quiet():
        assert time.monotonic() < deadline, "signals not cleared after the containers went idle"
        await asyncio.sleep(0.3)
