"""The plugin over the real kubelet device-plugin API (gRPC on unix sockets) with the fake NVML:
registration, ListAndWatch for 1, 2 and 8 GPUs, health changes and recovery, kubelet restarts, options,
and Allocate refused with a reason when the plugin cannot identify pods."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import StartPlugin
from kubelet_double import pb

UUID = "GPU-fa4e0000-0000-4000-8000-{:012x}"


@pytest.mark.parametrize(("gpus", "split"), [(1, 4), (2, 10), (8, 3)], ids=["1-gpu", "2-gpus", "8-gpus"])
async def test_registers_and_lists_split_count_devices_per_gpu(
    start_plugin: StartPlugin, gpus: int, split: int
) -> None:
    plugin = await start_plugin(gpus=gpus, split=split)
    _, request = plugin.kubelet.registrations[0]
    assert request.version == "v1beta1"
    assert request.endpoint == "hami-nvidia.sock"
    assert request.resource_name == "nvidia.com/gpu"
    assert request.options.get_preferred_allocation_available
    devices = plugin.kubelet.device_lists[-1]
    expected = {f"{UUID.format(g)}-{r}" for g in range(gpus) for r in range(split)}
    assert set(devices) == expected
    assert set(devices.values()) == {"Healthy"}
    assert plugin.kubelet.options.get_preferred_allocation_available
    assert not plugin.kubelet.options.pre_start_required


async def test_xid_makes_gpu_unhealthy_and_it_recovers(start_plugin: StartPlugin) -> None:
    plugin = await start_plugin(gpus=2, split=2)
    gpu1 = UUID.format(1)
    plugin.inject("xid 1 79")
    sick = await plugin.wait_devices(lambda d: d[f"{gpu1}-0"] == "Unhealthy")
    assert sick[f"{gpu1}-1"] == "Unhealthy"
    assert sick[f"{UUID.format(0)}-0"] == "Healthy"
    # no further errors: healthy again after --health-recovery (1 s) of answering probes
    healed = await plugin.wait_devices(lambda d: d[f"{gpu1}-0"] == "Healthy")
    assert set(healed.values()) == {"Healthy"}


async def test_ignored_xid_changes_nothing(start_plugin: StartPlugin) -> None:
    plugin = await start_plugin(gpus=1, split=2)
    sent = len(plugin.kubelet.device_lists)
    plugin.inject("xid 0 13")  # graphics engine exception: an application fault, not the GPU's
    plugin.inject("xid 0 48")  # double-bit ECC: the GPU's
    await plugin.wait_devices(lambda d: set(d.values()) == {"Unhealthy"})
    assert all(set(d.values()) == {"Healthy"} for d in plugin.kubelet.device_lists[:sent])
    assert '"xid": 13' in plugin.log_text()
    assert '"ignored": true' in plugin.log_text()


async def test_lost_gpu_stays_unhealthy_until_it_answers_again(start_plugin: StartPlugin) -> None:
    plugin = await start_plugin(gpus=2, split=1)
    gpu0 = f"{UUID.format(0)}-0"
    plugin.inject("lost 0")
    await plugin.wait_devices(lambda d: d[gpu0] == "Unhealthy")
    await asyncio.sleep(2.5)  # longer than the recovery period: still lost, still unhealthy
    assert plugin.kubelet.device_lists[-1][gpu0] == "Unhealthy"
    plugin.inject("recover 0")
    await plugin.wait_devices(lambda d: d[gpu0] == "Healthy")


async def test_kubelet_restart_re_registers_within_5_seconds(start_plugin: StartPlugin) -> None:
    plugin = await start_plugin(gpus=2, split=2)
    for _ in range(2):
        before = len(plugin.kubelet.registrations)
        recreated = await plugin.kubelet.restart()
        async with asyncio.timeout(30):
            await plugin.kubelet.registered.wait()
        registered_at, request = plugin.kubelet.registrations[before]
        assert registered_at - recreated <= 5.0, f"re-registered after {registered_at - recreated:.2f} s"
        assert request.endpoint == "hami-nvidia.sock"
        devices = await plugin.wait_devices(lambda d: len(d) == 4)
        assert set(devices.values()) == {"Healthy"}
        assert (plugin.kubelet.dir / "hami-nvidia.sock").exists()


async def test_plugin_retrying_registration_serves_again_when_a_starting_kubelet_removed_its_socket(
    start_plugin: StartPlugin,
) -> None:
    """kubelet went down leaving its socket with nothing behind it: the plugin's registration fails and is
    retried. The kubelet then starts, removes every file of the directory (the plugin's socket too) and serves
    kubelet.sock again: the plugin must serve its socket again before registering, or kubelet cannot reach it."""
    plugin = await start_plugin(gpus=2, split=2)
    await plugin.kubelet.stop()
    kubelet_sock = plugin.kubelet.dir / "kubelet.sock"
    kubelet_sock.unlink(missing_ok=True)
    kubelet_sock.write_text("")  # a new file there, with nothing listening: the plugin registers again and fails
    for _ in range(300):  # its first retry comes 0.25 s after the new file
        if '"register_failed"' in plugin.log_text():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the plugin did not try to register again:\n{plugin.log_text()[-4000:]}")
    before = len(plugin.kubelet.registrations)
    await plugin.kubelet.restart()  # clears `registered`; set by the next successful Register
    async with asyncio.timeout(30):
        await plugin.kubelet.registered.wait()
    assert len(plugin.kubelet.registrations) > before
    devices = await plugin.wait_devices(lambda d: len(d) == 4)
    assert set(devices.values()) == {"Healthy"}
    assert "plugin_socket_removed" in plugin.log_text()


async def test_allocate_without_pod_source_is_refused_with_reason(start_plugin: StartPlugin) -> None:
    plugin = await start_plugin(gpus=1, split=2)
    request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{UUID.format(0)}-0"])])
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await plugin.kubelet.stub.Allocate(request, timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without the Kubernetes API" in (excinfo.value.details() or "")


async def test_health_service_metrics_and_readiness(start_plugin: StartPlugin) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    plugin = await start_plugin(gpus=2, split=3)
    async with grpc.aio.insecure_channel(f"unix://{plugin.kubelet.dir / 'hami-nvidia.sock'}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="v1beta1.DevicePlugin"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{plugin.metrics_port}{path}", timeout=10) as r:
            return r.status, r.read().decode()

    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = await asyncio.to_thread(get, "/readyz")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert status == 200
    _, metrics = await asyncio.to_thread(get, "/metrics")
    assert "hami_device_plugin_devices 6.0" in metrics
    assert "hami_device_plugin_healthy_devices 6.0" in metrics
    assert 'hami_host_gpu_memory_total_bytes{device_index="1"' in metrics


async def test_bad_settings_exit_with_a_message(tmp_path: object) -> None:
    from conftest import PLUGIN

    proc = await asyncio.create_subprocess_exec(
        str(PLUGIN), "--split-count=0", "--no-kubernetes", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"split count 0 must be between 1 and 1024" in err
    proc = await asyncio.create_subprocess_exec(str(PLUGIN), stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin"})
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"node name is not set" in err


async def test_per_node_config_file_applies_and_reloads(start_plugin: StartPlugin, tmp_path: Path) -> None:
    config = tmp_path / "node-config.json"
    other = {"name": "other-node", "devicesplitcount": 9}
    config.write_text(json.dumps({"nodeconfig": [other, {"name": "gpu-7", "devicesplitcount": 2}]}))
    plugin = await start_plugin(gpus=2, split=5, args=["--node-name=gpu-7", f"--node-config={config}"])
    assert len(await plugin.wait_devices(lambda d: len(d) == 4)) == 4  # the node's entry, not the flag's 5
    entry = {"name": "gpu-7", "devicesplitcount": 3, "filterdevices": {"index": [1]}}
    config.write_text(json.dumps({"nodeconfig": [other, entry]}))
    devices = await plugin.wait_devices(lambda d: len(d) == 3)
    assert set(devices) == {f"{UUID.format(0)}-{r}" for r in range(3)}
    config.write_text('{"nodeconfig": [{"name": "gpu-7", "devicesplitcount": "many"}]}')  # refused, kept running
    await asyncio.sleep(3)
    assert len(plugin.kubelet.device_lists[-1]) == 3
    assert "node_config_rejected" in plugin.log_text()
    assert plugin.proc.poll() is None
