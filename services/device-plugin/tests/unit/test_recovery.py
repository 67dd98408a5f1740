"""Restart recovery (app/recovery.py): the containers whose directory an earlier run created are claimed again once
the pod list is in, their pods' patches queued again, and Allocate's wait for it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.app.recovery import Recovery
from hami_device_plugin.core.pods import PlacementPolicy, PodRecord
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"


async def test_containers_an_earlier_run_served_are_claimed_again_and_their_pods_patched(tmp_path: Path) -> None:
    served = pod_json(
        "served", uid="u1", node=NODE, containers=[Ctr("a", [(G0, 0, 1000, 0)]), Ctr("b", [(G0, 1, 10, 0)])]
    )
    fresh = pod_json("fresh", uid="u2", node=NODE, containers=[Ctr("a", [(G0, 2, 1000, 0)])])
    (tmp_path / "u1_b").mkdir()
    (tmp_path / "u9_a").mkdir()  # a pod that is gone
    cache = PodCache()
    claims = Claims(node=NODE, pods=cache)
    patched: list[PodRecord] = []
    recovery = Recovery(node=NODE, pods=cache, claims=claims, policy=PlacementPolicy, on_claimed=patched.append)

    running = asyncio.create_task(recovery.run(tmp_path))
    await recovery.wait(0.05)  # the pod list is not in yet: Allocate waits no longer than it may
    assert not running.done()
    cache.replace([served, fresh])
    await asyncio.wait_for(running, 5)
    await asyncio.wait_for(recovery.wait(60), 1)
    assert claims.held == {("u1", 1)}
    assert [p.name for p in patched] == ["served"]


async def test_a_plugin_with_nothing_to_recover_does_not_wait() -> None:
    recovery = Recovery(
        node=NODE, pods=None, claims=Claims(node=NODE, pods=None), policy=PlacementPolicy, on_claimed=print
    )
    recovery.nothing_to_recover()
    await asyncio.wait_for(recovery.wait(60), 1)
