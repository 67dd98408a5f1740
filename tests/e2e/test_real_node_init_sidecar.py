"""Init containers and restartable sidecars (initContainers with ``restartPolicy: Always``) asking for GPUs, on a
real node (the upstream kubelet's device manager calling our device plugin), tested from the device manager's
rules (k8s.io/kubernetes pkg/kubelet/cm/devicemanager, manager.go ``Allocate`` and ``devicesToAllocate``):

* a plain init container's devices go to the pod's reusable set: the next container asking for the resource is
  handed those same device IDs first (Allocate is called again with them; GetPreferredAllocation is not, when
  the reusable set covers the request), and an app container takes them out of the set;
* a restartable (sidecar) init container keeps its devices for the pod's life: they are taken out of the
  reusable set, so app containers get other device IDs.

So a sidecar runs beside the app containers, and the scheduler extender adds their grants on a card (Kubernetes'
KEP-753 rule): a 6000 MiB sidecar and a 6000 MiB app container go to two 8192 MiB cards, or are refused when only
one card may be used. What each container must see is its own grant from hami.io/vgpu-devices-allocated (the card
and the memory limit), whatever device IDs kubelet passes. Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import GPU_CLIENT_IMAGE, NodeImages
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for
from hami_shared import names
from hami_shared.pod_devices import decode_device_slots, decode_pod_devices
from hami_stack import GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import own_control_plane, pod_namespace, real_node_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE = NodeSpec(
    "real-init",
    (
        GpuSpec("GPU-ffffffff-0000-4000-8000-000000000000", 8192),
        GpuSpec("GPU-ffffffff-0000-4000-8000-000000000001", 8192),
    ),
)
WAIT_S = 120.0
REPORT = (
    "exec 2>&1; grep -E '^FAKE_GPU_(UUIDS|COUNT)=' /run/hami-fake-driver/gpus.conf; "
    'echo "VISIBLE=$NVIDIA_VISIBLE_DEVICES"; echo "LIMIT=$CUDA_DEVICE_MEMORY_LIMIT_0"; '
    "cuda_probe init total 0; echo reported"
)


@pytest.fixture(scope="module")
def init_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "real-init") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    init_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        init_cluster, node_images, real_node_indexes, tmp_path_factory, "real-init-stack", (NODE,)
    ) as hami:
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(init_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with init_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"real-init-{uuid.uuid4().hex[:6]}", grace_period_seconds=0) as name:
        yield name


def gpu_container(name: str, memory_mib: int, *, keep_running: bool, sidecar: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": GPU_CLIENT_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", REPORT + ("; exec sleep 3600" if keep_running else "")],
        "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(memory_mib)}},
    }
    if sidecar:
        container["restartPolicy"] = "Always"
    return container


def gpu_pod(
    name: str, init: list[dict[str, Any]], app: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE.name},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "initContainers": init,
            "containers": app,
        },
    }


def container_report(log: str) -> dict[str, Any]:
    out: dict[str, Any] = {"probe": []}
    for line in log.splitlines():
        if line.startswith('{"cmd"'):
            out["probe"].append(json.loads(line))
        elif "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def checkpoint_devices(node: RealNode, pod_uid: str) -> dict[str, list[str]]:
    """Container name -> the device IDs kubelet's device manager gave it (its checkpoint)."""
    doc = json.loads((node.device_plugin_dir / "kubelet_internal_checkpoint").read_text())
    out: dict[str, list[str]] = {}
    for entry in doc["Data"]["PodDeviceEntries"]:
        if entry["PodUID"] == pod_uid and entry["ResourceName"] == "nvidia.com/gpu":
            ids = [device for per_numa in entry["DeviceIDs"].values() for device in per_numa]
            out.setdefault(entry["ContainerName"], []).extend(ids)
    return out


async def reports(core: k8s.CoreV1Api, namespace: str, pod: str, containers: list[str]) -> dict[str, str]:
    """Each container's log once it has printed its report (the pod fails the test if it ends Failed)."""
    logs: dict[str, str] = {}

    async def all_reported() -> bool:
        status = (await core.read_namespaced_pod(pod, namespace)).status
        assert status.phase != "Failed", status
        for name in set(containers) - logs.keys():
            try:
                log = await core.read_namespaced_pod_log(pod, namespace, container=name) or ""
            except k8s.ApiException:
                continue  # not started yet
            if "reported" in log.splitlines():
                logs[name] = log
        return len(logs) == len(containers)

    await wait_for(all_reported, what=f"{pod}: {containers} reporting", within=WAIT_S, interval=0.5)
    return logs


def sees_its_grant(log: str, gpu: str, memory_mib: int) -> tuple[Any, ...]:
    report = container_report(log)
    saw = (
        report.get("FAKE_GPU_COUNT"),
        report.get("FAKE_GPU_UUIDS"),
        report.get("VISIBLE"),
        report.get("LIMIT"),
        [(r["cmd"], r["rc"], r.get("total")) for r in report["probe"]],
    )
    expected = ("1", gpu, gpu, f"{memory_mib}m", [("init", 0, None), ("total", 0, memory_mib << 20)])
    return saw, expected


