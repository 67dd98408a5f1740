"""Dynamic MIG through the whole stack (tests/e2e/hami_stack.py: webhook, kube-scheduler + extender, lib-installer
and device plugin as deployed, real nodes with kubelet + containerd + runc and the NVIDIA toolkit's test double):
node ``mig-node`` runs the device plugin in ``operatingmode: mig`` (its entry in the per-node ConfigMap, as an
operator writes it) over two fake A100-SXM4-40GB cards, node ``core-node`` shares one fake L40S through hamicore,
node ``static-node`` (``migstrategy: mixed``) has one A100 that an operator partitions by hand in the last test.

The issue's acceptance (docs/mig.md): the seed's pod (``nvidia.com/gpu: 2``, 8000 MiB each) gets one ``2g.10gb``
per card, created by the device plugin (seen through NVML, as another client on the node sees it) and recorded with
its runtime identity in the pod's ``hami.io/vgpu-mig-allocations``; its container sees only the MIG UUIDs and no
hamicore; a 20 GB request then fits neither card (``CardMigTopologyInfeasible``); ``nvidia.com/vgpu-mode`` keeps
MIG pods off the sharing node and hami-core pods off the MIG node; a device-plugin restart while a MIG pod runs and
another is admitted loses and leaks no instance; deleting the pods destroys their instances and a later 20 GB
request switches the idle cards' geometry (a ``3g.20gb``); on the static node the instances made by hand become
``nvidia.com/mig-<profile>`` resources that a pod gets as they are. The fake NVML (a test double of the driver)
keeps its MIG state in a file every process on the node shares. Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.waiting import node_allocatable, read_pod, wait_for, wait_for_pod
from hami_shared import names
from hami_shared.mig import MigAllocation, decode_mig_allocations
from hami_shared.node_register import decode_node_devices
from hami_shared.pod_devices import decode_pod_devices
from hami_stack import GpuNode, GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import container_env, own_control_plane, pod_namespace, real_node_stack
from test_device_plugin_allocate import REPORT, mounts
from test_device_plugin_mig import operator
from test_vertical_slice import delete_and_wait, gpu_pod, scheduling_events

pytestmark = pytest.mark.asyncio(loop_scope="module")

A100 = "NVIDIA A100-SXM4-40GB"
MIG_CARDS = ("GPU-a1000000-0000-4000-8000-000000000000", "GPU-a1000000-0000-4000-8000-000000000001")
MIG_NODE = NodeSpec(
    "mig-node", tuple(GpuSpec(u, 40960, A100, 108) for u in MIG_CARDS), node_config=(("operatingmode", "mig"),)
)
CORE_NODE = NodeSpec("core-node", (GpuSpec("GPU-c0000000-0000-4000-8000-000000000000", 16384, "NVIDIA L40S", 142),))
# Static MIG (``migstrategy: mixed``): the operator partitions the card by hand; until then it is shared.
STATIC_CARD = "GPU-5a000000-0000-4000-8000-000000000000"
STATIC_NODE = NodeSpec(
    "static-node", (GpuSpec(STATIC_CARD, 40960, A100, 108),), node_config=(("migstrategy", "mixed"),)
)
WAIT_S = 90.0
RUN = f"{REPORT}; exec sleep 3600"

Instance = tuple[str, str, int, str]  # (parent card, profile, placement start, MIG UUID)


@pytest.fixture(scope="module")
def mig_stack_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Its own control plane: the stack installs webhooks and reconfigures kube-scheduler.
    with own_control_plane(tmp_path_factory, "stack-mig") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    mig_stack_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        mig_stack_cluster,
        node_images,
        real_node_indexes,
        tmp_path_factory,
        "mig-stack",
        (MIG_NODE, CORE_NODE, STATIC_NODE),
    ) as hami:
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def api(mig_stack_cluster: LocalCluster) -> AsyncIterator[k8s.ApiClient]:
    async with mig_stack_cluster.api_client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def ns(stack: HamiStack, api: k8s.ApiClient) -> AsyncIterator[str]:
    async with pod_namespace(api, f"mig-{uuid.uuid4().hex[:6]}") as name:
        yield name
    # Every test leaves the MIG cards as it found them: no instance once its pods are gone.
    await wait_for(instances_are(stack, []), what="no MIG instance left", within=WAIT_S)


def fake_driver(node: GpuNode) -> dict[str, str]:
    env = node.spec.fake_driver_env(node.root / "gpu.state")
    return {k: v for k, v in env.items() if k.startswith("FAKE_")}


def nvml_instances(stack: HamiStack) -> list[Instance]:
    """Every MIG instance on the MIG node, as another NVML client on the node lists them, sorted."""
    driver = fake_driver(stack.gpu_nodes[MIG_NODE.name])
    found = operator(driver, ["mig_instances", "gpu0"], ["mig_instances", "gpu1"])
    return sorted((i["parent_uuid"], i["profile"], i["start"], i["mig_uuid"]) for per in found for i in per)


def instances_are(stack: HamiStack, expected: list[Instance]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(nvml_instances, stack) == expected

    return check


def mig_pod(name: str, *, memory_mib: int, gpus: int = 1, mode: str | None = "mig", node: str | None = None) -> Any:
    annotations = {names.VGPU_MODE: mode} if mode else {}
    return gpu_pod(name, memory_mib=memory_mib, gpus=gpus, script=RUN, annotations=annotations, node=node)


def reservations(pod: dict[str, Any]) -> list[MigAllocation]:
    value = pod["metadata"].get("annotations", {}).get(names.MIG_ALLOCATIONS, "")
    return sorted(decode_mig_allocations(value) if value else [], key=lambda a: (a.container_index, a.device_index))


def realized(pod: dict[str, Any]) -> bool:
    """Running, Allocate's bind-phase written, and every reserved instance's runtime identity recorded."""
    mig = reservations(pod)
    return (
        pod.get("status", {}).get("phase") == "Running"
        and pod["metadata"].get("annotations", {}).get(names.BIND_PHASE) == "success"
        and bool(mig)
        and all(a.realized for a in mig)
    )


async def running_mig_pod(api: k8s.ApiClient, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The pod once its instances are recorded, and the environment its container printed."""
    pod = await wait_for_pod(api, namespace, name, realized, what="Running with its MIG instances", within=WAIT_S)
    log = await wait_for(
        lambda: _report(api, namespace, name), what=f"{namespace}/{name} reporting", within=WAIT_S, interval=0.5
    )
    return pod, {"log": log, **container_env(log)}


