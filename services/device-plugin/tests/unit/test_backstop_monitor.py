"""The backstop wired into the monitor's scan (app/monitor.py): NVML's per-process memory from the driver, the
limits from the plugin's records, the accounting from the regions; an allocated container whose region is gone
(removed by the container) is checked too. The driver and /proc are doubles; regions are real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hami_device_plugin.adapters.nvml import DeviceTelemetry
from hami_device_plugin.app.backstop import Backstop
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.core import backstop as bs
from hami_device_plugin.core.hostpid import ProcIdentity
from hami_device_plugin.core.inventory import Gpu
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_backstop_decisions import FakeProcs
from test_monitor_trust import G0, MIB, poke, record, write_region


class FakeDriver:
    """NVML double: per-process used memory per GPU, nothing else."""

    def __init__(self, per_process: dict[str, dict[int, int]]) -> None:
        self.per_process = per_process

    def process_utilization(self, uuid: str, since_us: int) -> tuple[dict[int, int], int]:
        return {}, since_us

    def utilization(self, uuid: str) -> int | None:
        return 0

    def memory(self, uuid: str) -> tuple[int, int] | None:
        return None

    def process_memory(self, uuid: str) -> dict[int, int] | None:
        return self.per_process.get(uuid)

    def telemetry(self, uuid: str) -> DeviceTelemetry:
        return DeviceTelemetry()  # a driver that reports none of it


async def test_a_zeroed_counter_and_a_removed_region_are_both_caught_in_one_scan(tmp_path: Path) -> None:
    zeroed = write_region(tmp_path, "uid-z_c", pid=100)
    poke(zeroed, 4096, "<Q", 0)  # device 0's used_bytes
    records = {"uid-z_c": record("uid-z_c", 1), "uid-r_c": record("uid-r_c", 1)}  # uid-r_c: no region any more
    procs = FakeProcs(
        {
            100: (ProcIdentity(100, 100, 500), "0::/kubepods/poduid-z/a"),
            300: (ProcIdentity(300, 1, 900), "0::/kubepods/poduid-r/b"),
        }
    )
    metrics = PluginMetrics.create("test")
    driver: Any = FakeDriver({G0: {100: 1500 * MIB, 300: 1200 * MIB}})  # the monitor calls only these
    gpu = Gpu(uuid=G0, index=0, name="NVIDIA A100", memory_mib=40960)
    monitor = Monitor(
        regions_dir=tmp_path,
        driver=driver,
        gpus=lambda: (gpu,),
        pods=None,
        metrics=metrics,
        cleanup_grace=300,
        procs=procs,
        records=records.get,
        record_names=lambda: set(records),
        backstop=Backstop(procs=procs, metrics=metrics, policy=lambda: bs.OBSERVE, tolerance=bs.Tolerance()),
    )
    await monitor.scan_once()
    assert (
        metrics.registry.get_sample_value("hami_device_plugin_gpu_memory_over_limit_total", {"policy": "observe"}) == 2
    )
    # Both are accounted 0 (a zeroed counter, no region): the whole real use is the gap.
    text = generate_latest(metrics.registry).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    real = sorted(s.value for s in samples if s.name == "hami_vgpu_memory_real_bytes")
    gap = sorted(s.value for s in samples if s.name == "hami_vgpu_memory_unaccounted_bytes")
    assert real == gap == [1200 * MIB, 1500 * MIB]
