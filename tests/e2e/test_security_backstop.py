"""The node backstop (issue 18, item 2) against a tenant's container on a real node: the container bypasses its
counters (it zeroes ``used_bytes`` of its GPU in its own writable region, the counter hamicore checks its budget
against) and allocates past its 1000 MiB limit. The device plugin's monitor, reconciling NVML's per-process used
memory with the container's accounting and the limit it recorded at Allocate, puts a Warning Event
``GPUMemoryOverLimit`` on the pod within two monitor scans, whose text says what happened and the limit; under
the node's ``enforce`` policy (per-node config key ``gpumemorypolicy``) it also kills the container's process.

The stack is test_security_containers.py's (one real node, two simulated GPUs, docs/security.md's operator items);
its driver double runs with free contexts, so NVML's per-process use equals the allocations. Run inside
tests/e2e/isolated.sh.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from e2e_harness.cluster import LocalCluster
from e2e_harness.node_images import NodeImages
from e2e_harness.waiting import wait_for
from hami_stack import GpuSpec, HamiStack, NodeSpec
from kubernetes_asyncio import client as k8s
from prometheus_client.parser import text_string_to_metric_families
from real_node_support import gpu_client_pod, own_control_plane, real_node_stack
from test_security_admission import Tenant, aggregate_edit_role, tenant_namespace

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE = NodeSpec(
    "bk-gpu",
    (
        GpuSpec("GPU-bbbbbbbb-0000-4000-8000-000000000000", 8192),
        GpuSpec("GPU-bbbbbbbb-0000-4000-8000-000000000001", 8192),
    ),
)
MIB = 1 << 20
SCAN_S = 0.25  # the DaemonSet's --monitor-interval (the default)
WAIT_S = 60.0
REASON = "GPUMemoryOverLimit"
# hamicore's region layout (hamicore/src/accounting/region_layout.h): device 0's record at 4096, used_bytes first.
DEVICE0_USED_BYTES_OFFSET = 4096
# The attack: one process allocates 900 MiB, the shell zeroes the counter and lets the process allocate 900 MiB more
# (hamicore now sees 900 used: it grants them), then waits for it. The process's lines come through a FIFO, each
# prefixed with the boot clock (/proc/uptime) when it came: the second allocation's line dates the over-allocation.
ATTACK = (
    'exec 2>&1; R="$CUDA_DEVICE_MEMORY_SHARED_CACHE"; busybox mkfifo /tmp/out; '
    "(while read -r line; do echo \"$(busybox cut -d' ' -f1 /proc/uptime) $line\"; done </tmp/out) & "
    "cuda_probe init ctx 0 alloc 900m wait-file /tmp/go alloc 900m hold >/tmp/out & P=$!; "
    f'until [ "$(busybox od -An -tu8 -j {DEVICE0_USED_BYTES_OFFSET} -N 8 "$R" | busybox tr -d " ")" = '
    f'"{900 * MIB}" ]; do busybox usleep 10000; done; '
    "busybox printf '\\0\\0\\0\\0\\0\\0\\0\\0' "
    f'| busybox dd of="$R" bs=1 seek={DEVICE0_USED_BYTES_OFFSET} conv=notrunc 2>/dev/null; '
    f'echo "counter-after $(busybox od -An -tu8 -j {DEVICE0_USED_BYTES_OFFSET} -N 8 "$R")"; busybox touch /tmp/go; '
    'wait $P; echo "probe-exit $?"'
)
SECOND_ALLOC = '{"cmd":"alloc","rc":0,"id":1}'


def probe_lines(log: str) -> list[tuple[float, dict[str, Any]]]:
    """The probe's JSON lines with the boot-clock time each came."""
    out = []
    for line in log.splitlines():
        when, _, rest = line.partition(" ")
        if rest.startswith('{"cmd"'):
            out.append((float(when), json.loads(rest)))
    return out


@pytest.fixture(scope="module")
def bk_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with own_control_plane(tmp_path_factory, "backstop") as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    bk_cluster: LocalCluster,
    node_images: NodeImages,
    real_node_indexes: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HamiStack]:
    async with real_node_stack(
        bk_cluster, node_images, real_node_indexes, tmp_path_factory, "bk-stack", (NODE,), hardened_device_lists=True
    ) as hami:
        async with bk_cluster.api_client() as admin:
            await aggregate_edit_role(admin)
        yield hami


@pytest_asyncio.fixture(loop_scope="module")
async def tenant(stack: HamiStack, bk_cluster: LocalCluster) -> AsyncIterator[Tenant]:
    async with bk_cluster.api_client() as admin, tenant_namespace(bk_cluster, admin) as made:
        yield made


def plugin_log(stack: HamiStack) -> list[dict[str, Any]]:
    out = []
    for line in stack.gpu_nodes[NODE.name].device_plugin.log_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def set_policy(stack: HamiStack, policy: str) -> None:
    """This node's entry in the per-node config file the plugin watches; until the plugin has applied it."""
    node = stack.gpu_nodes[NODE.name]
    [path] = (node.root / "device-plugin-config").glob("*device-plugin-node*")
    path.write_text(json.dumps({"nodeconfig": [{"name": NODE.name, "gpumemorypolicy": policy}]}))

    async def applied() -> bool:
        changes = [e for e in plugin_log(stack) if e.get("event") == "device_config_changed"]
        return (changes[-1].get("gpu_memory_policy") if changes else "observe") == policy  # observe: the default

    await wait_for(applied, what=f"policy {policy} applied", within=WAIT_S)


