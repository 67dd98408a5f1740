"""kubelet's pod-resources API as the plugin reads it (adapters/podresources.py) and what GetPreferredAllocation and
Allocate do with it (app/plugin.py), over a real gRPC server on a unix socket serving canned List answers (the real
kubelet is the peer of tests/e2e/test_real_node_burst_restarts.py).

The server here is a canned List answer, nothing more: it stands for a kubelet in the middle of admitting a pod.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.podresources import (
    REASON_ERROR,
    REASON_NO_SOCKET,
    REASON_TIMEOUT,
    REASON_TOO_LARGE,
    PodResourcesClient,
    PodResourcesError,
    decode_list,
    pb,
    pb_grpc,
)
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.plugin import AllocateError, DevicePluginState
from hami_device_plugin.app.settings import PROGRAM
from hami_device_plugin.core.admission import ListedContainer, ListedPod
from hami_device_plugin.core.inventory import Gpu
from podspecs import Ctr, pod_json

RESOURCE = "nvidia.com/gpu"
NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"

Answer = Sequence[tuple[str, str, Sequence[tuple[str, Sequence[tuple[str, Sequence[str]]]]]]]


def answer_message(pods: Answer) -> Any:
    """A ListPodResourcesResponse: (namespace, name, [(container, [(resource, [ids])])])."""
    return pb.ListPodResourcesResponse(
        pod_resources=[
            pb.PodResources(
                namespace=namespace,
                name=name,
                containers=[
                    pb.ContainerResources(
                        name=container,
                        devices=[pb.ContainerDevices(resource_name=r, device_ids=list(ids)) for r, ids in devices],
                    )
                    for container, devices in containers
                ],
            )
            for namespace, name, containers in pods
        ]
    )


class CannedLister(pb_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    """Serves one List answer, optionally late or failing."""

    def __init__(self) -> None:
        self.answer: Any = pb.ListPodResourcesResponse()
        self.delay = 0.0
        self.fail: grpc.StatusCode | None = None
        self.calls = 0

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            await context.abort(self.fail, "canned failure")
        return self.answer


@pytest.fixture
def socket_dir() -> Any:
    # Short path: unix socket names are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="hami-pr-", dir="/tmp") as directory:
        yield Path(directory)


async def serve(socket: Path, lister: CannedLister) -> grpc.aio.Server:
    server = grpc.aio.server()
    pb_grpc.add_PodResourcesListerServicer_to_server(lister, server)
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    return server


@pytest.fixture
async def kubelet(socket_dir: Path) -> AsyncIterator[tuple[Path, CannedLister]]:
    socket = socket_dir / "kubelet.sock"
    lister = CannedLister()
    server = await serve(socket, lister)
    yield socket, lister
    await server.stop(None)


# --- the adapter ---------------------------------------------------------------------------------------------


async def test_list_keeps_only_our_resource_and_every_listed_container(kubelet: tuple[Path, CannedLister]) -> None:
    socket, lister = kubelet
    lister.answer = answer_message(
        [
            ("team", "a", [("main", [(RESOURCE, [f"{G0}-0"]), ("example.com/nic", ["nic-1"])]), ("side", [])]),
            ("team", "b", [("main", [])]),
        ]
    )
    listed = await PodResourcesClient(socket, RESOURCE).list()
    assert listed == (
        ListedPod("team", "a", (ListedContainer("main", (f"{G0}-0",)), ListedContainer("side", ()))),
        ListedPod("team", "b", (ListedContainer("main", ()),)),
    )


def test_fields_the_plugin_does_not_read_are_skipped() -> None:
    # The kubelet's full ContainerResources carries cpu_ids (3), memory (4), dynamic_resources (5): unknown here.
    container = pb.ContainerResources(name="main").SerializeToString() + b"\x18\x05\x18\x06" + b"\x22\x02\x0a\x00"
    pod = pb.PodResources(namespace="n", name="p").SerializeToString() + b"\x1a" + bytes([len(container)]) + container
    message = pb.ListPodResourcesResponse.FromString(b"\x0a" + bytes([len(pod)]) + pod)
    assert decode_list(message, RESOURCE) == (ListedPod("n", "p", (ListedContainer("main", ()),)),)


async def test_no_socket_is_answered_at_once(socket_dir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(PodResourcesError) as excinfo:
        await PodResourcesClient(socket_dir / "absent.sock", RESOURCE, timeout=5.0).list()
    assert excinfo.value.reason == REASON_NO_SOCKET
    assert time.monotonic() - started < 1.0


async def test_a_slow_kubelet_costs_the_timeout_only(kubelet: tuple[Path, CannedLister]) -> None:
    socket, lister = kubelet
    lister.delay = 5.0
    started = time.monotonic()
    with pytest.raises(PodResourcesError) as excinfo:
        await PodResourcesClient(socket, RESOURCE, timeout=0.3).list()
    assert excinfo.value.reason == REASON_TIMEOUT
    assert time.monotonic() - started < 2.0


async def test_a_stale_socket_of_a_stopped_kubelet_costs_the_timeout_only(socket_dir: Path) -> None:
    socket = socket_dir / "kubelet.sock"
    server = await serve(socket, CannedLister())
    await server.stop(None)
    socket.touch(exist_ok=True)  # the file a stopped kubelet leaves behind, nobody listening
    started = time.monotonic()
    with pytest.raises(PodResourcesError) as excinfo:
        await PodResourcesClient(socket, RESOURCE, timeout=0.3).list()
    assert excinfo.value.reason in (REASON_TIMEOUT, "unavailable")
    assert time.monotonic() - started < 2.0


async def test_a_kubelet_that_starts_listening_within_the_timeout_is_waited_for(socket_dir: Path) -> None:
    socket = socket_dir / "kubelet.sock"
    socket.touch()  # the restarted kubelet has not replaced its old socket yet
    lister = CannedLister()
    lister.answer = answer_message([("n", "p", [("main", [])])])
    client = PodResourcesClient(socket, RESOURCE, timeout=3.0)

    async def restart_kubelet() -> grpc.aio.Server:
        await asyncio.sleep(0.3)
        socket.unlink()
        return await serve(socket, lister)

    listing, server = await asyncio.gather(client.list(), restart_kubelet())
    try:
        assert listing == (ListedPod("n", "p", (ListedContainer("main", ()),)),)
    finally:
        await server.stop(None)


async def test_an_answer_over_the_size_limit_is_refused(kubelet: tuple[Path, CannedLister]) -> None:
    socket, lister = kubelet
    lister.answer = answer_message([("n", f"p{i:04d}", [("main", [(RESOURCE, [f"{G0}-{i}"])])]) for i in range(2000)])
    with pytest.raises(PodResourcesError) as excinfo:
        await PodResourcesClient(socket, RESOURCE, max_bytes=16 << 10).list()
    assert excinfo.value.reason == REASON_TOO_LARGE


async def test_a_kubelet_error_is_reported_with_its_code(kubelet: tuple[Path, CannedLister]) -> None:
    socket, lister = kubelet
    lister.fail = grpc.StatusCode.RESOURCE_EXHAUSTED  # kubelet's rate limiter
    with pytest.raises(PodResourcesError) as excinfo:
        await PodResourcesClient(socket, RESOURCE).list()
    assert excinfo.value.reason == REASON_ERROR
    assert "RESOURCE_EXHAUSTED" in str(excinfo.value)


# --- GetPreferredAllocation and Allocate with it --------------------------------------------------------------


def state_for(
    tmp_path: Path, pods: Sequence[dict[str, Any]], client: PodResourcesClient | None, cache: PodCache | None = None
) -> tuple[DevicePluginState, PluginMetrics]:
    settings = PROGRAM.load_settings(
        ["--node-name", NODE, "--hook-path", str(tmp_path / "vgpu"), "--regions-path", str(tmp_path / "regions")],
        environ={},
    )
    cache = PodCache(settings.resource_names) if cache is None else cache
    cache.replace(pods)
    metrics = PluginMetrics.create("test")
    state = DevicePluginState(
        node=NODE,
        gpus=(Gpu(uuid=G0, index=0, name="NVIDIA L40S", memory_mib=16384),),
        device_config=settings.base_device_config(),
        injection=settings.injection(),
        metrics=metrics,
        pods=cache,
        allocate_wait=1.0,
        pod_resources=client,
    )
    state.connect(object())  # type: ignore[arg-type]  # never called here: the pod patches are only queued
    state.recovery.nothing_to_recover()
    return state, metrics


# Same creation second, as in a burst: the cache's order (first, then second) is a guess for a restarted kubelet.
FIRST = pod_json("first", uid="uid-first", node=NODE, containers=[Ctr("main", [(G0, 0, 1000, 10)])])
SECOND = pod_json("second", uid="uid-second", node=NODE, containers=[Ctr("main", [(G0, 1, 2000, 20)])])
AVAILABLE = [f"{G0}-{r}" for r in range(10)]


def identifications(metrics: PluginMetrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for metric in metrics.identifications.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[(sample.labels["rpc"], sample.labels["by"], sample.labels["reason"])] = sample.value
    return out


async def test_kubelet_admitting_the_second_pod_gets_its_slots_and_its_grant(
    tmp_path: Path, kubelet: tuple[Path, CannedLister]
) -> None:
    socket, lister = kubelet
    lister.answer = answer_message([("default", "second", [("main", [])])])  # "first" comes later in its batch
    state, metrics = state_for(tmp_path, [FIRST, SECOND], PodResourcesClient(socket, RESOURCE))
    assert await state.preferred(AVAILABLE, [], 1) == (f"{G0}-1",)
    allocation = await state.allocate([f"{G0}-1"])
    assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    assert ("uid-second", 0) in state.claims.held
    assert identifications(metrics) == {
        ("preferred", "pod-resources", "admitting"): 1.0,
        ("allocate", "pod-resources", "admitting"): 1.0,
    }


async def test_kubelet_picking_other_devices_for_the_named_pod_never_serves_another_pod(
    tmp_path: Path, kubelet: tuple[Path, CannedLister]
) -> None:
    socket, lister = kubelet
    lister.answer = answer_message([("default", "second", [("main", [])])])
    state, _ = state_for(tmp_path, [FIRST, SECOND], PodResourcesClient(socket, RESOURCE))
    # first's exact slot: under the inference this would hand "second" first's grant; kubelet named "second".
    allocation = await state.allocate([f"{G0}-0"])
    assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    assert ("uid-second", 0) in state.claims.held
    assert ("uid-first", 0) not in state.claims.held


async def test_without_the_socket_the_inference_decides_and_the_reason_is_counted(tmp_path: Path) -> None:
    state, metrics = state_for(tmp_path, [FIRST, SECOND], PodResourcesClient(tmp_path / "none.sock", RESOURCE))
    assert await state.preferred(AVAILABLE, [], 1) == (f"{G0}-0",)  # the cache's order
    allocation = await state.allocate([f"{G0}-0"])
    assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
    assert identifications(metrics) == {
        ("preferred", "inference", REASON_NO_SOCKET): 1.0,
        ("allocate", "inference", REASON_NO_SOCKET): 1.0,
    }


async def test_a_pod_kubelet_holds_before_the_cache_does_is_waited_for(
    tmp_path: Path, kubelet: tuple[Path, CannedLister]
) -> None:
    socket, lister = kubelet
    lister.answer = answer_message([("default", "second", [("main", [])])])
    cache = PodCache()  # the one the pod watch fills
    state, metrics = state_for(tmp_path, [FIRST], PodResourcesClient(socket, RESOURCE), cache)

    async def watch_delivers_second() -> None:
        await asyncio.sleep(0.2)
        cache.apply("ADDED", SECOND)

    allocation, _ = await asyncio.gather(state.allocate([f"{G0}-1"]), watch_delivers_second())
    assert allocation.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    assert identifications(metrics) == {("allocate", "pod-resources", "admitting"): 1.0}


def account_in(region: Path) -> bytes:
    """Change the region in place, as the container's processes do when they account; its new content."""
    image = bytearray(region.read_bytes())
    image[-1] ^= 0xFF
    region.write_bytes(image)
    return bytes(image)


