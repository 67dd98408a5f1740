"""Restart recovery: the containers an earlier run of the plugin served are claimed again.

kubelet does not call Allocate again for a container it admitted before the plugin restarted. Its directory on
the host (``<regions>/<podUID>_<container>``) is the record that the plugin served it: once the pod list is in,
those containers are claimed and their pods' patches queued again (an earlier run may have died before writing
them). Allocate waits for this (up to its own wait), so that it never hands such a container's slots to another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from hami_shared.logging import get_logger

from hami_device_plugin.adapters import files
from hami_device_plugin.adapters.pod_cache import PodCache
from hami_device_plugin.app.claims import Claims
from hami_device_plugin.core.claims import served_before
from hami_device_plugin.core.pods import PlacementPolicy, PodRecord

log = get_logger(__name__)


class Recovery:
    """Claims again what an earlier run served; :meth:`wait` until it has."""

    def __init__(
        self,
        *,
        node: str,
        pods: PodCache | None,
        claims: Claims,
        policy: Callable[[], PlacementPolicy],
        on_claimed: Callable[[PodRecord], object],
    ) -> None:
        self._node, self._pods, self._claims, self._policy = node, pods, claims, policy
        self._on_claimed = on_claimed
        self._done = asyncio.Event()

    def nothing_to_recover(self) -> None:
        """Mark recovery done (a plugin that starts on a node with no earlier run)."""
        self._done.set()

    async def wait(self, within: float) -> None:
        """Until recovery is done, at most ``within`` seconds."""
        if not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._done.wait()

    async def run(self, regions_dir: Path) -> None:
        assert self._pods is not None
        await self._pods.synced.wait()
        existing = set(await asyncio.to_thread(files.container_dirs, regions_dir))
        recovered = 0
        for pod in list(self._pods.records()):
            if not pod.is_candidate(self._node, self._claims.held, self._policy()):
                continue
            positions = served_before(pod, self._claims.held, existing)
            for position in positions:
                self._claims.claim(pod.uid, position)
            if positions:
                recovered += len(positions)
                self._on_claimed(pod)
        if recovered:
            log.info("claims_recovered", containers=recovered)
        self._done.set()
