"""Runs the device plugin's real node monitor (``hami_device_plugin.app.monitor.Monitor``: region reading,
activity and priority decisions, signal and heartbeat writes) over the per-container directories (under
``<hook dir>/containers``, the plugin's default) and their region files, every ``interval`` seconds
(``default``: the device plugin's default ``--monitor-interval``),
until killed; host pids are looked up in this machine's /proc as the plugin does. The containers' GPUs and
priorities are the plugin's records of them (``<hook dir>/containers/.records``, written by
``limiter_harness.container_region`` as Allocate writes them), read again while a container has none. NVML is whatever
``libnvidia-ml.so.1`` the environment provides (the tests: hamicore's fake NVML, a test double).

    python monitor_runner.py <hook dir> <interval seconds | default>
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from hami_device_plugin.adapters.nvml import NvmlDriver
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.app.settings import Settings


async def main(hook: Path, interval: float) -> None:
    driver = NvmlDriver().open()
    gpus = driver.discover()
    store = RecordStore(hook / "containers")
    monitor = Monitor(
        regions_dir=hook / "containers",
        driver=driver,
        gpus=lambda: gpus,
        pods=None,
        metrics=PluginMetrics.create("hamicore-test"),
        cleanup_grace=3600.0,
        records=lambda name: store.load().get(name),
        # the tests' processes are in no pod's cgroup; the check is the plugin's own (test_hostpid.py)
        verify_pod_cgroup=False,
    )
    print("ready", interval, flush=True)
    await monitor.run(interval)


if __name__ == "__main__":
    every = Settings().monitor_interval if sys.argv[2] == "default" else float(sys.argv[2])
    asyncio.run(main(Path(sys.argv[1]), every))
