"""The attacker suite, container part (issue 16): a tenant's attacks from inside real containers on a real node.

The tenant is the one of test_security_admission.py: its own namespace and a ServiceAccount with ``edit`` there,
speaking to the apiserver with that ServiceAccount's token. Its pods go through the whole stack of
test_real_node_vertical_slice.py (the webhook and the placement policy as shipped, kube-scheduler + our extender,
the real kubelet + containerd + runc calling our device plugin, the NVIDIA toolkit's test double mounting the fake
driver) on one real node with two simulated GPUs, set up as docs/security.md asks of operators, item 3 included:
the device plugin passes device lists as volume mounts (``--device-list-strategy=volume-mounts``) and the toolkit
takes an unprivileged container's devices only from them.

Each test's docstring names the attack (the rows of docs/security.md); each asserts from what the container
printed, and from the node's services, that the attack had no effect. Run inside tests/e2e/isolated.sh.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for, wait_for_pod
from hami_shared import names
from hami_shared.pod_devices import decode_pod_devices
from hami_stack import GpuNode, GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from real_node_support import finished, gpu_client_pod, own_control_plane, probe_results, real_node_stack
from test_security_admission import Tenant, aggregate_edit_role, tenant_namespace

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE = NodeSpec(
    "sec-gpu",
    (
        GpuSpec("GPU-eeeeeeee-0000-4000-8000-000000000000", 8192),
        GpuSpec("GPU-eeeeeeee-0000-4000-8000-000000000001", 8192),
    ),
)
CUDA_OUT_OF_MEMORY = 2
CUDA_INVALID_DEVICE = 101
WAIT_S = 120.0
MIB = 1 << 20
# hamicore's region layout (hamicore/src/accounting/region_layout.h; `hami-region-inspect --layout`): device 0's
# record starts at devices_offset 4096, its limit_bytes 8 bytes into it.
DEVICE0_LIMIT_BYTES_OFFSET = 4096 + 8
REGION_SIZE = 204800
INT64_MAX = (1 << 63) - 1
# The interposer's variables a tenant sets where admission cannot see them (issue 16, "Why" 1).
ESCAPE_ENV = {
    "CUDA_DEVICE_MEMORY_LIMIT": "80g",
    "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/tmp/x",
    "GPU_CORE_UTILIZATION_POLICY": "disable",
    "CUDA_DISABLE_CONTROL": "true",
}


@pytest.fixture(scope="module")
def sec_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "sec-containers") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    sec_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        sec_cluster, node_images, real_node_indexes, tmp_path_factory, "sec-stack", (NODE,), hardened_device_lists=True
    ) as hami:
        async with sec_cluster.api_client() as admin:
            await aggregate_edit_role(admin)
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def tenant(stack: HamiStack, sec_cluster: LocalCluster) -> AsyncIterator[Tenant]:
    async with sec_cluster.api_client() as admin, tenant_namespace(sec_cluster, admin) as made:
        yield made


# --- helpers -----------------------------------------------------------------------------------------------------


def gpu_node(stack: HamiStack) -> tuple[GpuNode, RealNode]:
    node = stack.gpu_nodes[NODE.name]
    assert isinstance(node.kubelet, RealNode)
    return node, node.kubelet


def with_env_from(pod: dict[str, Any], config_map: str) -> dict[str, Any]:
    pod["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": config_map}}]
    return pod


def plain_pod(name: str, script: str) -> dict[str, Any]:
    """A pod that asks for no GPU, running the GPU client image, placed on the GPU node by ``nodeName`` (any tenant
    may set it; and the stack's kube-scheduler serves only the hami-scheduler profile)."""
    pod = gpu_client_pod(name, NODE.name, 1, script)
    del pod["spec"]["containers"][0]["resources"]
    del pod["spec"]["nodeSelector"]
    pod["spec"]["nodeName"] = NODE.name
    return pod


async def config_map(tenant: Tenant, name: str, data: dict[str, str]) -> None:
    await tenant.core.create_namespaced_config_map(tenant.namespace, {"metadata": {"name": name}, "data": data})


async def log_of(tenant: Tenant, name: str) -> str:
    try:
        log: str | None = await tenant.core.read_namespaced_pod_log(name, tenant.namespace, container="main")
    except k8s.ApiException:
        return ""  # not started yet
    return log or ""


async def run_pod(tenant: Tenant, pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create the pod as the tenant, wait until it finished; its object and log."""
    name = pod["metadata"]["name"]
    await tenant.core.create_namespaced_pod(tenant.namespace, pod)
    done = await wait_for_pod(tenant.api, tenant.namespace, name, finished, what=f"{name} finished", within=WAIT_S)
    return done, await log_of(tenant, name)


def toolkit_decision(real: RealNode, pod: dict[str, Any]) -> dict[str, Any]:
    """What the toolkit double decided when runc created the pod's container (its bundle ends in the id)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].rpartition("//")[2]
    creates: list[dict[str, Any]] = [json.loads(line) for line in real.toolkit_log.read_text().splitlines()]
    [decision] = [c for c in creates if c["event"] == "create" and c["bundle"].rstrip("/").endswith(container_id)]
    return decision


def allocated_uuids(pod: dict[str, Any]) -> list[str]:
    value = pod["metadata"]["annotations"][names.DEVICES_ALLOCATED]
    return [d.uuid for container in decode_pod_devices(value) for d in container]


def assert_capped(probe: list[dict[str, Any]], cap: int, log: str) -> None:
    """init, ctx, total, alloc cap, alloc 1: the device is the cap, the cap is granted, one byte more is not."""
    assert [r["cmd"] for r in probe] == ["init", "ctx", "total", "alloc", "alloc"], log
    init, ctx, total, alloc_cap, alloc_byte = probe
    assert (init["rc"], ctx["rc"], total["rc"]) == (0, 0, 0), log
    assert total["total"] == cap, log
    assert alloc_cap["rc"] == 0, log
    assert alloc_byte["rc"] == CUDA_OUT_OF_MEMORY, log


def metrics_text(node: GpuNode) -> str:
    assert node.device_plugin.ready_url is not None
    url = node.device_plugin.ready_url.replace("/readyz", "/metrics")
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


_REFUSED = re.compile(r'^hami_device_plugin_regions_refused_total\{reason="([^"]+)"\} (\S+)$', re.M)


async def regions_refused(node: GpuNode) -> dict[str, float]:
    text = await asyncio.to_thread(metrics_text, node)
    return {reason: float(value) for reason, value in _REFUSED.findall(text)}


# --- the attacks ---------------------------------------------------------------------------------------------------


async def test_interposer_env_through_env_from_does_not_raise_the_cap(stack: HamiStack, tenant: Tenant) -> None:
    """Attack (docs/security.md row 7b): the interposer's variables through ``envFrom`` of a ConfigMap, which the
    webhook's guard cannot see: ``CUDA_DEVICE_MEMORY_LIMIT=80g``, ``CUDA_DEVICE_MEMORY_SHARED_CACHE=/tmp/x``,
    ``GPU_CORE_UTILIZATION_POLICY=disable``, ``CUDA_DISABLE_CONTROL=true`` in a GPU pod of 1000 MiB. They reach
    the process (kubelet lets pod env win over the device plugin's), and change nothing: the device is 1000 MiB
    and the process is refused at exactly 1000 MiB, as the read-only spec says."""
    await config_map(tenant, "escape", ESCAPE_ENV)
    script = "exec 2>&1; env; exec cuda_probe init ctx 0 total 0 alloc 1000m alloc 1"
    pod, log = await run_pod(tenant, with_env_from(gpu_client_pod("env-from", NODE.name, 1000, script), "escape"))
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    assert pod["metadata"]["annotations"][names.BIND_PHASE] == "success"
    # The attack reached the process: the ConfigMap's values, not the device plugin's.
    env = set(log.splitlines())
    assert {f"{key}={value}" for key, value in ESCAPE_ENV.items()} <= env, log
    assert_capped(probe_results(log), 1000 * MIB, log)


async def test_writes_to_the_spec_and_preload_fail_and_a_rewritten_region_limit_has_no_effect(
    stack: HamiStack, tenant: Tenant
) -> None:
    """Attack (rows 9 and 7b): the container rewrites ``limit_bytes`` of its GPU in its own writable region (the
    ``.cache`` file in its hook directory) to 2^63-1, and tries to overwrite ``/etc/hami/vgpu.spec`` and
    ``/etc/ld.so.preload`` and to remount the spec read-write. The writes to the spec and the preload file fail
    (read-only mounts), the remount is refused, and a new process after the rewrite is still refused at exactly
    the pod's 1000 MiB."""
    off = DEVICE0_LIMIT_BYTES_OFFSET
    script = (
        'exec 2>&1; R="$CUDA_DEVICE_MEMORY_SHARED_CACHE"; cuda_probe init ctx 0; '
        f'echo "region-size $(busybox stat -c %s "$R")"; '
        f'echo "limit-before $(busybox od -An -tu8 -j {off} -N 8 "$R")"; '
        "busybox printf '\\377\\377\\377\\377\\377\\377\\377\\177' "
        f'| busybox dd of="$R" bs=1 seek={off} conv=notrunc 2>/dev/null; '
        f'echo "limit-after $(busybox od -An -tu8 -j {off} -N 8 "$R")"; '
        "if echo x >/etc/hami/vgpu.spec; then echo spec-writable; else echo spec-read-only; fi; "
        "if echo >/etc/ld.so.preload; then echo preload-writable; else echo preload-read-only; fi; "
        "if busybox mount -o remount,rw,bind /etc/hami/vgpu.spec; then echo spec-remounted; "
        "else echo spec-remount-refused; fi; "
        "exec cuda_probe init ctx 0 total 0 alloc 1000m alloc 1"
    )
    pod, log = await run_pod(tenant, gpu_client_pod("rewrite", NODE.name, 1000, script))
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    lines = log.splitlines()
    values = {
        key: int(rest.split()[0])
        for key, _, rest in (line.partition(" ") for line in lines)
        if key.startswith("limit-")
    }
    assert f"region-size {REGION_SIZE}" in lines, log
    # The region said 1000 MiB (written at creation, for older libraries and inspection), and the rewrite held.
    assert values == {"limit-before": 1000 * MIB, "limit-after": INT64_MAX}, log
    assert {"spec-read-only", "preload-read-only", "spec-remount-refused"} <= set(lines), log
    probe = probe_results(log)
    assert [r["rc"] for r in probe[:2]] == [0, 0], log
    assert_capped(probe[2:], 1000 * MIB, log)


async def test_nvidia_visible_devices_all_through_env_from_gives_no_gpu(stack: HamiStack, tenant: Tenant) -> None:
    """Attack (row 8): ``NVIDIA_VISIBLE_DEVICES=all`` through ``envFrom`` (where the webhook cannot see it), on a
    node whose toolkit takes unprivileged containers' devices only from volume mounts and whose device plugin
    passes them so. A pod without a GPU request gets no driver and no GPU; a GPU pod of 1000 MiB that sets it too
    still gets exactly its one GPU of the node's two (through the device plugin's mounts), capped."""
    _node, real = gpu_node(stack)
    await config_map(tenant, "all-gpus", {"NVIDIA_VISIBLE_DEVICES": "all"})
    script = (
        "exec 2>&1; env | grep NVIDIA_VISIBLE_DEVICES; "
        "ls /usr/lib/x86_64-linux-gnu | grep -E 'libcuda|libnvidia' || echo no-driver-libraries; "
        "ls /run/hami-fake-driver || echo no-fake-driver; cuda_probe init; echo probe-exit $?"
    )
    plain, log = await run_pod(tenant, with_env_from(plain_pod("no-gpu", script), "all-gpus"))
    assert plain["status"]["phase"] == "Succeeded", (plain["status"], log)
    lines = log.splitlines()
    assert "NVIDIA_VISIBLE_DEVICES=all" in lines, log
    assert {"no-driver-libraries", "no-fake-driver"} <= set(lines), log
    assert not probe_results(log), log  # cuda_probe cannot even load: there is no libcuda.so.1
    assert "probe-exit 127" in lines, log
    decision = toolkit_decision(real, plain)
    assert (decision["devices"], decision["source"]) == (None, "envvar-ignored"), decision

    script = (
        "exec 2>&1; env | grep NVIDIA_VISIBLE_DEVICES; exec cuda_probe init ctx 0 total 0 total 1 alloc 1000m alloc 1"
    )
    gpu, log = await run_pod(tenant, with_env_from(gpu_client_pod("gpu-all", NODE.name, 1000, script), "all-gpus"))
    assert gpu["status"]["phase"] == "Succeeded", (gpu["status"], log)
    assert "NVIDIA_VISIBLE_DEVICES=all" in log.splitlines(), log
    [uuid] = allocated_uuids(gpu)
    decision = toolkit_decision(real, gpu)
    assert (decision["devices"], decision["source"]) == ([uuid], "volume-mounts"), decision
    probe = probe_results(log)
    assert [r["cmd"] for r in probe] == ["init", "ctx", "total", "total", "alloc", "alloc"], log
    assert probe[3]["rc"] == CUDA_INVALID_DEVICE, log  # the node's other GPU is not there
    assert_capped(probe[:3] + probe[4:], 1000 * MIB, log)


async def test_a_region_truncated_to_600m_is_refused_and_the_device_plugin_stays_up(
    stack: HamiStack, tenant: Tenant
) -> None:
    """Attack (row 11): ``truncate -s 600M`` on the container's own region, so that a monitor that maps or reads
    whole files is OOM-killed in a loop. The device plugin stays up (its process runs, /metrics answers, its
    monitor counts the region refused in ``hami_device_plugin_regions_refused_total``), a GPU pod that was running
    on the node keeps its memory, and a new GPU pod there is still capped exactly."""
    node, _real = gpu_node(stack)
    before = sum((await regions_refused(node)).values())
    await tenant.core.create_namespaced_pod(
        tenant.namespace, gpu_client_pod("holder", NODE.name, 700, "exec cuda_probe init ctx 0 alloc 600m hold")
    )
    script = (
        'exec 2>&1; R="$CUDA_DEVICE_MEMORY_SHARED_CACHE"; cuda_probe init ctx 0; '
        'busybox truncate -s 600M "$R"; echo "truncated $(busybox stat -c %s "$R")"; exec sleep 3600'
    )
    await tenant.core.create_namespaced_pod(tenant.namespace, gpu_client_pod("truncator", NODE.name, 500, script))

    async def logged(name: str, text: str) -> bool:
        return text in await log_of(tenant, name)

    await wait_for(lambda: logged("holder", '"cmd":"hold"'), what="the holder holding its memory", within=WAIT_S)
    await wait_for(lambda: logged("truncator", f"truncated {600 * MIB}"), what="the region truncated", within=WAIT_S)
    holder_before = (await tenant.core.read_namespaced_pod("holder", tenant.namespace)).status.container_statuses[0]

    async def refused_more() -> dict[str, float] | None:
        refused = await regions_refused(node)
        return refused if sum(refused.values()) > before else None

    refused = await wait_for(refused_more, what="the monitor refusing the region", within=30)
    assert refused.get("size", 0) >= 1, refused
    # Several scans later (every 250 ms) the plugin is still the same process, serving.
    await asyncio.sleep(2)
    assert node.device_plugin.running
    assert node.device_plugin.starts == 1
    assert "hami_device_plugin_regions_refused_total" in await asyncio.to_thread(metrics_text, node)

    pod, log = await run_pod(
        tenant, gpu_client_pod("after", NODE.name, 700, "exec cuda_probe init ctx 0 total 0 alloc 700m alloc 1")
    )
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    assert_capped(probe_results(log), 700 * MIB, log)
    holder = (await tenant.core.read_namespaced_pod("holder", tenant.namespace)).status.container_statuses[0]
    assert (holder.container_id, holder.restart_count) == (holder_before.container_id, 0)
    assert holder.state.running is not None
    assert [r["cmd"] for r in probe_results(await log_of(tenant, "holder"))] == ["init", "ctx", "alloc", "hold"]
    assert node.device_plugin.running
    assert node.device_plugin.starts == 1
