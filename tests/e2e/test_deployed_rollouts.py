"""The design card's rollout story on the stack as deployed (issue 15, Deliver 5), with the operator's own
command, ``kubectl apply --server-side -k`` of a service's overlay with a new image tag.

* The webhook: while a loop keeps creating pods (GPU pods, which both webhook configurations see, and plain pods,
  which the tenant guard sees; both have ``failurePolicy: Fail``) for the whole rollout, the webhook's overlay
  names a new tag of its image: not one creation may fail with the shipped replicas, PodDisruptionBudget,
  readiness probe and shutdown behaviour, and the new ReplicaSet must have taken over.
* The device plugin and the lib installer: with GPU pods running on the node, both DaemonSets roll to a new tag
  (the lib installer with a new ``--lib-version`` through an overlay patch). The running containers keep the
  library they mapped (``libvgpu.so.<old version>`` in their process's /proc/<pid>/maps, read from inside the
  container) and their limit (a new process there is still refused one byte past the cap); a new pod maps the
  new version and gets its own limit.

The new "release" is the same image under another tag, imported into the node's containerd (retagged with ctr):
to Kubernetes a different image, so the pods are replaced exactly as in an upgrade.
The deployment (one control plane and one real GPU node, see test_deployed_stack.py for the install) is the one
test_deployed_stack.py read: conftest runs this module right after that one and tears the deployment down after
this module (deployed_support.rollouts_last, SharedDeployment).
Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from deployed_support import CUDA_OUT_OF_MEMORY, WAIT_S, gpu_client_pod, probe_results
from e2e_harness.deployed_stack import NAMESPACE, DeployedStack, OverlaySettings
from e2e_harness.real_node import RealNode
from e2e_harness.waiting import wait_for
from kubernetes_asyncio import client as k8s

# The deployment is shared with test_deployed_stack.py (conftest's ``deployed``): the session's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")

NEW_TAG = "e2e-2"
NEW_LIB_VERSION = "e2e.2"
# Pods of the admission loop are never meant to run: they select a node that does not exist, stay Pending and
# are deleted at once. What is tested is their admission.
NOWHERE = {"hami.io/e2e": "nowhere"}


# --- (a) the webhook ------------------------------------------------------------------------------------------


@dataclass
class AdmissionLoop:
    """Creates pods one after another, alternating GPU and plain ones, until stopped; records every refusal."""

    api: k8s.ApiClient
    namespace: str
    created: dict[str, int] = field(default_factory=lambda: {"gpu": 0, "plain": 0})
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def pod(self, kind: str, index: int) -> dict[str, Any]:
        pod = gpu_client_pod(f"loop-{kind}-{index}", "unused", 100 if kind == "gpu" else None, "true")
        pod["spec"]["nodeSelector"] = NOWHERE
        return pod

    async def run(self) -> None:
        core = k8s.CoreV1Api(self.api)
        index = 0
        while not self._stop.is_set():
            kind = ("gpu", "plain")[index % 2]
            body = self.pod(kind, index)
            started = time.monotonic()
            try:
                created = await core.create_namespaced_pod(self.namespace, body)
            except k8s.ApiException as exc:
                self.failures.append(
                    f"{kind} #{index} after {time.monotonic() - started:.2f} s: {exc.status} {exc.body}"
                )
            else:
                self.created[kind] += 1
                # The GPU pods were mutated (the mutating webhook answered, not skipped).
                if kind == "gpu" and created.spec.scheduler_name != "hami-scheduler":
                    self.failures.append(f"gpu #{index} not mutated: schedulerName {created.spec.scheduler_name}")
                await core.delete_namespaced_pod(body["metadata"]["name"], self.namespace, grace_period_seconds=0)
            index += 1

    def stop(self) -> None:
        self._stop.set()


async def webhook_pods(stack: DeployedStack) -> list[dict[str, Any]]:
    pods = await stack.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=hami-webhook")
    return list(pods["items"])


async def roll_webhook_under_load(
    stack: DeployedStack, api: k8s.ApiClient, namespace: str, settings: OverlaySettings
) -> tuple[AdmissionLoop, float]:
    """Apply the webhook's overlay with ``settings`` while an :class:`AdmissionLoop` creates pods, from before the
    apply until the old pods are gone and a few more pods were created; returns the loop and the rollout's
    seconds (apply to rolled out)."""
    before = {p["metadata"]["name"] for p in await webhook_pods(stack)}
    loop = AdmissionLoop(api, namespace)
    task = asyncio.create_task(loop.run())
    try:
        # Pods created before the rollout starts too: the loop is warm when the old pods begin to go.
        await wait_for(lambda: _true(sum(loop.created.values()) >= 6), what="the loop creating pods", within=60)
        rollout_start = time.monotonic()
        await stack.apply("webhook", settings)
        await stack.wait_available("webhook", within=180)
        rollout_s = time.monotonic() - rollout_start
        # The old pods are gone (not just replaced in the Deployment's status).
        await wait_for(lambda: _gone(stack, before), what="the old webhook pods deleted", within=60, interval=0.5)
        # And a little longer: connections the apiserver still held to the old pods are closed by now.
        count = sum(loop.created.values())
        await wait_for(lambda: _true(sum(loop.created.values()) >= count + 6), what="more pods created", within=60)
    finally:
        loop.stop()
        await task
    print(f"webhook rollout: {rollout_s:.1f} s; created during the run: {loop.created}; failures {len(loop.failures)}")
    return loop, rollout_s


async def test_webhook_rollout_admits_every_pod_created_meanwhile(
    deployed: tuple[DeployedStack, list[RealNode]], deployed_api: k8s.ApiClient, deployed_ns: str
) -> None:
    stack, nodes = deployed
    before = {p["metadata"]["name"] for p in await webhook_pods(stack)}
    old_rs = {p["metadata"]["labels"]["pod-template-hash"] for p in await webhook_pods(stack)}
    new_reference = await stack.retag(nodes, "webhook", NEW_TAG)

    loop, _seconds = await roll_webhook_under_load(
        stack, deployed_api, deployed_ns, OverlaySettings(tags={"webhook": NEW_TAG})
    )
    assert not loop.failures, "\n".join(loop.failures[:20])
    assert min(loop.created.values()) >= 5, loop.created

    # The new ReplicaSet took over: both replicas run the new image, none of the old pods is left.
    deployment = await stack.workload("webhook")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == new_reference
    pods = await webhook_pods(stack)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert not {p["metadata"]["name"] for p in pods} & before
    assert all(p["spec"]["containers"][0]["image"] == new_reference for p in pods)
    assert not {p["metadata"]["labels"]["pod-template-hash"] for p in pods} & old_rs
    replica_sets = (await stack.get_json("replicasets", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=hami-webhook"))[
        "items"
    ]
    by_hash = {rs["metadata"]["labels"]["pod-template-hash"]: rs for rs in replica_sets}
    assert all(by_hash[h]["status"]["replicas"] == 0 for h in old_rs), [rs["status"] for rs in replica_sets]


async def _true(value: bool) -> bool:
    return value


async def _gone(stack: DeployedStack, names: set[str]) -> bool:
    return not {p["metadata"]["name"] for p in await webhook_pods(stack)} & names


# --- (b) the device plugin and the lib installer --------------------------------------------------------------


async def mapped_libvgpu(stack: DeployedStack, namespace: str, pod: str) -> set[int]:
    """Inodes of the libvgpu files the container's main process (pid 1: the probe, exec'd by sh) maps, from its
    /proc/1/maps read inside the container. By inode, not path: Allocate bind-mounts the library file into the
    container at the stable name, so maps shows ``/usr/local/vgpu/libvgpu.so`` whatever version the mount pinned
    (the mount resolves the stable name's symlink once, when the container is created)."""
    maps = await stack.kubectl("exec", "-n", namespace, pod, "-c", "main", "--", "cat", "/proc/1/maps")
    return {int(line.split()[4]) for line in maps.splitlines() if "/libvgpu" in line}


async def pod_log(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    try:
        log: str | None = await core.read_namespaced_pod_log(name, namespace, container="main")
    except k8s.ApiException:
        return ""
    return log or ""


async def start_holder(core: k8s.CoreV1Api, namespace: str, name: str, node: str, memory_mib: int) -> None:
    """A GPU pod that takes all of its cap and holds it."""
    script = f"exec cuda_probe init ctx 0 alloc {memory_mib}m hold"
    await core.create_namespaced_pod(namespace, gpu_client_pod(name, node, memory_mib, script))

    async def holding() -> bool:
        return '"cmd":"hold"' in await pod_log(core, namespace, name)

    await wait_for(holding, what=f"{name} holding its memory", within=WAIT_S)

    # The container logs before the kubelet has reported it: the test compares container IDs across the rollout.
    async def reported_running() -> bool:
        statuses = (await core.read_namespaced_pod(name, namespace)).status.container_statuses or []
        return bool(statuses and statuses[0].container_id and statuses[0].state.running)

    await wait_for(reported_running, what=f"{name} reported running by the kubelet", within=WAIT_S)


async def refused_one_byte_more(stack: DeployedStack, namespace: str, pod: str) -> list[int]:
    """Return codes of a new process in the pod's container: context, then one byte (its cap is all held)."""
    out = await stack.kubectl(
        "exec", "-n", namespace, pod, "-c", "main", "--", "cuda_probe", "init", "ctx", "0", "alloc", "1"
    )
    return [r["rc"] for r in probe_results(out)]


async def test_device_plugin_and_lib_installer_rollout_keeps_running_containers_whole(
    deployed: tuple[DeployedStack, list[RealNode]], deployed_api: k8s.ApiClient, deployed_ns: str
) -> None:
    stack, nodes = deployed
    [node] = nodes
    core = k8s.CoreV1Api(deployed_api)
    vgpu = node.host_path("/usr/local/vgpu")
    old_version = (vgpu / "libvgpu.so").readlink().name
    assert old_version.startswith("libvgpu.so.")

    old_inode = (vgpu / old_version).stat().st_ino

    await start_holder(core, deployed_ns, "holder", node.name, 700)
    holder_before = (await core.read_namespaced_pod("holder", deployed_ns)).status.container_statuses[0]
    assert await mapped_libvgpu(stack, deployed_ns, "holder") == {old_inode}
    assert await refused_one_byte_more(stack, deployed_ns, "holder") == [0, 0, CUDA_OUT_OF_MEMORY]
    old_pods = {
        p["metadata"]["name"]
        for p in (await stack.get_json("pods", "-n", NAMESPACE))["items"]
        if p["metadata"]["name"].startswith(("hami-device-plugin-", "hami-lib-installer-"))
    }

    for component in ("device-plugin", "lib-installer"):
        await stack.retag(nodes, component, NEW_TAG)
    start = time.monotonic()
    await stack.apply(
        "lib-installer",
        OverlaySettings(tags={"lib-installer": NEW_TAG}, extra_args=(f"--lib-version={NEW_LIB_VERSION}",)),
    )
    await stack.apply("device-plugin", OverlaySettings(tags={"device-plugin": NEW_TAG}))
    await asyncio.gather(stack.wait_available("lib-installer"), stack.wait_available("device-plugin"))
    print(f"device-plugin + lib-installer rollout: {time.monotonic() - start:.1f} s")
    new_pods = {
        p["metadata"]["name"]: p
        for p in (await stack.get_json("pods", "-n", NAMESPACE))["items"]
        if p["metadata"]["name"].startswith(("hami-device-plugin-", "hami-lib-installer-"))
    }
    assert not set(new_pods) & old_pods, (old_pods, list(new_pods))
    assert all(p["spec"]["containers"][0]["image"].endswith(f":{NEW_TAG}") for p in new_pods.values())

    # The new version is installed and is what the stable name points at; the old one stays while mapped.
    new_version = f"libvgpu.so.{NEW_LIB_VERSION}"
    await wait_for(
        lambda: _true((vgpu / "libvgpu.so").readlink().name == new_version),
        what=f"libvgpu.so -> {new_version}",
        within=60,
    )
    assert (vgpu / old_version).stat().st_ino == old_inode
    new_inode = (vgpu / new_version).stat().st_ino
    assert new_inode != old_inode

    # The running container: same container, never restarted, still mapping the old library, still capped.
    holder_after = (await core.read_namespaced_pod("holder", deployed_ns)).status.container_statuses[0]
    assert (holder_after.container_id, holder_after.restart_count) == (holder_before.container_id, 0)
    assert holder_after.state.running is not None
    assert await mapped_libvgpu(stack, deployed_ns, "holder") == {old_inode}
    assert await refused_one_byte_more(stack, deployed_ns, "holder") == [0, 0, CUDA_OUT_OF_MEMORY]

    # A new pod (placed and allocated by the new device plugin) maps the new version and gets its own cap.
    await start_holder(core, deployed_ns, "after", node.name, 500)
    assert await mapped_libvgpu(stack, deployed_ns, "after") == {new_inode}
    assert await refused_one_byte_more(stack, deployed_ns, "after") == [0, 0, CUDA_OUT_OF_MEMORY]
    log = await pod_log(core, deployed_ns, "after")
    # Its own process: init, context and its 500 MiB granted, then holding (the hold line carries no rc).
    assert [(r["cmd"], r.get("rc")) for r in probe_results(log)] == [
        ("init", 0),
        ("ctx", 0),
        ("alloc", 0),
        ("hold", None),
    ], log
    for name in ("holder", "after"):
        await core.delete_namespaced_pod(name, deployed_ns, grace_period_seconds=1)