async def grants_of(core: k8s.CoreV1Api, api: k8s.ApiClient, namespace: str, pod: str) -> tuple[Any, Any, str]:
    obj = api.sanitize_for_serialization(await core.read_namespaced_pod(pod, namespace))
    annotations = obj["metadata"]["annotations"]
    assert annotations[names.BIND_PHASE] == "success"
    allocated = decode_pod_devices(annotations[names.DEVICES_ALLOCATED])
    slots = decode_device_slots(annotations[names.DEVICE_SLOTS])
    return allocated, slots, obj["metadata"]["uid"]


async def test_app_container_reuses_the_init_containers_device_and_sees_its_own_limit(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    core = k8s.CoreV1Api(api)
    pod = gpu_pod(
        "init-then-app",
        [gpu_container("prep", 300, keep_running=False)],
        [gpu_container("main", 500, keep_running=True)],
    )
    await core.create_namespaced_pod(ns, pod)
    logs = await reports(core, ns, "init-then-app", ["prep", "main"])
    allocated, slots, uid = await grants_of(core, api, ns, "init-then-app")
    [[prep_grant], [main_grant]] = allocated  # init containers first, as HAMi encodes them
    assert (prep_grant.usedmem, main_grant.usedmem) == (300, 500)
    # The real device manager's rule: the init container's device IDs are handed to the app container.
    kubelet_gave = checkpoint_devices(real, uid)
    assert kubelet_gave["main"] == kubelet_gave["prep"], (kubelet_gave, slots)
    # Each container still sees its own grant: its card and its own limit, not the other's.
    for name, grant in (("prep", prep_grant), ("main", main_grant)):
        saw, expected = sees_its_grant(logs[name], grant.uuid, grant.usedmem)
        assert saw == expected, (name, kubelet_gave, slots, logs[name])


async def test_sidecar_keeps_its_device_and_the_app_container_gets_another(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    core = k8s.CoreV1Api(api)
    pod = gpu_pod(
        "sidecar-and-app",
        [gpu_container("side", 200, keep_running=True, sidecar=True)],
        [gpu_container("main", 400, keep_running=True)],
    )
    await core.create_namespaced_pod(ns, pod)
    logs = await reports(core, ns, "sidecar-and-app", ["side", "main"])
    allocated, slots, uid = await grants_of(core, api, ns, "sidecar-and-app")
    [[side_grant], [main_grant]] = allocated
    assert (side_grant.usedmem, main_grant.usedmem) == (200, 400)
    # The real device manager's rule: a restartable init container keeps its devices; the app gets others.
    kubelet_gave = checkpoint_devices(real, uid)
    assert len(kubelet_gave["side"]) == len(kubelet_gave["main"]) == 1
    assert kubelet_gave["main"] != kubelet_gave["side"], (kubelet_gave, slots)
    for name, grant in (("side", side_grant), ("main", main_grant)):
        saw, expected = sees_its_grant(logs[name], grant.uuid, grant.usedmem)
        assert saw == expected, (name, kubelet_gave, slots, logs[name])


async def test_a_sidecar_and_an_app_container_that_overflow_a_card_get_a_card_each(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    real = stack.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    core = k8s.CoreV1Api(api)
    side = gpu_container("side", 6000, keep_running=True, sidecar=True)
    main = gpu_container("main", 6000, keep_running=True)
    await core.create_namespaced_pod(ns, gpu_pod("big-sidecar", [side], [main]))
    logs = await reports(core, ns, "big-sidecar", ["side", "main"])  # both running at once
    allocated, slots, uid = await grants_of(core, api, ns, "big-sidecar")
    [[side_grant], [main_grant]] = allocated
    assert (side_grant.usedmem, main_grant.usedmem) == (6000, 6000)
    # 12000 MiB running at once: no 8192 MiB card can hold both, so each has a card of its own.
    assert side_grant.uuid != main_grant.uuid, (allocated, slots)
    kubelet_gave = checkpoint_devices(real, uid)
    assert kubelet_gave["main"] != kubelet_gave["side"], (kubelet_gave, slots)
    for name, grant in (("side", side_grant), ("main", main_grant)):
        saw, expected = sees_its_grant(logs[name], grant.uuid, grant.usedmem)
        assert saw == expected, (name, kubelet_gave, slots, logs[name])


async def scheduling_failures(core: k8s.CoreV1Api, namespace: str, pod: str) -> list[str]:
    events = await core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}")
    return [e.message or "" for e in events.items if e.reason == "FailedScheduling"]


async def test_a_sidecar_and_an_app_container_that_overflow_the_one_card_allowed_are_refused(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    only = NODE.gpus[0].uuid
    side = gpu_container("side", 6000, keep_running=True, sidecar=True)
    main = gpu_container("main", 6000, keep_running=True)
    pod = gpu_pod("one-card-sidecar", [side], [main], annotations={names.USE_GPUUUID: only})
    await core.create_namespaced_pod(ns, pod)

    async def refused() -> list[str] | None:
        messages = await scheduling_failures(core, ns, "one-card-sidecar")
        return messages if any("CardInsufficientMemory" in m for m in messages) else None

    messages = await wait_for(refused, what="FailedScheduling with CardInsufficientMemory", within=WAIT_S, interval=0.5)
    obj = api.sanitize_for_serialization(await core.read_namespaced_pod("one-card-sidecar", ns))
    assert not obj["spec"].get("nodeName"), (obj["spec"], messages)
    assert names.DEVICES_ALLOCATED not in (obj["metadata"].get("annotations") or {}), messages
