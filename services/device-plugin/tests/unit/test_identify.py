"""Pod identification (app/identify.py) from the pod cache alone (kubelet's pod-resources List is tested over gRPC in
tests/component/test_pod_resources.py): the pod whose slots kubelet asks for, never a container already claimed,
and a wait for the watch that ends at the deadline with the reason."""

from __future__ import annotations

import asyncio
import time

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.app.health import DeviceHealth
from hami_device_plugin.app.identify import PodIdentifier
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.core.allocation import InjectionConfig
from hami_device_plugin.core.config import DeviceConfig
from hami_device_plugin.core.inventory import Gpu
from hami_device_plugin.core.pods import Assignment, NoMatch
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"
FIRST = pod_json("first", uid="uid-first", node=NODE, containers=[Ctr("main", [(G0, 0, 1000, 10)])])
SECOND = pod_json("second", uid="uid-second", node=NODE, containers=[Ctr("main", [(G0, 1, 2000, 20)])])


def identifier(cache: PodCache, claims: Claims) -> PodIdentifier:
    metrics = PluginMetrics.create("test")
    health = DeviceHealth(
        gpus=(Gpu(uuid=G0, index=0, name="NVIDIA L40S", memory_mib=16384),),
        device_config=DeviceConfig(),
        injection=InjectionConfig(),
        metrics=metrics,
    )
    return PodIdentifier(node=NODE, pods=cache, health=health, claims=claims, metrics=metrics, clock=time.monotonic)


async def test_the_pod_holding_the_asked_slots_is_identified_and_a_claimed_one_never_again() -> None:
    cache = PodCache()
    cache.replace([FIRST, SECOND])
    claims = Claims(node=NODE, pods=cache)
    pods = identifier(cache, claims)
    result = await pods.identify([f"{G0}-1"], time.monotonic() + 1)
    assert isinstance(result, Assignment)
    assert (result.pod.name, result.position) == ("second", 0)
    assert await pods.preferred([f"{G0}-{r}" for r in range(10)], [], 1) == (f"{G0}-0",)  # the oldest candidate
    claims.claim("uid-first", 0)
    assert await pods.preferred([f"{G0}-{r}" for r in range(10)], [], 1) == (f"{G0}-1",)
    result = await pods.identify([f"{G0}-0"], time.monotonic() + 0.05)
    assert isinstance(result, Assignment)
    assert result.pod.name == "second"  # kubelet's slot is a guess; the one candidate left is served


async def test_identification_waits_for_the_watch_then_gives_up_with_the_reason() -> None:
    cache = PodCache()
    cache.replace([])
    pods = identifier(cache, Claims(node=NODE, pods=cache))

    async def watch_delivers() -> None:
        await asyncio.sleep(0.05)
        cache.apply("ADDED", FIRST)

    result, _ = await asyncio.gather(pods.identify([f"{G0}-0"], time.monotonic() + 5), watch_delivers())
    assert isinstance(result, Assignment)
    assert result.pod.name == "first"
    started = time.monotonic()
    cache.replace([])
    missing = await pods.identify([f"{G0}-0"], time.monotonic() + 0.1)
    assert isinstance(missing, NoMatch)
    assert missing.reason
    assert time.monotonic() - started >= 0.1
