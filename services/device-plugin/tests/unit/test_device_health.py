"""The GPUs as kubelet sees them (app/health.py): XIDs, probes and the device config change what is listed,
each change bumps the version ListAndWatch waits on, and the device gauges follow."""

from __future__ import annotations

import asyncio

from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu

G0, G1 = "GPU-0", "GPU-1"


def gauge(metrics: PluginMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def health_of(now: list[float]) -> tuple[DeviceHealth, PluginMetrics]:
    metrics = PluginMetrics.create("test")
    gpus = (Gpu(uuid=G0, index=0, name="L40S", memory_mib=16384), Gpu(uuid=G1, index=1, name="L40S", memory_mib=16384))
    health = DeviceHealth(
        gpus=gpus,
        device_config=DeviceConfig(split_count=2),
        injection=InjectionConfig(),
        metrics=metrics,
        clock=lambda: now[0],
    )
    return health, metrics


async def test_a_critical_xid_marks_the_gpu_unhealthy_and_wakes_the_listing() -> None:
    now = [100.0]
    health, metrics = health_of(now)
    assert len(health.devices()) == 4
    assert gauge(metrics, "hami_device_plugin_healthy_devices") == 4
    version = health.version
    waiter = asyncio.create_task(health.wait_change(version))
    health.on_xid(G0, 13)  # ignored by default: an application error
    await asyncio.sleep(0)
    assert not waiter.done()
    health.on_xid(G0, 79)  # fallen off the bus
    await asyncio.wait_for(waiter, 1)
    assert health.version == version + 1
    assert [g.healthy for g in health.current_gpus()] == [False, True]
    assert gauge(metrics, "hami_device_plugin_healthy_devices") == 2
    health.on_xid("GPU-unknown", 79)
    assert health.version == version + 1


def test_probes_recover_a_gpu_after_the_recovery_time_and_all_can_be_marked_unhealthy() -> None:
    now = [100.0]
    health, _ = health_of(now)
    health.on_probe(G1, False, recovery_seconds=30)
    assert not health.current_gpus()[1].healthy
    now[0] = 110.0
    health.on_probe(G1, True, recovery_seconds=30)
    assert not health.current_gpus()[1].healthy
    now[0] = 200.0
    health.on_probe(G1, True, recovery_seconds=30)
    assert health.current_gpus()[1].healthy
    health.set_all_unhealthy("NVML stopped answering")
    assert not any(g.healthy for g in health.current_gpus())
    assert health.gpus[0].healthy  # as discovered


def test_a_new_device_config_changes_the_listing_and_the_placement_policy() -> None:
    health, metrics = health_of([0.0])
    policy = health.placement_policy()
    assert health.placement_policy() is policy  # computed once per version
    version = health.version
    health.set_device_config(DeviceConfig(split_count=2), InjectionConfig())  # the same: nothing changes
    assert health.version == version
    health.set_device_config(DeviceConfig(split_count=5), InjectionConfig(oversubscribe=True))
    assert health.version == version + 1
    assert len(health.devices()) == 10
    assert gauge(metrics, "hami_device_plugin_devices") == 10
    assert health.injection.oversubscribe
    assert health.device_config.split_count == 5
    assert health.placement_policy() is not policy
