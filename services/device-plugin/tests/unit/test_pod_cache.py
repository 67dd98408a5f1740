"""The pod cache's admission order: pods are numbered as they reach the node, not by creation time."""

from __future__ import annotations

from typing import Any

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.core.pods import preferred_devices
from podspecs import Ctr, pod_json

NODE = "node-a"
G0 = "GPU-00000000-0000-4000-8000-000000000000"


def pod(name: str, replica: int, created: str = "2026-11-23T07:00:00Z", version: str = "1") -> dict[str, Any]:
    body = pod_json(
        name, uid=f"uid-{name}", node=NODE, containers=[Ctr("c", [(G0, replica, 1000, 0)])], created=created
    )
    body["metadata"]["resourceVersion"] = version
    return body


def order(cache: PodCache) -> list[str]:
    return [p.name for p in sorted(cache.records(), key=lambda p: p.order)]


def test_watch_events_number_pods_in_arrival_order_whatever_their_creation_time() -> None:
    cache = PodCache()
    cache.replace([])
    cache.apply("ADDED", pod("young", 1, created="2026-11-23T07:00:09Z"))
    cache.apply("ADDED", pod("old", 2, created="2026-11-23T07:00:00Z"))
    assert order(cache) == ["young", "old"]
    # kubelet will ask for the pod that reached the node first: prefer its slots.
    available = [f"{G0}-{n}" for n in range(4)]
    assert preferred_devices(cache.records(), NODE, available, [], 1) == (f"{G0}-1",)


def test_updates_keep_a_pods_place_and_deletion_forgets_it() -> None:
    cache = PodCache()
    cache.replace([])
    cache.apply("ADDED", pod("a", 0))
    cache.apply("ADDED", pod("b", 1))
    cache.apply("MODIFIED", pod("a", 0, version="5"))
    cache.apply_own_update(pod("a", 0, version="6"))
    assert order(cache) == ["a", "b"]
    cache.apply("DELETED", pod("a", 0, version="7"))
    cache.apply("ADDED", pod("a", 0, version="8"))  # a new pod of the same UID would be a new arrival
    assert order(cache) == ["b", "a"]


def test_a_list_numbers_new_pods_by_creation_time_and_keeps_known_ones() -> None:
    cache = PodCache()
    cache.replace([pod("z", 0, created="2026-11-23T07:00:01Z"), pod("y", 1, created="2026-11-23T07:00:00Z")])
    assert order(cache) == ["y", "z"]
    cache.apply("ADDED", pod("x", 2, created="2026-11-23T06:59:00Z"))
    # A re-list after a broken watch: known pods keep their place, a new one queues behind them.
    cache.replace(
        [pod("x", 2, created="2026-11-23T06:59:00Z"), pod("w", 3, created="2026-11-23T06:00:00Z"), pod("z", 0)]
    )
    assert order(cache) == ["z", "x", "w"]
