"""GPU health transitions: XIDs, probes, recovery."""

from __future__ import annotations

from hami_device_plugin.core.health import GpuHealth, on_probe, on_xid


def test_critical_xid_makes_unhealthy_and_ignored_xid_does_not() -> None:
    healthy = GpuHealth()
    assert on_xid(healthy, 13, 10.0) == healthy
    sick = on_xid(healthy, 79, 10.0)
    assert not sick.healthy
    assert sick.reason == "XID 79 critical error"


def test_recovers_only_after_quiet_period_with_answering_probes() -> None:
    sick = on_xid(GpuHealth(), 48, 100.0)
    assert not on_probe(sick, True, 105.0, recovery_seconds=10).healthy
    assert on_probe(sick, True, 110.0, recovery_seconds=10).healthy


def test_failed_probe_resets_the_quiet_period() -> None:
    sick = on_xid(GpuHealth(), 48, 100.0)
    lost = on_probe(sick, False, 108.0, recovery_seconds=10)
    assert not on_probe(lost, True, 112.0, recovery_seconds=10).healthy
    assert on_probe(lost, True, 118.0, recovery_seconds=10).healthy


def test_probe_failure_on_healthy_gpu() -> None:
    assert not on_probe(GpuHealth(), False, 1.0, recovery_seconds=1).healthy
    assert on_probe(GpuHealth(), True, 1.0, recovery_seconds=1) == GpuHealth()
