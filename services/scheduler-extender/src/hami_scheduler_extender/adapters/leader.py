"""Leader election on a coordination.k8s.io/v1 Lease, for running several extender replicas.

The holder renews ``spec.renewTime`` every ``renew_interval``; a candidate takes the Lease when it is absent
or not renewed for ``lease_duration``. Every write carries the Lease's resourceVersion, so two candidates
cannot both win (409); a leader that cannot renew within ``lease_duration`` steps down on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hami_shared.kube import discard, read_json
from hami_shared.logging import get_logger
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = get_logger(__name__)


def _micro_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro_time(text: str) -> dt.datetime:
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, layout).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return dt.datetime.fromtimestamp(0, tz=dt.UTC)


async def _written(write: Awaitable[Any]) -> bool:
    """Whether the write went through; False when another candidate wrote first (409 Conflict)."""
    try:
        await discard(write)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


class LeaseElector:
    """Campaigns for a Lease; ``is_leader`` is true while we hold and renew it."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_interval: float,
        on_change: Callable[[bool], None] = lambda _leader: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # Any: raw JSON calls (_preload_content=False), which the generated stubs do not model.
        self._api: Any = client.CoordinationV1Api(api)
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._renew = renew_interval
        self._on_change = on_change
        self._monotonic = monotonic
        self._renewed_at: float | None = None
        self._leader = False

    @property
    def is_leader(self) -> bool:
        if self._leader and self._renewed_at is not None and self._monotonic() - self._renewed_at > self._duration:
            self._set(False)
        return self._leader

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info(
                "leadership_changed", leader=leader, identity=self.identity, lease=f"{self._namespace}/{self._name}"
            )
            self._on_change(leader)

    async def run(self) -> None:
        """Never returns; cancel it to stop (the Lease then expires for the next candidate)."""
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self._renewed_at = self._monotonic()
                    self._set(True)
                else:
                    self._set(False)
            except (TimeoutError, ApiException, OSError) as exc:
                log.warning("lease_attempt_failed", error=str(exc))
                _ = self.is_leader  # steps down once the lease could have expired
            await asyncio.sleep(self._renew)

    async def _try_acquire_or_renew(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await read_json(
                self._api.read_namespaced_lease(self._name, self._namespace, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = self._body(None, now, transitions=0, acquire=now)
            return await _written(self._api.create_namespaced_lease(self._namespace, body, _preload_content=False))
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = _parse_micro_time(str(spec.get("renewTime") or spec.get("acquireTime") or ""))
        duration = float(spec.get("leaseDurationSeconds") or self._duration)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquire = _parse_micro_time(str(spec.get("acquireTime") or "")) if spec.get("acquireTime") else now
            body = self._body(lease, now, transitions=transitions, acquire=acquire)
        elif not holder or (now - renewed).total_seconds() > duration:
            body = self._body(lease, now, transitions=transitions + 1, acquire=now)
        else:
            return False
        return await _written(
            self._api.replace_namespaced_lease(self._name, self._namespace, body, _preload_content=False)
        )

    def _body(self, lease: dict[str, Any] | None, now: dt.datetime, *, transitions: int, acquire: dt.datetime) -> Any:
        metadata: dict[str, Any] = {"name": self._name, "namespace": self._namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._duration),
                "acquireTime": _micro_time(acquire),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            },
        }
