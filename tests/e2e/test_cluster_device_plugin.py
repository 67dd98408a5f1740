"""The kubelet stand-in against a device plugin over the real v1beta1 gRPC API (here a scripted test double):
registration, Node capacity/allocatable from ListAndWatch, admission with GetPreferredAllocation and Allocate in
kubelet order, device IDs never handed out twice, failures surfacing as UnexpectedAdmissionError, kubelet
restarts, and running a pod's command under the Allocate environment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness.double_device_plugin import DoubleDevicePlugin
from e2e_harness.kubelet_standin import AddGpuNode, KubeletStandIn
from e2e_harness.waiting import wait_for, wait_for_pod
from kubernetes_asyncio import client as k8s

RESOURCE = "e2e.example.com/widget"
DEVICES = ("widget-0", "widget-1", "widget-2", "widget-3")

NodeWithPlugin = tuple[KubeletStandIn, DoubleDevicePlugin]


async def node_resources(api: k8s.ApiClient, node: str) -> tuple[str | None, str | None]:
    obj = await k8s.CoreV1Api(api).read_node(node)
    return (obj.status.capacity or {}).get(RESOURCE), (obj.status.allocatable or {}).get(RESOURCE)


async def wait_resources(api: k8s.ApiClient, node: str, capacity: str, allocatable: str) -> None:
    async def check() -> bool:
        return await node_resources(api, node) == (capacity, allocatable)

    await wait_for(check, what=f"{node} {RESOURCE} capacity={capacity} allocatable={allocatable}")


@pytest.fixture
async def node_with_plugin(
    add_gpu_node: AddGpuNode, k8s_api: k8s.ApiClient, tmp_path: Path
) -> AsyncIterator[NodeWithPlugin]:
    kubelet = await add_gpu_node(labels={"e2e.local/node": uuid.uuid4().hex[:8]}, run_commands=True)
    share = tmp_path / "widget-share"
    share.mkdir()
    (share / "model.txt").write_text("widget firmware 7\n")
    plugin = DoubleDevicePlugin(
        kubelet.device_plugin_dir,
        RESOURCE,
        DEVICES,
        mounts=[("/opt/widget", str(share))],
        extra_envs={"WIDGET_FIRMWARE": "/opt/widget/model.txt"},
    )
    await plugin.start()
    await wait_resources(k8s_api, kubelet.node_name, "4", "4")
    try:
        yield kubelet, plugin
    finally:
        await plugin.stop()


def widget_pod(
    name: str, kubelet: KubeletStandIn, count: int, *, command: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "registry.local/widget:1",
        "resources": {"limits": {RESOURCE: str(count)}},
    }
    if command:
        container["command"] = command
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [container],
            "nodeSelector": {"kubernetes.io/hostname": kubelet.node_name},
            "restartPolicy": "Never",
            **extra,
        },
    }


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p.get("status", {}).get("phase") == phase


async def test_registration_puts_the_devices_on_the_node(
    k8s_api: k8s.ApiClient, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    assert kubelet.registrations == [(RESOURCE, "double.sock")]
    assert plugin.calls.list_and_watch_opened == 1
    assert kubelet.plugin_devices(RESOURCE) == dict.fromkeys(DEVICES, "Healthy")
    # An unhealthy device leaves capacity alone and drops out of allocatable, as with the kubelet.
    await plugin.set_health("widget-2", "Unhealthy")
    await wait_resources(k8s_api, kubelet.node_name, "4", "3")
    await plugin.set_health("widget-2", "Healthy")
    await wait_resources(k8s_api, kubelet.node_name, "4", "4")


async def test_scheduled_pod_gets_allocate_and_runs(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    core = k8s.CoreV1Api(k8s_api)
    await core.create_namespaced_pod(namespace, widget_pod("first", kubelet, 2))
    first = await wait_for_pod(k8s_api, namespace, "first", phase_is("Running"), what="Running")
    assert first["spec"]["nodeName"] == kubelet.node_name
    # GetPreferredAllocation came first with all four free; the double prefers the highest IDs.
    assert plugin.calls.preferred[0] == (DEVICES, (), 2)
    assert plugin.calls.allocate == [("widget-3", "widget-2")]
    [allocation] = kubelet.allocations_of(namespace, "first")
    assert allocation.envs["DOUBLE_DEVICES"] == "widget-3,widget-2"

    await core.create_namespaced_pod(namespace, widget_pod("second", kubelet, 2))
    await wait_for_pod(k8s_api, namespace, "second", phase_is("Running"), what="Running")
    # Only the two free devices were offered: an ID is never given to two live pods.
    assert plugin.calls.preferred[1] == (("widget-0", "widget-1"), (), 2)
    assert set(plugin.calls.allocate[1]) == {"widget-0", "widget-1"}
    assert kubelet.devices_in_use(RESOURCE) == set(DEVICES)

    # Deleting a pod gives its devices back.
    await core.delete_namespaced_pod("first", namespace)
    await wait_for(lambda: _gone(k8s_api, namespace, "first"), what="first deleted")
    await wait_for(lambda: _true(kubelet.devices_in_use(RESOURCE) == {"widget-0", "widget-1"}), what="devices released")
    await core.create_namespaced_pod(namespace, widget_pod("third", kubelet, 2))
    await wait_for_pod(k8s_api, namespace, "third", phase_is("Running"), what="Running")
    assert set(plugin.calls.allocate[2]) == {"widget-2", "widget-3"}


async def _gone(api: k8s.ApiClient, namespace: str, name: str) -> bool:
    try:
        await k8s.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except k8s.ApiException as e:
        return e.status == 404
    return False


async def _true(value: bool) -> bool:
    return value


async def test_allocate_error_fails_the_pod_with_the_plugins_message(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    plugin.allocate_error = "widget firmware refused the request"
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, widget_pod("refused", kubelet, 1))
    pod = await wait_for_pod(k8s_api, namespace, "refused", phase_is("Failed"), what="Failed")
    assert pod["status"]["reason"] == "UnexpectedAdmissionError"
    assert "widget firmware refused the request" in pod["status"]["message"]
    assert kubelet.devices_in_use(RESOURCE) == set()


async def test_pods_are_admitted_in_the_order_they_reached_the_node(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    core = k8s.CoreV1Api(k8s_api)
    await plugin.set_health("widget-0", "Unhealthy")
    await plugin.set_health("widget-1", "Unhealthy")
    await plugin.set_health("widget-2", "Unhealthy")
    await wait_resources(k8s_api, kubelet.node_name, "4", "1")
    kubelet.pause_admission()
    # Bound directly (no scheduler), so both reach the node although only one device is free, in creation
    # order. The names sort against that order on purpose.
    await core.create_namespaced_pod(namespace, widget_pod("z-older", kubelet, 1, nodeName=kubelet.node_name))
    await asyncio.sleep(1.1)
    await core.create_namespaced_pod(namespace, widget_pod("a-younger", kubelet, 1, nodeName=kubelet.node_name))
    await wait_for(
        lambda: _true({(namespace, "z-older"), (namespace, "a-younger")} <= kubelet.known_pods()),
        what="both pods seen by the stand-in",
    )
    kubelet.resume_admission()
    await wait_for_pod(k8s_api, namespace, "z-older", phase_is("Running"), what="Running")
    younger = await wait_for_pod(k8s_api, namespace, "a-younger", phase_is("Failed"), what="Failed")
    assert younger["status"]["reason"] == "UnexpectedAdmissionError"
    assert "requested number of devices unavailable" in younger["status"]["message"]
    assert plugin.calls.allocate == [("widget-3",)]


async def test_init_container_devices_are_reused_by_the_app_container(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    pod = widget_pod("with-init", kubelet, 1)
    pod["spec"]["initContainers"] = [
        {"name": "init", "image": "registry.local/widget:1", "resources": {"limits": {RESOURCE: "1"}}}
    ]
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    await wait_for_pod(k8s_api, namespace, "with-init", phase_is("Running"), what="Running")
    containers = [(a.container, a.init_container, a.device_ids) for a in kubelet.allocations_of(namespace, "with-init")]
    assert containers == [("init", True, ("widget-3",)), ("main", False, ("widget-3",))]
    # The app container's request named the init container's device as must-include.
    assert plugin.calls.preferred[1] == (DEVICES, ("widget-3",), 1)


async def test_kubelet_restart_makes_the_plugin_register_again(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    await kubelet.restart()
    assert not plugin.socket.exists()  # the kubelet clears the directory
    await wait_for(lambda: _true(len(kubelet.registrations) == 2), what="re-registration")
    assert plugin.registrations == 2
    await wait_resources(k8s_api, kubelet.node_name, "4", "4")
    await wait_for(lambda: _true(plugin.calls.list_and_watch_opened == 2), what="ListAndWatch reopened")
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, widget_pod("after-restart", kubelet, 1))
    await wait_for_pod(k8s_api, namespace, "after-restart", phase_is("Running"), what="Running")


async def test_pod_command_runs_with_the_allocate_environment_and_mounts(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, _ = node_with_plugin
    script = (
        "import os; print('devices', os.environ['DOUBLE_DEVICES']);"
        "print('firmware', open(os.environ['WIDGET_FIRMWARE']).read().strip());"
        "print('mode', os.environ['MODE'])"
    )
    pod = widget_pod("job", kubelet, 1, command=["python3", "-c", script])
    pod["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "spec-env"}]
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = await wait_for_pod(k8s_api, namespace, "job", phase_is("Succeeded"), what="Succeeded")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    output = kubelet.log_path(namespace, "job", "main").read_text().splitlines()
    assert output == ["devices widget-3", "firmware widget firmware 7", "mode spec-env"]
    # The devices of a finished pod are free again.
    await wait_for(lambda: _true(kubelet.devices_in_use(RESOURCE) == set()), what="devices released")


async def test_failing_command_fails_the_pod(
    k8s_api: k8s.ApiClient, namespace: str, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, _ = node_with_plugin
    pod = widget_pod("crash", kubelet, 1, command=["python3", "-c", "raise SystemExit(3)"])
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = await wait_for_pod(k8s_api, namespace, "crash", phase_is("Failed"), what="Failed")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


async def test_plugin_that_goes_away_keeps_capacity_and_drops_allocatable(
    k8s_api: k8s.ApiClient, node_with_plugin: NodeWithPlugin
) -> None:
    kubelet, plugin = node_with_plugin
    await plugin.stop()
    await wait_resources(k8s_api, kubelet.node_name, "4", "0")


async def test_pre_start_is_called_and_preferred_allocation_is_optional(
    k8s_api: k8s.ApiClient, namespace: str, add_gpu_node: AddGpuNode
) -> None:
    kubelet = await add_gpu_node()
    plugin = DoubleDevicePlugin(
        kubelet.device_plugin_dir, RESOURCE, DEVICES, preferred_allocation=False, pre_start_required=True
    )
    await plugin.start()
    try:
        await wait_resources(k8s_api, kubelet.node_name, "4", "4")
        await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, widget_pod("prestart", kubelet, 2))
        await wait_for_pod(k8s_api, namespace, "prestart", phase_is("Running"), what="Running")
    finally:
        await plugin.stop()
    assert plugin.calls.preferred == []
    assert plugin.calls.allocate == [("widget-0", "widget-1")]
    assert plugin.calls.pre_start == [("widget-0", "widget-1")]
    assert [c.rpc for c in kubelet.calls] == ["Allocate"]


async def test_list_and_watch_over_4_mib_fails_like_the_kubelet(
    k8s_api: k8s.ApiClient, add_gpu_node: AddGpuNode
) -> None:
    """The kubelet's 4 MiB gRPC receive limit: a plugin advertising ~75,000 devices with long IDs never gets
    them onto the Node (the failure seen with fine-grained memory-as-devices plugins)."""
    kubelet = await add_gpu_node()
    many = [f"widget-{i:08d}-{'x' * 48}" for i in range(75_000)]
    plugin = DoubleDevicePlugin(kubelet.device_plugin_dir, RESOURCE, many)
    await plugin.start()
    try:
        await wait_for(lambda: _true(plugin.calls.list_and_watch_opened == 1), what="ListAndWatch opened")
        await wait_resources(k8s_api, kubelet.node_name, "0", "0")
        assert kubelet.plugin_devices(RESOURCE) == {}
        error = kubelet.plugin_error(RESOURCE) or ""
        assert error.startswith("RESOURCE_EXHAUSTED"), error
        assert "larger than max" in error
    finally:
        await plugin.stop()
