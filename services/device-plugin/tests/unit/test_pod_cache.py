"""The pod cache: admission order (pods are numbered as they reach the node, not by creation time), per-pod
isolation of what cannot be decoded, lists swapped in whole, and the monitor's cleanup that trusts neither a
stale cache nor the cache alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.metrics import PluginMetrics
from hami_device_plugin.app.monitor import Monitor
from hami_device_plugin.core.pods import candidates, preferred_devices
from hami_shared import names
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


# --- per-item isolation, lists built aside, cleanup only on evidence (issue 16) ---------------------------------


def huge_number_pod(name: str) -> dict[str, Any]:
    """A bound pod whose to-allocate holds a 5,000-digit number (int() refuses it with a plain ValueError)."""
    body = pod(name, 0)
    body["metadata"]["annotations"][names.DEVICES_TO_ALLOCATE] = f"{G0},NVIDIA,{'7' * 5000},0:;"
    return body


def test_a_pod_that_cannot_be_decoded_is_kept_by_identity_and_never_matched() -> None:
    skipped = []
    cache = PodCache(on_unreadable=lambda: skipped.append(1))
    cache.replace([pod("a", 0), huge_number_pod("bad"), pod("b", 1)])
    assert cache.synced.is_set()
    assert cache.uids() == {"uid-a", "uid-b", "uid-bad"}
    bad = cache.get("uid-bad")
    assert bad is not None
    assert bad.problem is not None
    assert len(skipped) == 1
    assert [p.name for p in candidates(cache.records(), NODE, ())] == ["a", "b"]
    # Not even a mapping, or no UID: counted and skipped, the rest of the list stands.
    cache.replace([pod("a", 0), "not a pod", {"metadata": {"name": "no-uid"}}, 7])  # type: ignore[list-item]
    assert cache.uids() == {"uid-a"}
    assert len(skipped) == 4


def test_a_relist_is_built_aside_and_an_event_with_a_bad_pod_changes_nothing_else() -> None:
    cache = PodCache()
    cache.replace([pod("a", 0), pod("b", 1)])
    before = {p.uid: p for p in cache.records()}
    cache.apply("MODIFIED", huge_number_pod("a"))
    assert cache.uids() == {"uid-a", "uid-b"}
    assert cache.get("uid-b") == before["uid-b"]
    assert cache.get("uid-a").problem is not None  # type: ignore[union-attr]

    class Exploding(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("boom")

    lists = cache.lists
    with pytest.raises(RuntimeError):  # the list itself fails (here while sorting): the cache keeps its state
        cache.replace([pod("c", 2), Exploding()])
    assert cache.uids() == {"uid-a", "uid-b"}
    assert cache.lists == lists


def test_synced_only_after_a_successful_list_and_stale_after_a_failed_watch() -> None:
    cache = PodCache()
    assert not cache.synced.is_set()
    cache.apply("ADDED", pod("a", 0))
    assert not cache.synced.is_set()  # events alone are not a list
    cache.replace([pod("a", 0)])
    assert cache.synced.is_set()
    assert not cache.stale
    cache.mark_stale()
    assert cache.stale
    cache.apply("MODIFIED", pod("a", 0, version="2"))  # a resumed watch delivers again: current
    assert not cache.stale
    cache.mark_stale()
    cache.replace([pod("a", 0)])
    assert not cache.stale


class _Lister:
    def __init__(self, uids: frozenset[str] | None) -> None:
        self.uids, self.calls = uids, 0

    async def __call__(self) -> frozenset[str] | None:
        self.calls += 1
        return self.uids


def _monitor(tmp_path: Path, cache: PodCache, lister: _Lister, forgotten: list[str]) -> Monitor:
    return Monitor(
        regions_dir=tmp_path,
        driver=None,
        gpus=lambda: (),
        pods=cache,
        metrics=PluginMetrics.create("test"),
        cleanup_grace=300,
        live_pod_uids=lister,
        forget_record=forgotten.append,
    )


def _old_dir(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir()
    os.utime(d, (1, 1))  # far older than the grace
    return d


async def test_cleanup_after_a_relist_with_a_5000_digit_annotation_deletes_nothing_live(tmp_path: Path) -> None:
    """The issue's scenario: a bound pod's to-allocate holds a 5,000-digit number, the watch breaks and the cache
    re-lists. The cache keeps every pod, and cleanup removes only the directory of a pod that is really gone."""
    cache = PodCache()
    cache.replace([pod("live", 0), pod("bad", 1)])
    live, bad, gone = (_old_dir(tmp_path, f"uid-{n}_c") for n in ("live", "bad", "gone"))
    cache.mark_stale()
    cache.replace([pod("live", 0), huge_number_pod("bad")])  # the re-list
    assert cache.uids() == {"uid-live", "uid-bad"}
    lister, forgotten = _Lister(frozenset({"uid-live", "uid-bad"})), []
    await _monitor(tmp_path, cache, lister, forgotten)._cleanup()
    assert live.is_dir()
    assert bad.is_dir()
    assert not gone.exists()
    assert forgotten == ["uid-gone_c"]


async def test_cleanup_needs_a_current_cache_and_a_fresh_list(tmp_path: Path) -> None:
    cache = PodCache()
    directory = _old_dir(tmp_path, "uid-x_c")
    lister, forgotten = _Lister(frozenset()), []
    monitor = _monitor(tmp_path, cache, lister, forgotten)
    await monitor._cleanup()  # never listed
    cache.replace([])
    cache.mark_stale()
    await monitor._cleanup()  # the watch failed since
    assert directory.is_dir()
    assert lister.calls == 0
    cache.replace([])
    failing = _monitor(tmp_path, cache, _Lister(None), forgotten)
    await failing._cleanup()  # the fresh list fails
    assert directory.is_dir()
    in_fresh_list = _monitor(tmp_path, cache, _Lister(frozenset({"uid-x"})), forgotten)
    await in_fresh_list._cleanup()  # the cache missed it, the API has it
    assert directory.is_dir()
    await monitor._cleanup()
    assert not directory.exists()
