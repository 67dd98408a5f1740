"""FALSIFIED, kept out of the suite (the name does not match test_*.py; run it by naming the file, inside
tests/e2e/isolated.sh): a restartable sidecar (initContainers with ``restartPolicy: Always``) runs for the
pod's whole life, alongside the app containers, and the real device manager keeps its device (a slot of its
own, test_real_node_init_sidecar.py), so its GPU memory adds to the app containers' on a card. Our scheduler
extender counts every init container as a plain one (the larger of the biggest init container and the sum of
the app containers, ``core/model.py`` ``usage`` and ``core/fit.py`` ``fit_pod``, by position only), so a 6000
MiB sidecar and a 6000 MiB app container are both placed on one 8192 MiB card: 12000 MiB granted on it to two
containers running at once (seen on every run). Fix belongs in the extender: a restartable init container's
grant adds to the app containers' (and to later init containers'), as kubelet's own resource accounting does.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hami_stack import HamiStack
from kubernetes_asyncio import client as k8s
from test_real_node_init_sidecar import NODE, api, gpu_container, gpu_pod, grants_of, init_cluster, ns, reports, stack

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["api", "init_cluster", "ns", "stack"]  # the fixtures of that module, for this one
CARD_MIB = {g.uuid: g.memory_mib for g in NODE.gpus}


async def test_sidecar_and_app_memory_add_up_on_a_card(stack: HamiStack, api: k8s.ApiClient, ns: str) -> None:
    core = k8s.CoreV1Api(api)
    side = gpu_container("side", 6000, keep_running=True, sidecar=True)
    main = gpu_container("main", 6000, keep_running=True)
    await core.create_namespaced_pod(ns, gpu_pod("big-sidecar", [side], [main]))
    await reports(core, ns, "big-sidecar", ["side", "main"])  # both running at once
    allocated, slots, _uid = await grants_of(core, api, ns, "big-sidecar")
    on_card: Counter[str] = Counter()
    for container in allocated:
        for grant in container:
            on_card[grant.uuid] += grant.usedmem
    over = {uuid: mib for uuid, mib in on_card.items() if mib > CARD_MIB[uuid]}
    assert over == {}, f"cards granted more than they have to containers running at once: {over}; slots {slots}"
