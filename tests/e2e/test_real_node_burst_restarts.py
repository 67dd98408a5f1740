"""The burst of test_real_node_burst.py with a piece of the node restarted mid-burst, as soon as 5 pods run: the real
kubelet, our device plugin (once the kubelet admitted every pod, see below), or containerd. Each must lose nothing
(every pod Running, none failing admission) and give no pod another's GPU (every container sees exactly its own
grant; the kubelet's checkpoint gives each pod exactly its extender slot, each slot once). One control plane, stack
and real node for the three; each burst in a namespace of its own, its pods deleted and their containers stopped
before the next. Run inside tests/e2e/isolated.sh (make test-e2e does).

* **kubelet restart, 80 pods.** The restarted kubelet receives every pod of its node in one batch and admits it in
  ``HandlePodAdditions`` order, ``sort.Sort(PodsByCreationTime)``: creation timestamps have one-second resolution
  and the sort is not stable, so pods created in the same second come in an order no one outside the kubelet can
  know. Before the device plugin asked the kubelet's pod-resources API which pod it is admitting, it inferred the
  pod from its own watch order, and in 3 of 5 runs pods got each other's GPU and limit, in a cycle (burst-65 saw
  burst-78's GPU and 880m, burst-67 saw burst-65's, burst-78 saw burst-67's, all matched ``by slots``).
  A container not running yet that the restarted kubelet admits before our plugin re-registered and delivered its
  devices (a window of a few hundred ms no device plugin can close: the kubelet creates the socket to register on
  and gets its pods 150 ms later) is rejected by the kubelet for good ("no healthy devices present"; upstream,
  kubernetes/kubernetes#133382). A CI run saw 13 such pods; the test replaces exactly those, as their controller
  would, after checking in the kubelet's own log that each was rejected before our devices were back
  (test_real_node_burst.kubelet_rejections_before_the_plugin_returned), and holds the replacements to the same
  checks.
* **device-plugin restart, 40 pods**, once the kubelet has admitted every pod (their devices are in its
  checkpoint) and at least 5 run: containers are still being created from the plugin's Allocate answers (their
  directories and regions), pod patches may still be queued, and the plugin's memory (claims, records) is gone;
  the new process must recover it (container directories, the pods' annotations) and remove nothing in use. Not
  earlier: while no plugin is registered the kubelet's device manager rejects every GPU pod it admits ("no
  healthy devices present", or the connection closing under an Allocate in flight; seen: burst-34 failed with
  UnexpectedAdmissionError when the restart came at 5 Running). That is the kubelet's rule for any device
  plugin (it has no wait for a re-registering plugin); what the plugin does about it is answer the calls in
  flight before it exits (app/service.py). Half the burst: the kubelet's admission order is not at stake (it
  does not restart), and each burst costs 20-40 s more on our machines.
* **containerd restart, 40 pods.** Sandboxes and containers being created fail and are retried by the kubelet;
  devices were allocated at admission and must not move. Half the burst, for the same reason.

The pods are ``restartPolicy: OnFailure``: a RunPodSandbox that a stopping kubelet (or containerd) abandons leaves a
sandbox that is not ready, and the kubelet does not make a new one for a ``Never`` pod whose sandbox attempt already
exists (kuberuntime ``computePodActions``): it fails the pod, GPUs or not (seen: 2 of 80 pods). With ``OnFailure`` it
makes a new sandbox and starts the container.
"""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from e2e_harness.cluster import LocalCluster
from e2e_harness.real_node import RealNode
from hami_stack import HamiStack
from test_real_node_burst import BURST, NODE, Disruption, burst_and_check, burst_cluster, stack

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["burst_cluster", "stack"]  # the module-scoped fixtures, one control plane and node for this module

RESTART_WHEN_RUNNING = 5
HALF_BURST = 40


def identifications(hami: HamiStack) -> dict[tuple[str, str, str], float]:
    """The device plugin's ``hami_device_plugin_pod_identifications_total`` by (rpc, by, reason)."""
    plugin = hami.gpu_nodes[NODE.name].device_plugin
    assert plugin.ready_url is not None
    with urllib.request.urlopen(plugin.ready_url.replace("/readyz", "/metrics"), timeout=10) as reply:
        text = reply.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("hami_device_plugin_pod_identifications_total{"):
            labels, _, value = line.partition("} ")
            pairs = dict(item.split("=", 1) for item in labels.split("{", 1)[1].split(","))
            key = (pairs["rpc"].strip('"'), pairs["by"].strip('"'), pairs["reason"].strip('"'))
            out[key] = float(value)
    return out


def real_node(hami: HamiStack) -> RealNode:
    real = hami.gpu_nodes[NODE.name].kubelet
    assert isinstance(real, RealNode)
    return real


async def test_kubelet_restart_mid_burst_loses_nothing_and_mixes_no_gpus(
    stack: HamiStack, burst_cluster: LocalCluster
) -> None:
    real = real_node(stack)
    before = await asyncio.to_thread(identifications, stack)
    await burst_and_check(
        stack,
        burst_cluster,
        disruption=Disruption("kubelet", RESTART_WHEN_RUNNING, real.restart_kubelet, restarts_kubelet=True),
        restart_policy="OnFailure",
    )
    after = await asyncio.to_thread(identifications, stack)
    counts = {key: value - before.get(key, 0.0) for key, value in after.items() if value > before.get(key, 0.0)}
    print(f"pod identifications during the burst (rpc, by, reason): {counts}")
    # Every GetPreferredAllocation and Allocate of the burst, the restarted kubelet's batch included, learnt the pod
    # from the kubelet's own pod-resources List: none fell back to the inference.
    # (A call the stopping kubelet abandoned is made again by the new one: at least one per pod.)
    assert {by for _, by, _ in counts} == {"pod-resources"}, counts
    assert counts[("allocate", "pod-resources", "admitting")] >= BURST, counts
    assert counts[("preferred", "pod-resources", "admitting")] >= BURST, counts


async def test_device_plugin_restart_mid_burst_loses_nothing_and_mixes_no_gpus(
    stack: HamiStack, burst_cluster: LocalCluster
) -> None:
    async def restart_plugin() -> None:
        await stack.restart_service("device-plugin")  # stopped, started again, registered, devices advertised

    await burst_and_check(
        stack,
        burst_cluster,
        pods=HALF_BURST,
        disruption=Disruption("device plugin", RESTART_WHEN_RUNNING, restart_plugin, after_admission=True),
        restart_policy="OnFailure",
    )


async def test_containerd_restart_mid_burst_loses_nothing_and_mixes_no_gpus(
    stack: HamiStack, burst_cluster: LocalCluster
) -> None:
    real = real_node(stack)
    await burst_and_check(
        stack,
        burst_cluster,
        pods=HALF_BURST,
        disruption=Disruption("containerd", RESTART_WHEN_RUNNING, real.restart_containerd),
        restart_policy="OnFailure",
    )