def file_identity(path: Path) -> tuple[int, bytes]:
    return path.stat().st_ino, path.read_bytes()


async def test_a_container_kubelet_allocates_again_gets_the_same_grant_and_files(
    tmp_path: Path, kubelet: tuple[Path, CannedLister]
) -> None:
    # A restarted kubelet that lost "second"'s devices (its checkpoint was not written) lists it without them and
    # asks again: the same answer, the same directory, the region and its accounting kept.
    socket, lister = kubelet
    lister.answer = answer_message([("default", "second", [("main", [])])])
    state, metrics = state_for(tmp_path, [FIRST, SECOND], PodResourcesClient(socket, RESOURCE))
    first = await state.allocate([f"{G0}-1"])
    assert first.spec_file is not None
    accounted = account_in(Path(first.region_file))  # the container's processes account in it meanwhile
    spec = file_identity(Path(first.spec_file))

    assert await state.preferred(AVAILABLE, [], 1) == (f"{G0}-1",)
    again = await state.allocate([f"{G0}-1"])
    assert (again.envs, again.mounts, again.cache_dir, again.region_file, again.spec_file) == (
        first.envs,
        first.mounts,
        first.cache_dir,
        first.region_file,
        first.spec_file,
    )
    assert file_identity(Path(first.region_file))[1] == accounted
    assert file_identity(Path(first.spec_file)) == spec
    assert ("uid-first", 0) not in state.claims.held
    assert identifications(metrics) == {
        ("allocate", "pod-resources", "admitting"): 1.0,
        ("preferred", "pod-resources", "served-again"): 1.0,
        ("allocate", "pod-resources", "served-again"): 1.0,
    }


async def test_a_container_allocated_again_on_other_gpus_is_refused_at_once(
    tmp_path: Path, kubelet: tuple[Path, CannedLister]
) -> None:
    socket, lister = kubelet
    lister.answer = answer_message([("default", "second", [("main", [])])])
    state, _ = state_for(tmp_path, [FIRST, SECOND], PodResourcesClient(socket, RESOURCE))
    await state.allocate([f"{G0}-1"])
    with pytest.raises(AllocateError, match="already served"):
        await state.allocate(["GPU-00000000-0000-4000-8000-00000000ffff-1"])
    assert ("uid-first", 0) not in state.claims.held


async def test_without_kubelet_naming_it_a_container_served_before_is_refused_as_before(tmp_path: Path) -> None:
    state, metrics = state_for(tmp_path, [SECOND], PodResourcesClient(tmp_path / "none.sock", RESOURCE))
    await state.allocate([f"{G0}-1"])
    with pytest.raises(AllocateError):
        await state.allocate([f"{G0}-1"])
    assert ("allocate", "pod-resources", "served-again") not in identifications(metrics)
