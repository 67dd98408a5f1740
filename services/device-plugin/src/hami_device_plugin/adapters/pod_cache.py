"""The watch cache of the pods bound to this node, as :class:`PodRecord` values.

Fed by :func:`hami_device_plugin.adapters.kube.pod_reflector` (list, then watch) and by the responses
of our own pod patches, so a GetPreferredAllocation that follows an Allocate sees the consumed entry
even before the watch event arrives. Waiters can block until the next change (a pod bound moments ago
may reach kubelet before it reaches this cache).

Each pod gets an arrival number the first time the cache sees it (bound to this node, as the watch's field
selector guarantees): kubelet admits pods in the order its own watch delivers them, so this is the order in
which it will ask for their devices. A list (start, re-list) numbers the pods it brings for the first time
by creation time, as kubelet sorts a batch; pods the cache already knew keep their number.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames

from hami_device_plugin.core.pods import PodRecord, pod_record


def _version(obj: Mapping[str, Any]) -> int | None:
    text = str((obj.get("metadata") or {}).get("resourceVersion", ""))
    return int(text) if text.isdigit() else None


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _created(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or {}
    return (
        str(metadata.get("creationTimestamp", "")),
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
    )


class PodCache:
    """Pods of this node by UID. Single event loop; not thread-safe."""

    def __init__(self, resource_names: ResourceNames = DEFAULT_RESOURCE_NAMES) -> None:
        self._names = resource_names
        self._pods: dict[str, PodRecord] = {}
        self._versions: dict[str, int | None] = {}
        self._arrivals: dict[str, int] = {}
        self._next_arrival = 0
        self._changed = asyncio.Event()
        self.synced = asyncio.Event()
        self.generation = 0

    def records(self) -> Iterable[PodRecord]:
        return self._pods.values()

    def get(self, uid: str) -> PodRecord | None:
        return self._pods.get(uid)

    def uids(self) -> frozenset[str]:
        return frozenset(self._pods)

    def replace(self, items: Iterable[Mapping[str, Any]]) -> None:
        """A full list (after list or re-list)."""
        listed = sorted(items, key=_created)
        known = {_uid(item) for item in listed}
        self._pods.clear()
        self._versions.clear()
        for uid in [u for u in self._arrivals if u not in known]:
            del self._arrivals[uid]
        for item in listed:
            self._store(item)
        self.synced.set()
        self._notify()

    def apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED)."""
        uid = _uid(obj)
        if kind == "DELETED":
            self._pods.pop(uid, None)
            self._versions.pop(uid, None)
            self._arrivals.pop(uid, None)
        else:
            self._store(obj)
        self._notify()

    def apply_own_update(self, obj: Mapping[str, Any]) -> None:
        """The pod as our patch returned it; ignored when the cache already holds a newer version."""
        uid = _uid(obj)
        new, old = _version(obj), self._versions.get(uid)
        if uid in self._pods and new is not None and old is not None and old >= new:
            return
        self._store(obj)
        self._notify()

    def _store(self, obj: Mapping[str, Any]) -> None:
        record = pod_record(obj, self._names)
        arrival = self._arrivals.get(record.uid)
        if arrival is None:
            arrival = self._arrivals[record.uid] = self._next_arrival
            self._next_arrival += 1
        self._pods[record.uid] = dataclasses.replace(record, arrival=arrival)
        self._versions[record.uid] = _version(obj)

    def _notify(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, since: int, seconds: float) -> bool:
        """Wait until the cache changed after generation ``since``; False on timeout."""
        if self.generation != since:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True
