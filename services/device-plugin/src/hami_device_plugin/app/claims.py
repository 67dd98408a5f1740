"""The containers the plugin has served on this node: its claims, and its record of what it decided for each.

A claim (``(pod UID, container position)``, core/claims.py) is held in memory for as long as the plugin runs;
the per-container directory on the host outlives it (app/recovery.py claims those again after a restart). The
record of a container (core/records.py) is kept in memory and written to its file behind the Allocate answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set

from hami_shared.logging import get_logger

from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.adapters.records import RecordStore
from hami_device_plugin.core.records import ContainerRecord, record_from_pod

log = get_logger(__name__)


class Claims:
    """Claims and container records of one node. Lives on one event loop."""

    def __init__(self, *, node: str, pods: PodCache | None, record_store: RecordStore | None = None) -> None:
        self._node, self._pods, self._store = node, pods, record_store
        self._claimed: set[tuple[str, int]] = set()
        self._records: dict[str, ContainerRecord] = {}
        self._record_writes: asyncio.Queue[ContainerRecord] = asyncio.Queue()

    @property
    def held(self) -> Set[tuple[str, int]]:
        """The claims, read-only."""
        return self._claimed

    def claim(self, uid: str, position: int) -> None:
        self._claimed.add((uid, position))

    def load(self, records: Mapping[str, ContainerRecord]) -> None:
        """The records an earlier run of the plugin wrote, by directory name (at start)."""
        self._records.update(records)

    def recorded(self, dir_name: str) -> ContainerRecord | None:
        """The record this or an earlier run kept for the container of ``dir_name``, if any."""
        return self._records.get(dir_name)

    def record(self, dir_name: str) -> ContainerRecord | None:
        """What the plugin decided for the container of ``dir_name`` (``<podUID>_<container>``); rebuilt from
        the pod's allocated devices when this run did not allocate it; None for a container it does not know."""
        record = self._records.get(dir_name)
        if record is None and self._pods is not None:
            uid, _, container = dir_name.partition("_")
            pod = self._pods.get(uid)
            if pod is not None and pod.node == self._node and pod.problem is None:
                record = record_from_pod(pod, container)
                if record is not None:
                    self._records[dir_name] = record  # kept: a later edit of the annotation changes nothing
        return record

    def keep(self, record: ContainerRecord) -> None:
        """Keep the record of a container just allocated; its file is written behind (:meth:`run_record_writer`)."""
        if self._records.get(record.dir_name) != record:
            self._records[record.dir_name] = record
            self._record_writes.put_nowait(record)

    def forget(self, dir_name: str) -> None:
        self._records.pop(dir_name, None)
        if self._store is not None:
            self._store.remove(dir_name)

    async def run_record_writer(self) -> None:
        """Write the records of allocated containers to their files, behind the Allocate answers. A record lost
        to a crash before its file is written is rebuilt from the pod's annotations after the restart."""
        while True:
            record = await self._record_writes.get()
            if self._store is None:
                continue
            try:
                await asyncio.to_thread(self._store.write, record)
            except OSError as exc:  # kept in memory; after a restart rebuilt from the pod's annotations
                log.warning("container_record_not_written", container=record.dir_name, error=str(exc))
