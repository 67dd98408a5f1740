"""The node backstop in the real plugin process, with the real hamicore (libvgpu.so in hamicore's CUDA test client)
over the driver double: a "container" allocated 1000 MiB allocates 900 MiB, zeroes its region's ``used_bytes``
(the counter hamicore checks its budget against), and allocates 900 MiB more. The double's NVML lists the
process with 1800 MiB; within two monitor scans the plugin counts the episode (once), and shows the real use and
its gap to the accounting. Under ``enforce`` the process, which is in no pod's cgroup, is not killed: the kill is
refused as ``not-in-pod`` (the e2e, tests/e2e/test_security_backstop.py, kills a real container's process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import StartPlugin
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.core.records import ContainerRecord, RecordDevice
from hami_device_plugin.core.region import parse_region
from hamicore_client import PROBE, client_env
from prometheus_client.parser import text_string_to_metric_families

GPU0 = "GPU-fa4e0000-0000-4000-8000-000000000000"
MIB = 1 << 20
USED_BYTES_OFFSET = 4096  # device 0's record, its used_bytes first (hamicore/src/accounting/region_layout.h)
SCAN_S = 0.5  # the component plugin's --monitor-interval


def metric_values(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels.get("container") or s.labels.get("policy") or s.labels.get("result") or ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


Metrics = dict[tuple[str, str], float]


async def bypass(start_plugin: StartPlugin, tmp_path: Path, policy: str) -> tuple[Metrics, float, Metrics]:
    """Runs the attack under ``policy``: the metrics once the episode is counted, the seconds that took after the
    second allocation, and the metrics three scans later (the process still over its limit)."""
    if not PROBE.is_file():
        pytest.fail(f"hamicore's test client is missing at {PROBE}: run `make hamicore` first")
    state = tmp_path / "gpu.state"

    def allocated(hook: Path) -> None:
        RecordStore(hook / "containers").write(ContainerRecord("uid-x", "x", 1, (RecordDevice(GPU0, 1000 * MIB, 0),)))

    plugin = await start_plugin(
        env={"FAKE_GPU_STATE_FILE": str(state)}, args=[f"--gpu-memory-policy={policy}"], prepare=allocated
    )
    directory = plugin.hook / "containers" / "uid-x_x"
    directory.mkdir(parents=True, exist_ok=True)
    region, go = directory / "uid-x_x.cache", tmp_path / "zeroed"
    args = [str(PROBE), "init", "ctx", "0", "alloc", "900m", "wait-file", str(go), "alloc", "900m", "hold"]
    proc = await asyncio.to_thread(
        subprocess.Popen, args, env=client_env(region, state), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if parse_region(region.read_bytes()).devices[0].used_bytes == 900 * MIB:
                    break
            except (OSError, ValueError, IndexError):
                pass
            assert time.monotonic() < deadline, "the client never allocated its first 900 MiB"
            await asyncio.sleep(0.05)
        with region.open("r+b") as f:  # the container bypasses its counter
            f.seek(USED_BYTES_OFFSET)
            f.write((0).to_bytes(8, "little"))
        go.touch()
        assert proc.stdout is not None
        lines = [json.loads(await asyncio.to_thread(proc.stdout.readline)) for _ in range(5)]
        assert [(line["cmd"], line.get("rc")) for line in lines][3:] == [("wait-file", None), ("alloc", 0)], lines
        allocated_at = time.monotonic()
        while True:
            values = await asyncio.to_thread(metric_values, plugin.metrics_port)
            if values.get(("hami_device_plugin_gpu_memory_over_limit_total", policy)):
                elapsed = time.monotonic() - allocated_at
                await asyncio.sleep(3 * SCAN_S)
                return values, elapsed, await asyncio.to_thread(metric_values, plugin.metrics_port)
            assert time.monotonic() - allocated_at < 30, f"never detected; log:\n{plugin.log_text()[-3000:]}"
            await asyncio.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_container_that_zeroes_its_counter_is_detected_within_two_scans(
    start_plugin: StartPlugin, tmp_path: Path
) -> None:
    values, elapsed, later = await bypass(start_plugin, tmp_path, "observe")
    print(f"detected {elapsed:.2f} s ({elapsed / SCAN_S:.1f} scans of {SCAN_S} s) after the allocation")
    assert elapsed <= 2 * SCAN_S, f"detected after {elapsed:.2f} s ({elapsed / SCAN_S:.1f} scans)"
    assert values[("hami_vgpu_memory_real_bytes", "x")] == 1800 * MIB
    assert values[("hami_vgpu_memory_unaccounted_bytes", "x")] == 900 * MIB
    # still over three scans later: the same episode, counted once; observe kills nothing
    assert later[("hami_device_plugin_gpu_memory_over_limit_total", "observe")] == 1
    assert not any(name == "hami_device_plugin_gpu_memory_kills_total" for name, _ in later)


async def test_enforce_never_kills_a_process_outside_the_containers_pod(
    start_plugin: StartPlugin, tmp_path: Path
) -> None:
    _, _, values = await bypass(start_plugin, tmp_path, "enforce")
    assert values.get(("hami_device_plugin_gpu_memory_kills_total", "not-in-pod"), 0) >= 1
    assert values.get(("hami_device_plugin_gpu_memory_kills_total", "killed"), 0) == 0