async def _report(api: k8s.ApiClient, namespace: str, name: str) -> str | None:
    try:
        log: str | None = await k8s.CoreV1Api(api).read_namespaced_pod_log(name, namespace, container="main")
    except k8s.ApiException:
        return None
    return log if log and "reported" in log.splitlines() else None


def as_instances(pod: dict[str, Any]) -> list[Instance]:
    return sorted((a.gpu_uuid, a.profile, a.start, a.mig_uuid or "") for a in reservations(pod))


def assert_mig_container(pod: dict[str, Any], env: dict[str, str]) -> None:
    """The container sees exactly its instances (in device order) and nothing of hamicore."""
    mig = reservations(pod)
    assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(a.mig_uuid or "" for a in mig), env["log"]
    assert all(u.startswith("MIG-") for u in env["NVIDIA_VISIBLE_DEVICES"].split(",")), env["log"]
    assert not [k for k in env if k.startswith("CUDA_DEVICE_")], env["log"]
    assert "PRELOAD" not in env, env["log"]
    seen = mounts(env["log"])
    assert "/etc/ld.so.preload" not in seen, env["log"]
    assert "/usr/local/vgpu/libvgpu.so" not in seen, env["log"]
    # The pod's device record: the parent cards, each at its instance's profile memory.
    [devices] = decode_pod_devices(pod["metadata"]["annotations"][names.DEVICES_ALLOCATED])
    assert [d.uuid for d in devices] == [a.gpu_uuid for a in mig]


async def pending_because(api: k8s.ApiClient, namespace: str, name: str, reason: str) -> str:
    """The scheduler's refusal of the pod naming ``reason``; the pod is bound nowhere."""
    core = k8s.CoreV1Api(api)

    async def refused() -> str | None:
        return next((m for m in await scheduling_events(core, namespace, name) or [] if reason in m), None)

    message: str = await wait_for(refused, what=f"{name} refused with {reason}", within=WAIT_S, interval=0.5)
    pod = await read_pod(api, namespace, name)
    assert pod is not None
    assert not pod["spec"].get("nodeName"), pod
    return message


# --- the acceptance ------------------------------------------------------------------------------------------