def scan_seconds(stack: HamiStack) -> str:
    """The plugin's monitor scans so far: count and mean duration (its metrics), for the failure messages."""
    url = str(stack.gpu_nodes[NODE.name].device_plugin.ready_url).replace("/readyz", "/metrics")
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    values = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels
    }
    count = values.get("hami_device_plugin_monitor_scan_seconds_count", 0.0)
    mean = values.get("hami_device_plugin_monitor_scan_seconds_sum", 0.0) / max(count, 1.0)
    return f"{count:.0f} scans so far, {mean * 1000:.1f} ms each on average"


def boot_wall_clock() -> float:
    """The wall-clock time of boot: /proc/uptime (what the container printed as t0) is seconds after it."""
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


async def log_of(tenant: Tenant, name: str) -> str:
    try:
        log: str | None = await tenant.core.read_namespaced_pod_log(name, tenant.namespace, container="main")
    except k8s.ApiException:
        return ""
    return log or ""


async def attack(stack: HamiStack, tenant: Tenant, name: str) -> tuple[Any, float, str]:
    """Runs the attack in pod ``name`` (1000 MiB); its Event, the detection latency (s) and the pod's log so far."""
    pod: Any = gpu_client_pod(name, NODE.name, 1000, ATTACK)  # a plain dict body: the client sends it as is
    await tenant.core.create_namespaced_pod(tenant.namespace, pod)

    async def event() -> Any:
        events = await tenant.core.list_namespaced_event(
            tenant.namespace, field_selector=f"involvedObject.name={name},reason={REASON}"
        )
        return events.items[0] if events.items else None

    found = await wait_for(event, what=f"{REASON} Event on {name}", within=WAIT_S)

    async def allocated_twice() -> str | None:
        log = await log_of(tenant, name)
        return log if SECOND_ALLOC in log else None

    log = await wait_for(allocated_twice, what=f"{name}'s second allocation", within=WAIT_S)
    t1_uptime = next(when for when, line in probe_lines(log) if line == json.loads(SECOND_ALLOC))
    boot = boot_wall_clock()
    uid = found.involved_object.uid
    episodes = [
        e
        for e in plugin_log(stack)
        if e.get("event") == "gpu_memory_over_limit" and str(e.get("container")).startswith(f"{uid}_")
    ]
    assert len(episodes) == 1, episodes  # one episode, logged once
    detected = episodes[0]
    at = dt.datetime.fromisoformat(str(detected["timestamp"]).replace("Z", "+00:00")).timestamp()
    return found, at - (boot + t1_uptime), log


def assert_says_what_happened(event: Any, name: str) -> None:
    assert event.type == "Warning"
    assert event.involved_object.kind == "Pod"
    assert event.involved_object.name == name
    text = event.message
    assert "GPU memory over limit" in text, text
    assert "measured 1800 MiB" in text, text  # the real use
    assert "accounting shows 900 MiB" in text, text  # the zeroed counter, plus the second allocation
    assert "limit is 1000 MiB" in text, text


async def test_observe_a_container_that_zeroes_its_counter_gets_an_event_within_two_scans(
    stack: HamiStack, tenant: Tenant
) -> None:
    await set_policy(stack, "observe")
    event, latency, log = await attack(stack, tenant, "zeroes-observe")
    print(f"observe: detected {latency:.3f} s ({latency / SCAN_S:.1f} scans of {SCAN_S} s) after the allocation;")
    print(scan_seconds(stack))
    assert latency <= 2 * SCAN_S, f"detected {latency:.3f} s after the allocation; {scan_seconds(stack)}"
    assert_says_what_happened(event, "zeroes-observe")
    assert "policy observe: nothing killed" in event.message
    assert "counter-after 0" in " ".join(log.split()), log
    # init, ctx, alloc 900m, and the second 900 MiB that hamicore granted against the zeroed counter
    assert [(r["cmd"], r.get("rc")) for _, r in probe_lines(log)][2:] == [
        ("alloc", 0),
        ("wait-file", None),
        ("alloc", 0),
        ("hold", None),
    ], log
    assert "probe-exit" not in log  # observe: the process lives on
    await tenant.core.delete_namespaced_pod("zeroes-observe", tenant.namespace, grace_period_seconds=0)


async def test_enforce_kills_the_process_of_a_container_that_zeroes_its_counter(
    stack: HamiStack, tenant: Tenant
) -> None:
    await set_policy(stack, "enforce")
    event, latency, _ = await attack(stack, tenant, "zeroes-enforce")
    print(f"enforce: detected {latency:.3f} s ({latency / SCAN_S:.1f} scans of {SCAN_S} s) after the allocation;")
    print(scan_seconds(stack))
    assert latency <= 2 * SCAN_S, f"detected {latency:.3f} s after the allocation; {scan_seconds(stack)}"
    assert_says_what_happened(event, "zeroes-enforce")
    assert "policy enforce: killed process(es)" in event.message, event.message

    async def killed() -> str | None:
        log = await log_of(tenant, "zeroes-enforce")
        return log if "probe-exit" in log else None

    log = await wait_for(killed, what="the probe killed", within=WAIT_S)
    assert "probe-exit 137" in log, log  # 128 + SIGKILL
    uid = event.involved_object.uid
    kills = [
        e
        for e in plugin_log(stack)
        if e.get("event") == "gpu_memory_kill" and str(e.get("container")).startswith(f"{uid}_")
    ]
    # One process, killed once; before it, a kill may have been refused while the pod's status did not carry the
    # container's ID yet (this harness's pods have no cgroup of their own that names them).
    results = [k["result"] for k in kills]
    assert results[-1:] == ["killed"], kills
    assert set(results[:-1]) <= {"not-in-pod"}, kills
    await set_policy(stack, "observe")
