"""The 80-pod burst of test_real_node_burst.py with the real kubelet restarted mid-burst (stopped and started
again as soon as 5 of the pods run): nothing is lost (all 80 end up Running, none fails admission) and no pod
gets another's GPU (every container sees exactly its own grant; the kubelet's checkpoint, rebuilt across the
restart, gives each pod exactly its extender slot, each slot once). Its own control plane and real node.

The pods are ``restartPolicy: OnFailure``: a RunPodSandbox the stopping kubelet abandons leaves a sandbox that is
not ready, and the kubelet started again does not make a new one for a ``Never`` pod whose sandbox attempt
already exists (kuberuntime ``computePodActions``): it fails the pod, GPUs or not (seen here: 2 of 80 pods,
Allocate had served both with their own slots). With ``OnFailure`` it makes a new sandbox and starts the
container; the device manager finds the container's devices in the checkpoint it restored and needs none
(``devicesToAllocate``), so no second Allocate is made (seen: 80 Allocates for 80 pods).
Run inside tests/e2e/isolated.sh (make test-e2e does).
"""

from __future__ import annotations

import pytest
from e2e_harness.cluster import LocalCluster
from hami_stack import HamiStack
from test_real_node_burst import burst_and_check, burst_cluster, stack

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["burst_cluster", "stack"]  # the module-scoped fixtures, one control plane and node for this module

RESTART_WHEN_RUNNING = 5


async def test_kubelet_restart_mid_burst_loses_nothing_and_mixes_no_gpus(
    stack: HamiStack, burst_cluster: LocalCluster
) -> None:
    await burst_and_check(
        stack, burst_cluster, restart_kubelet_when_running=RESTART_WHEN_RUNNING, restart_policy="OnFailure"
    )
