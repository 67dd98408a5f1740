"""The pod patch queue (app/patches.py) over the shared writer: one patch per pod, merged while it waits; a pod gone
is given up, any other API error retried until written; each pod written comes back into the pod cache."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.patches import PodPatches
from hami_device_plugin.core.claims import PodPatch
from hami_device_plugin.core.pods import pod_record
from hami_shared import names
from hami_shared.service.kube import KubeError
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"


def body(name: str, version: str = "1") -> dict[str, Any]:
    pod = pod_json(name, uid=f"uid-{name}", node=NODE, containers=[Ctr("c", [(G0, 0, 1000, 0)])])
    pod["metadata"]["resourceVersion"] = version
    return pod


class Kube:
    """Double of the plugin's KubeClient pod patch: answers with the patched pod, or the scripted failures."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        self.failures = failures or {}
        self.patches: list[tuple[str, dict[str, str], dict[str, str]]] = []

    async def patch_pod_metadata(
        self, namespace: str, name: str, *, annotations: dict[str, str], labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        await asyncio.sleep(0)
        if self.failures.get(name):
            raise self.failures[name].pop(0)
        self.patches.append((name, dict(annotations), dict(labels or {})))
        pod = body(name, version="9")
        pod["metadata"]["annotations"].update(annotations)
        return pod


async def written(patches: PodPatches, kube: Kube) -> None:
    task = asyncio.create_task(patches.run())
    try:
        await patches.flush(within=5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def queue(kube: Kube) -> tuple[PodPatches, PodCache, PluginMetrics]:
    cache = PodCache()
    cache.replace([body("a"), body("b")])
    metrics = PluginMetrics.create("test")
    patches = PodPatches(pods=cache, metrics=metrics)
    patches.connect(kube)  # type: ignore[arg-type]
    return patches, cache, metrics


async def test_patches_of_a_pod_are_merged_written_once_and_read_back_into_the_cache() -> None:
    kube = Kube()
    patches, cache, metrics = queue(kube)
    a = pod_record(body("a"))
    patches.patch(a, PodPatch.of(a, {"x": "1", names.BIND_PHASE: "allocating"}))
    patches.patch(a, PodPatch.of(a, {names.BIND_PHASE: "success"}, {"l": "v"}))
    assert patches.pending() == 1
    await written(patches, kube)
    assert kube.patches == [("a", {"x": "1", names.BIND_PHASE: "success"}, {"l": "v"})]
    record = cache.get("uid-a")
    assert record is not None
    assert record.bind_phase == "success"
    assert metrics.registry.get_sample_value("hami_device_plugin_pod_patches_total") == 1


async def test_a_pod_gone_is_given_up_and_an_api_error_is_retried_until_written() -> None:
    kube = Kube(
        {"a": [KubeError("gone", status=404)], "b": [KubeError("busy", status=500), KubeError("x", status=422)]}
    )
    patches, _, _ = queue(kube)
    for name in ("a", "b"):
        pod = pod_record(body(name))
        patches.patch(pod, PodPatch.of(pod, {"k": name}))
    await written(patches, kube)
    assert kube.patches == [("b", {"k": "b"}, {})]
    assert (patches.written, patches.dropped) == (1, 1)


async def test_what_is_not_an_api_error_stops_the_writer() -> None:
    kube = Kube({"a": [RuntimeError("a bug")]})
    patches, _, _ = queue(kube)
    a = pod_record(body("a"))
    patches.patch(a, PodPatch.of(a, {"k": "v"}))
    with pytest.raises(ExceptionGroup) as excinfo:
        await asyncio.wait_for(patches.run(), 5)
    assert excinfo.group_contains(RuntimeError, match="a bug")
