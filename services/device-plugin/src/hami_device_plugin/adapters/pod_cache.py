"""The watch cache of the pods bound to this node, as :class:`PodRecord` values.

Fed by :func:`hami_device_plugin.adapters.kube.pod_reflector` (list, then watch) and by the responses
of our own pod patches, so a GetPreferredAllocation that follows an Allocate sees the consumed entry
even before the watch event arrives. Waiters can block until the next change (a pod bound moments ago
may reach kubelet before it reaches this cache).

Each pod gets an arrival number the first time the cache sees it: kubelet admits pods in the order its own watch
delivers them, so this is the order in which it will ask for their devices. A list numbers the pods new to it by
creation time, as kubelet sorts a batch; pods the cache already knew keep their number.

Every pod is read on its own: one whose annotations cannot be decoded is kept with its ``problem`` (live, never
matched); one that cannot be read at all is logged, counted and kept by identity. A list is built aside and
swapped in whole. :attr:`PodCache.synced` is set by the first successful list; :attr:`PodCache.stale` says that
the watch failed since (the monitor then removes no directory until the next one).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from hami_shared.logging import get_logger
from hami_shared.names import DEFAULT_RESOURCE_NAMES, ResourceNames

from hami_device_plugin.core.pods import PodRecord, pod_record

log = get_logger(__name__)

MAX_VERSION_DIGITS: Final = 30


def _metadata(obj: Any) -> Mapping[str, Any]:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    return metadata if isinstance(metadata, Mapping) else {}


def _version(obj: Mapping[str, Any]) -> int | None:
    text = str(_metadata(obj).get("resourceVersion", ""))
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS else None


def _uid(obj: Mapping[str, Any]) -> str:
    return str(_metadata(obj).get("uid", ""))


def _created(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = _metadata(obj)
    return (
        str(metadata.get("creationTimestamp", "")),
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
    )


class PodCache:
    """Pods of this node by UID. Single event loop; not thread-safe."""

    def __init__(
        self,
        resource_names: ResourceNames = DEFAULT_RESOURCE_NAMES,
        *,
        on_unreadable: Callable[[], None] = lambda: None,
    ) -> None:
        self._names = resource_names
        self._on_unreadable = on_unreadable
        self._pods: dict[str, PodRecord] = {}
        self._versions: dict[str, int | None] = {}
        self._arrivals: dict[str, int] = {}
        self._next_arrival = 0
        self._changed = asyncio.Event()
        self.synced = asyncio.Event()
        self.stale = False
        self.lists = 0
        """Successful lists so far."""
        self.generation = 0

    def records(self) -> Iterable[PodRecord]:
        return self._pods.values()

    def get(self, uid: str) -> PodRecord | None:
        return self._pods.get(uid)

    def uids(self) -> frozenset[str]:
        return frozenset(self._pods)

    def replace(self, items: Iterable[Mapping[str, Any]]) -> None:
        """A full list (after list or re-list), built aside and swapped in whole."""
        listed = sorted(items, key=_created)
        pods: dict[str, PodRecord] = {}
        versions: dict[str, int | None] = {}
        for item in listed:
            record = self._read(item)
            if record is not None:
                pods[record.uid] = record
                versions[record.uid] = _version(item)
        arrivals = {uid: n for uid, n in self._arrivals.items() if uid in pods}
        next_arrival = self._next_arrival
        for uid in pods:
            if uid not in arrivals:
                arrivals[uid] = next_arrival
                next_arrival += 1
        self._pods = {uid: dataclasses.replace(r, arrival=arrivals[uid]) for uid, r in pods.items()}
        self._versions, self._arrivals, self._next_arrival = versions, arrivals, next_arrival
        self.lists += 1
        self.stale = False
        self.synced.set()
        self._notify()

    def mark_stale(self) -> None:
        """The watch failed: events may be missing until the next successful list or a resumed watch (which
        the API server replays gap-free from the last resourceVersion seen, or refuses with 410: a re-list)."""
        self.stale = True

    def apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED): the watch runs, so the cache is current again."""
        self.stale = False
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

    def _read(self, obj: Mapping[str, Any]) -> PodRecord | None:
        """The pod's record; a pod that cannot be read is logged, counted and kept by identity only (so that it
        stays live), never a candidate."""
        metadata = _metadata(obj)
        namespace, name, uid = (str(metadata.get(key, "")) for key in ("namespace", "name", "uid"))
        record: PodRecord | None
        try:
            record = pod_record(obj, self._names)
            error = record.problem if uid else "the pod has no metadata.uid"
        except Exception as exc:  # one pod must never break the cache: whatever it holds, it is skipped
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            created, problem = str(metadata.get("creationTimestamp", "")), f"the pod cannot be read: {error}"
            record = PodRecord(uid=uid, namespace=namespace, name=name, created=created, node="", problem=problem)
        if error is None:
            return record
        log.warning("pod_unreadable", pod=f"{namespace[:253]}/{name[:253]}", uid=uid[:64], error=error[:500])
        self._on_unreadable()
        return record if uid else None

    def _store(self, obj: Mapping[str, Any]) -> None:
        record = self._read(obj)
        if record is None:
            return
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
