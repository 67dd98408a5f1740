"""Why the webhook Deployment sets ``--shutdown-delay``: the same rollout as
test_deployed_rollouts.test_webhook_rollout_admits_every_pod_created_meanwhile (on conftest's ``deployed``), with
the drain turned off (``--shutdown-delay=0`` appended by the overlay, so a signalled pod closes its port at once).
Kept out of the suite (not named test_*.py); run it by naming the file inside tests/e2e/isolated.sh.

What it shows: the kubelet signals an old pod when the Deployment controller deletes it, at the moment its endpoint
is removed; kube-proxy's rules and the apiserver's pooled connections to it are updated only later, so reviews
still reach the closed port and, with ``failurePolicy: Fail``, those pods are refused ("failed calling webhook").
The test passes when such refusals happen (the loop records them).
"""

from __future__ import annotations

from e2e_harness.deployed_stack import DeployedStack, OverlaySettings
from e2e_harness.real_node import RealNode
from kubernetes_asyncio import client as k8s
from test_deployed_rollouts import pytestmark, roll_webhook_under_load  # noqa: F401 - pytest reads pytestmark here

NO_DRAIN = ("--shutdown-delay=0",)


async def test_without_the_drain_a_rollout_refuses_pods(
    deployed: tuple[DeployedStack, list[RealNode]],
    deployed_api: k8s.ApiClient,
    deployed_ns: str,
) -> None:
    stack, nodes = deployed
    # First roll (no load) to pods without the drain, then roll them again under load.
    await stack.retag(nodes, "webhook", "no-drain-1")
    await stack.apply("webhook", OverlaySettings(tags={"webhook": "no-drain-1"}, extra_args=NO_DRAIN))
    await stack.wait_available("webhook", within=180)
    await stack.retag(nodes, "webhook", "no-drain-2")
    loop, _seconds = await roll_webhook_under_load(
        stack, deployed_api, deployed_ns, OverlaySettings(tags={"webhook": "no-drain-2"}, extra_args=NO_DRAIN)
    )
    print("\n".join(loop.failures[:10]))
    assert loop.failures, f"no refusal without the drain ({loop.created} pods created)"
