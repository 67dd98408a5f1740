"""The device plugin's Kubernetes adapters against the real API server: API errors surface as KubeError
with the server's status and message (the client reads raw JSON, so it checks the status itself), and the
pod cache numbers pods in the order they were bound to the node, which is the order kubelet admits them."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from e2e_harness.waiting import wait_for
from hami_device_plugin.adapters.kube import KubeClient, pod_reflector
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_shared.service.kube import KubeError
from kubernetes_asyncio import client as k8s

NODE = "dp-adapter-node"


def _pod(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


async def test_api_errors_are_kube_errors_with_the_servers_message(k8s_api: k8s.ApiClient, namespace: str) -> None:
    kube = KubeClient(k8s_api)
    with pytest.raises(KubeError) as missing_pod:
        await kube.patch_pod_metadata(namespace, "ghost", annotations={"a": "b"})
    assert missing_pod.value.status == 404
    assert '"ghost" not found' in str(missing_pod.value)
    with pytest.raises(KubeError) as missing_node:
        await kube.patch_node_annotations("no-such-node", {"a": "b"})
    assert missing_node.value.status == 404
    with pytest.raises(KubeError) as unreadable_node:
        await kube.node_annotation("no-such-node", "a")
    assert unreadable_node.value.status == 404
    await k8s.CoreV1Api(k8s_api).create_namespaced_pod(namespace, _pod("real"))
    with pytest.raises(KubeError) as invalid:
        await kube.patch_pod_metadata(namespace, "real", annotations={"not a valid key!": "b"})
    assert invalid.value.status == 422
    assert "not a valid key!" in str(invalid.value)
    patched = await kube.patch_pod_metadata(
        namespace, "real", annotations={"hami.io/bind-phase": "success"}, labels={"hami.io/vgpu-node": "node-a"}
    )
    assert patched["metadata"]["annotations"]["hami.io/bind-phase"] == "success"
    assert patched["metadata"]["labels"] == {"hami.io/vgpu-node": "node-a"}


async def test_pod_cache_orders_pods_by_binding_not_by_creation(k8s_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(k8s_api)
    names = ["first-created", "second-created", "third-created"]
    uids = {}
    for name in names:  # created within the same second: creationTimestamp cannot order them
        uids[name] = (await core.create_namespaced_pod(namespace, _pod(name))).metadata.uid
    cache = PodCache()
    reflector = asyncio.create_task(pod_reflector(k8s_api, NODE, cache).run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 30)
        bound_order = list(reversed(names))
        for name in bound_order:  # bound one by one, youngest first, as a scheduler under load may do
            await core.create_namespaced_binding(
                namespace,
                {"metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}},
                _preload_content=False,
            )

        async def all_seen() -> bool:
            return {p.name for p in cache.records() if p.namespace == namespace} >= set(names)

        await wait_for(all_seen, what="the three bound pods in the cache", within=30)
        mine = sorted((p for p in cache.records() if p.namespace == namespace), key=lambda p: p.order)
        assert [p.name for p in mine] == bound_order
        # Our own patch responses update a pod without moving it in the order.
        kube = KubeClient(k8s_api)
        cache.apply_own_update(await kube.patch_pod_metadata(namespace, bound_order[0], annotations={"x": "y"}))
        again = sorted((p for p in cache.records() if p.namespace == namespace), key=lambda p: p.order)
        assert [p.name for p in again] == bound_order
        assert {p.name: p.uid for p in again} == uids
    finally:
        reflector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reflector


async def test_a_5000_digit_annotation_neither_empties_nor_fakes_the_pod_cache(
    k8s_api: k8s.ApiClient, namespace: str
) -> None:
    """Attack (issue 16): a bound pod's to-allocate holds a 5,000-digit number. The list (and a re-list, here a
    second reflector into the same cache) keeps every pod; the bad one is known by its UID and never matched."""
    core = k8s.CoreV1Api(k8s_api)
    node = "dp-adapter-node-digits"
    huge = _pod("huge")
    huge["metadata"]["annotations"] = {  # type: ignore[index]
        "hami.io/bind-phase": "allocating",
        "hami.io/vgpu-devices-to-allocate": f"GPU-0,NVIDIA,{'9' * 5000},0:;",
    }
    uids = set()
    for body in (_pod("fine"), huge):
        body["spec"]["nodeName"] = node  # type: ignore[index]
        uids.add((await core.create_namespaced_pod(namespace, body)).metadata.uid)
    cache = PodCache()
    for _ in range(2):  # the list, then a re-list
        lists = cache.lists
        reflector = asyncio.create_task(pod_reflector(k8s_api, node, cache).run())
        try:
            await wait_for(lambda n=lists: _listed(cache, uids, n), what="both pods listed into the cache", within=30)
        finally:
            reflector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reflector
        assert cache.synced.is_set()
        assert cache.uids() == uids
        problems = {p.name: p.problem for p in cache.records()}
        assert problems["fine"] is None
        assert problems["huge"] is not None  # known as live by its UID, never matched (its reason: the decoder's)


async def _listed(cache: PodCache, uids: set[str], lists_before: int) -> bool:
    return cache.synced.is_set() and cache.uids() == uids and cache.lists > lists_before
