"""The Kubernetes API client of the extender: pod reads, Bindings, pod labels, Events.

Built on kubernetes-asyncio's ApiClient (kubeconfig or in-cluster auth, TLS), but bodies are
read and written as plain JSON: the extender needs a few fields of each object, and model
deserialisation of every pod would cost far more than the decisions themselves.
Events and label patches are queued and sent by background writers, so no verb waits on them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hami_shared.kube import describe, discard, read_json
from hami_shared.logging import get_logger
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from hami_scheduler_extender.app.ports import NO_METADATA, BindingMetadata, KubeError
from hami_scheduler_extender.core import commit

log = get_logger(__name__)

WRITE_QUEUE_SIZE = 4096
WRITERS = 4


def api_error(exc: BaseException) -> KubeError:
    """Our error from whatever the client raised, keeping the API's own message."""
    message, status = describe(exc)
    return KubeError(message, status=status)


class KubeClient:
    """Implements :class:`hami_scheduler_extender.app.ports.KubePort`."""

    def __init__(self, api: client.ApiClient, *, component: str) -> None:
        # Any: we call with _preload_content=False (raw JSON), which the generated stubs do not model.
        self._core: Any = client.CoreV1Api(api)
        self._component = component
        # Best-effort writes (Events, label patches): what they are, how to send them, what to do after.
        self._writes: asyncio.Queue[tuple[str, Callable[[], Awaitable[Any]], Callable[[], None]]] = asyncio.Queue(
            maxsize=WRITE_QUEUE_SIZE
        )
        self._labelling: set[str] = set()
        self.writes_dropped = 0

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        try:
            pod: Mapping[str, Any] = await read_json(
                self._core.read_namespaced_pod(name, namespace, _preload_content=False)
            )
        except (TimeoutError, ApiException, OSError) as exc:
            raise api_error(exc) from exc
        return pod

    async def create_binding(
        self, namespace: str, name: str, uid: str, node: str, metadata: BindingMetadata = NO_METADATA
    ) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid}
        if metadata.annotations:
            meta["annotations"] = dict(metadata.annotations)
        if metadata.labels:
            meta["labels"] = dict(metadata.labels)
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            await discard(self._core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False))
        except (TimeoutError, ApiException, OSError) as exc:
            raise api_error(exc) from exc

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        uid = pod.get("uid", "")
        if uid in self._labelling:
            return  # already queued or in flight
        patch = commit.label_patch(uid, labels)

        def send() -> Awaitable[Any]:
            call: Awaitable[Any] = self._core.patch_namespaced_pod(
                pod["name"],
                pod["namespace"],
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            return call

        if self._enqueue("label", send, lambda: self._labelling.discard(uid)):
            self._labelling.add(uid)

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod['name']}.{uuidlib.uuid4().hex[:12]}", "namespace": pod["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["name"],
                "namespace": pod["namespace"],
                "uid": pod.get("uid", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self._component,
        }
        self._enqueue(
            f"event {reason}",
            lambda: self._core.create_namespaced_event(pod["namespace"], event, _preload_content=False),
            lambda: None,
        )

    def _enqueue(self, what: str, send: Callable[[], Awaitable[Any]], after: Callable[[], None]) -> bool:
        try:
            self._writes.put_nowait((what, send, after))
        except asyncio.QueueFull:
            self.writes_dropped += 1
            return False
        return True

    async def run_writers(self) -> None:
        """Background task: ``WRITERS`` concurrent senders of the queued writes; failures are logged and dropped."""
        async with asyncio.TaskGroup() as group:
            for _ in range(WRITERS):
                group.create_task(self._writer())

    async def _writer(self) -> None:
        while True:
            what, send, after = await self._writes.get()
            try:
                await discard(send())
            except (TimeoutError, ApiException, OSError) as exc:
                log.info("write_not_sent", what=what, error=str(api_error(exc)))
            finally:
                after()