async def test_seed_pod_gets_one_2g10gb_per_card_and_a_20gb_request_no_longer_fits(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    assert await asyncio.to_thread(nvml_instances, stack) == []
    # No vgpu-mode: one pool; only the MIG node has two cards.
    await core.create_namespaced_pod(ns, mig_pod("seed", memory_mib=8000, gpus=2, mode=None))
    pod, env = await running_mig_pod(api, ns, "seed")
    assert pod["spec"]["nodeName"] == MIG_NODE.name
    made = await asyncio.to_thread(nvml_instances, stack)
    assert [(g, p) for g, p, _, _ in made] == [(MIG_CARDS[0], "2g.10gb"), (MIG_CARDS[1], "2g.10gb")]
    # The device plugin created exactly what the extender reserved, and recorded the instances' identity.
    assert as_instances(pod) == made
    assert [a.device_index for a in reservations(pod)] == [0, 1]
    assert_mig_container(pod, env)

    # What each card's geometry (2g.10gb x3 + 1g.5gb x1) still has free holds no 20 GB instance.
    await core.create_namespaced_pod(ns, mig_pod("big", memory_mib=20000, mode="mig"))
    message = await pending_because(api, ns, "big", "CardMigTopologyInfeasible")
    assert f"{len(MIG_CARDS)}/{len(MIG_CARDS)} CardMigTopologyInfeasible" in message, message
    assert await asyncio.to_thread(nvml_instances, stack) == made
    await delete_and_wait(core, ns, "seed", "big")
    await wait_for(instances_are(stack, []), what="the seed's instances destroyed", within=WAIT_S)


async def test_vgpu_mode_keeps_mig_and_hami_core_pods_apart(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    core = k8s.CoreV1Api(api)
    # Pinned to the other kind of node, each is refused there as a type mismatch, never placed.
    await core.create_namespaced_pod(ns, mig_pod("mig-on-core", memory_mib=3000, mode="mig", node=CORE_NODE.name))
    await core.create_namespaced_pod(ns, mig_pod("core-on-mig", memory_mib=3000, mode="hami-core", node=MIG_NODE.name))
    await pending_because(api, ns, "mig-on-core", "CardTypeMismatch")
    await pending_because(api, ns, "core-on-mig", "CardTypeMismatch")
    # Free to go anywhere, each goes to its own kind.
    await core.create_namespaced_pod(ns, mig_pod("mig-any", memory_mib=3000, mode="mig"))
    await core.create_namespaced_pod(ns, mig_pod("core-any", memory_mib=3000, mode="hami-core"))
    pod, env = await running_mig_pod(api, ns, "mig-any")
    assert pod["spec"]["nodeName"] == MIG_NODE.name
    assert as_instances(pod) == await asyncio.to_thread(nvml_instances, stack)
    assert_mig_container(pod, env)
    shared = await wait_for_pod(
        api,
        ns,
        "core-any",
        lambda p: p.get("status", {}).get("phase") == "Running",
        what="Running",
        within=WAIT_S,
    )
    assert shared["spec"]["nodeName"] in {CORE_NODE.name, STATIC_NODE.name}  # the sharing nodes
    assert names.MIG_ALLOCATIONS not in shared["metadata"]["annotations"]
    log = await wait_for(lambda: _report(api, ns, "core-any"), what="core-any reporting", within=WAIT_S)
    assert container_env(log)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m", log  # shared through hamicore
    await delete_and_wait(core, ns, "mig-on-core", "core-on-mig", "mig-any", "core-any")


async def test_plugin_restart_mid_admission_loses_and_leaks_nothing_then_geometry_switches(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    await core.create_namespaced_pod(ns, mig_pod("seed", memory_mib=8000, gpus=2))
    seed, _ = await running_mig_pod(api, ns, "seed")
    before = await asyncio.to_thread(nvml_instances, stack)
    assert before == as_instances(seed)

    # Another MIG pod is being scheduled and admitted while every device plugin restarts.
    await core.create_namespaced_pod(ns, mig_pod("late", memory_mib=4000))
    await stack.restart_service("device-plugin")

    async def settled() -> dict[str, Any] | None:
        pod = await read_pod(api, ns, "late")
        assert pod is not None
        phase = pod.get("status", {}).get("phase")
        # A kubelet that admits the pod while the plugin is away fails its admission ("no healthy devices
        # present", UnexpectedAdmissionError: kubelet's own rule, as for shared GPUs; a controller makes a new
        # pod): the pod is Failed and must hold nothing. Otherwise it runs with its instance.
        return pod if realized(pod) or phase == "Failed" else None

    late = await wait_for(settled, what="late Running with its instance, or Failed", within=WAIT_S)
    seed_after = await read_pod(api, ns, "seed")
    assert seed_after is not None
    assert seed_after["status"]["phase"] == "Running"
    assert as_instances(seed_after) == as_instances(seed)  # the running pod's instances are its own still
    # The restarted plugin serves the next MIG pod.
    await core.create_namespaced_pod(ns, mig_pod("again", memory_mib=4000))
    again, env = await running_mig_pod(api, ns, "again")
    assert_mig_container(again, env)
    expected = sorted(
        as_instances(seed_after)
        + as_instances(again)
        + (as_instances(late) if late["status"]["phase"] == "Running" else [])
    )
    # Nothing leaked (an instance made for a failed admission is reclaimed), nothing lost.
    await wait_for(instances_are(stack, expected), what=f"instances {expected}", within=WAIT_S)
    assert set(before) <= set(await asyncio.to_thread(nvml_instances, stack))

    await delete_and_wait(core, ns, "seed", "late", "again")
    await wait_for(instances_are(stack, []), what="instances of deleted pods destroyed", within=WAIT_S)

    # Idle cards switch geometry: 20 GB now gets a 3g.20gb.
    await core.create_namespaced_pod(ns, mig_pod("switch", memory_mib=20000))
    pod, env = await running_mig_pod(api, ns, "switch")
    assert pod["spec"]["nodeName"] == MIG_NODE.name
    made = await asyncio.to_thread(nvml_instances, stack)
    assert [p for _, p, _, _ in made] == ["3g.20gb"]
    assert as_instances(pod) == made
    assert_mig_container(pod, env)
    await delete_and_wait(core, ns, "switch")


async def test_static_mixed_node_advertises_the_instances_an_operator_made(
    stack: HamiStack, api: k8s.ApiClient, ns: str
) -> None:
    core = k8s.CoreV1Api(api)
    driver = fake_driver(stack.gpu_nodes[STATIC_NODE.name])
    # The operator partitions the idle card by hand (nvidia-smi mig -cgi 2g.10gb,1g.5gb -C).
    big, small = operator(
        driver,
        ["set_mig_mode", "gpu0", True],
        ["create_mig_instance", "gpu0", 14, 0],
        ["create_mig_instance", "gpu0", 19, 4],
    )[1:3]
    try:
        wanted = {"nvidia.com/mig-2g.10gb": "1", "nvidia.com/mig-1g.5gb": "1"}

        async def advertised() -> bool:
            return all([await node_allocatable(api, STATIC_NODE.name, r) == v for r, v in wanted.items()])

        await wait_for(advertised, what=f"{STATIC_NODE.name} allocatable {wanted}", within=WAIT_S)
        # The partitioned card is no longer offered for sharing: the extender never places a share on it.
        node = await core.read_node(STATIC_NODE.name)
        registered = decode_node_devices((node.metadata.annotations or {}).get(names.NODE_REGISTER, "[]"))
        assert STATIC_CARD not in {d.id for d in registered}
        # A workload asks for the instance as for any extended resource: the cluster's default scheduler counts it
        # (this control plane's only kube-scheduler runs the hami-scheduler profile, so the pod is bound as the
        # default scheduler would bind it); kubelet admits it against the plugin's mig-1g.5gb endpoint.
        pod: Any = gpu_pod("static", memory_mib=1, script=RUN, node=STATIC_NODE.name)
        pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/mig-1g.5gb": "1"}}
        pod["spec"].pop("nodeSelector")
        pod["spec"]["nodeName"] = STATIC_NODE.name
        await core.create_namespaced_pod(ns, pod)
        log = await wait_for(lambda: _report(api, ns, "static"), what="static reporting", within=WAIT_S)
        placed = await read_pod(api, ns, "static")
        assert placed is not None
        assert placed["spec"]["nodeName"] == STATIC_NODE.name
        env = container_env(log)
        assert env["NVIDIA_VISIBLE_DEVICES"] == small["mig_uuid"], log
        assert not [k for k in env if k.startswith("CUDA_DEVICE_")], log
        assert "/etc/ld.so.preload" not in mounts(log), log
        await delete_and_wait(core, ns, "static")
    finally:
        operator(
            driver,
            ["destroy_mig_instance", "gpu0", small["gpu_instance_id"]],
            ["destroy_mig_instance", "gpu0", big["gpu_instance_id"]],
        )
