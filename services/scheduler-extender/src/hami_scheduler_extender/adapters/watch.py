"""List-then-watch caches of Nodes and Pods feeding the usage cache.

One loop per resource: list (paged) to get the full set and a resourceVersion, then watch
from it; when the server ends the stream, watch again from the last resourceVersion seen
(bookmarks keep it fresh); on 410 Gone, list again. Any other error is retried with
exponential backoff and jitter (tenacity), logged with the attempt number. The handlers
turn raw JSON into core values; a malformed object is logged and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hami_shared.errors import MalformedInputError
from hami_shared.logging import get_logger
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from hami_scheduler_extender.adapters.kube import checked, read_json
from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import PodAllocation
from hami_scheduler_extender.core.state import ClusterState

log = get_logger(__name__)

PAGE_SIZE = 500
WATCH_TIMEOUT_S = 300
RETRYABLE = (ApiException, OSError, asyncio.TimeoutError, ValueError)


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


ListCall = Callable[..., Awaitable[Any]]


class Reflector:
    """List+watch of one resource kind into callbacks. ``synced`` is set after the first list."""

    def __init__(
        self,
        *,
        kind: str,
        list_call: ListCall,
        on_list: Callable[[list[Mapping[str, Any]]], None],
        on_event: Callable[[str, Mapping[str, Any]], None],
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.kind = kind
        self._list_call = list_call
        self._on_list = on_list
        self._on_event = on_event
        self._on_restart = on_restart
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Never returns; cancel it to stop."""
        resource_version: str | None = None
        while True:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RETRYABLE),
                wait=wait_exponential_jitter(multiplier=0.5, max=30),
                before_sleep=self._log_retry,
                reraise=True,
            ):
                with attempt:
                    if resource_version is None:
                        resource_version = await self._list()
                    try:
                        resource_version = await self._watch(resource_version)
                    except _Gone:
                        log.info("watch_gone_relisting", kind=self.kind)
                        self._on_restart()
                        resource_version = None
                    except BaseException:
                        self._on_restart()
                        raise

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("watch_retry", kind=self.kind, attempt=state.attempt_number, error=repr(error))

    async def _list(self) -> str:
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            body = await read_json(self._list_call(**kwargs))
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                resource_version = str(metadata.get("resourceVersion", ""))
                break
        self._on_list(items)
        self.synced.set()
        log.info("listed", kind=self.kind, count=len(items), resource_version=resource_version)
        return resource_version

    async def _watch(self, resource_version: str) -> str:
        response = await checked(
            self._list_call(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _preload_content=False,
                _request_timeout=WATCH_TIMEOUT_S + 30,
            )
        )
        try:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        resource_version = self._dispatch(line, resource_version)
        finally:
            response.release()
        return resource_version

    def _dispatch(self, line: bytes, resource_version: str) -> str:
        event = json.loads(line)
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
        new_version = str((obj.get("metadata") or {}).get("resourceVersion", resource_version))
        if kind != "BOOKMARK":
            try:
                self._on_event(str(kind), obj)
            except Exception:
                # One object we cannot digest must not stop the cache for every other one.
                log.exception("watch_event_failed", kind=self.kind, event_type=kind, version=new_version)
        return new_version


def apply_node_list(state: ClusterState, items: list[Mapping[str, Any]], *, count_resource: str) -> None:
    """A full node list (after list or re-list)."""
    state.replace_nodes(objects.node_inventory(i, count_resource=count_resource) for i in items)


def apply_node_event(state: ClusterState, kind: str, node: Mapping[str, Any], *, count_resource: str) -> None:
    """One node watch event."""
    if kind == "DELETED":
        state.delete_node(str((node.get("metadata") or {}).get("name", "")))
    else:
        state.upsert_node(objects.node_inventory(node, count_resource=count_resource))


def apply_pod_list(state: ClusterState, items: list[Mapping[str, Any]]) -> None:
    """A full pod list (after list or re-list)."""
    holds = {}
    for pod in items:
        allocation = _allocation(pod)
        if allocation is not None:
            holds[allocation.uid] = allocation
    state.replace_pods(holds)


def apply_pod_event(state: ClusterState, kind: str, pod: Mapping[str, Any]) -> None:
    """One pod watch event."""
    uid = objects.pod_identity(pod).uid
    if kind == "DELETED" or objects.pod_is_terminal(pod):
        state.delete_pod(uid)
        return
    try:
        allocation = objects.pod_allocation(pod)
    except MalformedInputError as exc:
        # Unreadable annotations: keep whatever we hold for it rather than under-count.
        log.warning("pod_annotation_unreadable", pod=_ref(pod), error=str(exc))
        return
    state.apply_pod(uid, allocation)


def node_reflector(
    api: client.ApiClient, state: ClusterState, *, count_resource: str, on_restart: Callable[[], None]
) -> Reflector:
    return Reflector(
        kind="nodes",
        list_call=_raw(client.CoreV1Api(api)).list_node,
        on_list=lambda items: apply_node_list(state, items, count_resource=count_resource),
        on_event=lambda kind, node: apply_node_event(state, kind, node, count_resource=count_resource),
        on_restart=on_restart,
    )


def pod_reflector(
    api: client.ApiClient,
    state: ClusterState,
    *,
    on_restart: Callable[[], None],
    on_pod: Callable[[Mapping[str, Any]], None] = lambda pod: None,
) -> Reflector:
    """``on_pod`` also sees every listed pod and every pod of an added/modified event, after the cache."""

    def on_list(items: list[Mapping[str, Any]]) -> None:
        apply_pod_list(state, items)
        for pod in items:
            on_pod(pod)

    def on_event(kind: str, pod: Mapping[str, Any]) -> None:
        apply_pod_event(state, kind, pod)
        if kind != "DELETED":
            on_pod(pod)

    return Reflector(
        kind="pods",
        list_call=_raw(client.CoreV1Api(api)).list_pod_for_all_namespaces,
        on_list=on_list,
        on_event=on_event,
        on_restart=on_restart,
    )


def _allocation(pod: Mapping[str, Any]) -> PodAllocation | None:
    try:
        return objects.pod_allocation(pod)
    except MalformedInputError as exc:
        log.warning("pod_annotation_unreadable", pod=_ref(pod), error=str(exc))
        return None


def _ref(pod: Mapping[str, Any]) -> str:
    identity = objects.pod_identity(pod)
    return f"{identity.namespace}/{identity.name}"


def _raw(api: object) -> Any:
    """The generated API typed as Any: we call it with _preload_content=False (raw JSON)."""
    return api
