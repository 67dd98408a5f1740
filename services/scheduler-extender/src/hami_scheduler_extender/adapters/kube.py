"""The Kubernetes API client of the extender: pod reads, Bindings, pod labels, Events.

Bodies are read and written as plain JSON: model deserialisation of every pod would cost far more than
the decisions. Events and label patches are queued for background writers (``hami_shared.service.writer``),
best effort: a failed write is logged and dropped. Label patches (``Extender.pod_seen``) are rate-limited
(``label_rate`` per second after ``label_burst``), so a first start on tens of thousands of unlabelled
pods does not patch them all at once; one entry per pod UID, oldest first, at most ``MAX_PENDING_LABELS``;
a pod left out is labelled when the watch next shows it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hami_shared.kube import discard, read_json
from hami_shared.logging import get_logger
from hami_shared.service.kube import KubeAdapter, KubeError, calling, pod_event
from hami_shared.service.writer import ApiWriter, Verdict
from kubernetes_asyncio import client

from hami_scheduler_extender.core import commit
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata

log = get_logger(__name__)

WRITE_QUEUE_SIZE = 4096
WRITERS = 4
DEFAULT_LABEL_RATE = 50.0
"""Label patches per second: kube-scheduler's own default client QPS (40,000 unlabelled pods: ~13 min)."""
DEFAULT_LABEL_BURST = 100
MAX_PENDING_LABELS = 100_000
"""Pods awaiting their label patch: ~0.3 KiB each with the pod's name, namespace and UID strings it keeps
(measured: 29 MiB of entries for 100,000 pods, the strings aside), so ~20 MiB for a first start over 40,000."""


def _never_retried(exc: Exception) -> Verdict | None:
    """Best effort: a failed write is dropped (a pod is labelled again when the watch shows it next)."""
    return Verdict.DROP if isinstance(exc, KubeError) else None


LabelTarget = tuple[str, str, tuple[tuple[str, str], ...]]
"""A pod's name, namespace and the labels to merge onto it."""


class KubeClient(KubeAdapter):
    """Implements :class:`hami_scheduler_extender.app.ports.KubePort`."""

    def __init__(
        self,
        api: client.ApiClient | None,
        *,
        component: str,
        label_rate: float = DEFAULT_LABEL_RATE,
        label_burst: int = DEFAULT_LABEL_BURST,
        core: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``core`` replaces the CoreV1Api built from ``api`` (a test double of the API); ``clock`` and ``sleep``
        pace the label writer (a test's virtual time)."""
        super().__init__(api, core=core)
        self._component = component
        self._events: ApiWriter[str, dict[str, Any]] = ApiWriter(
            self._send_event,
            what="event",
            classify=_never_retried,
            limit=WRITE_QUEUE_SIZE,
            concurrency=WRITERS,
        )
        self._labels: ApiWriter[str, LabelTarget] = ApiWriter(
            self._send_label,
            what="label",
            classify=_never_retried,
            limit=MAX_PENDING_LABELS,
            rate=label_rate,
            burst=label_burst,
            concurrency=WRITERS,
            clock=clock,
            sleep=sleep,
        )

    @property
    def writes_dropped(self) -> int:
        """Events and label patches refused, their queue full."""
        return self._events.refused + self._labels.refused

    @property
    def labels_written(self) -> int:
        return self._labels.written

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        with calling():
            pod: Mapping[str, Any] = await read_json(
                self._core.read_namespaced_pod(name, namespace, _preload_content=False)
            )
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
        with calling():
            await discard(self._core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False))

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        # A pod queued already is not queued again; one over the bound is labelled when the watch shows it again.
        self._labels.submit(pod.get("uid", ""), (pod.get("name", ""), pod.get("namespace", ""), tuple(labels.items())))

    def labels_pending(self) -> int:
        """Label patches queued and not yet started."""
        return self._labels.queued()

    async def _send_label(self, uid: str, target: LabelTarget) -> None:
        name, namespace, labels = target
        patch = commit.label_patch(uid, dict(labels))
        merge = "application/merge-patch+json"
        with calling():
            await discard(
                self._core.patch_namespaced_pod(name, namespace, patch, _content_type=merge, _preload_content=False)
            )

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None:
        event = pod_event(pod, component=self._component, event_type=event_type, reason=reason, message=message)
        # One queued Event per pod and reason: a newer one replaces it (coalesced while the API server is slow).
        self._events.submit(f"{pod['namespace']}/{pod['name']}/{reason}", event)

    async def _send_event(self, _: str, event: dict[str, Any]) -> None:
        await self.create_event(event)

    async def run_writers(self) -> None:
        """Background task: the Event writer (``WRITERS`` at a time) and the rate-limited label writer."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._events.run())
            group.create_task(self._labels.run())
