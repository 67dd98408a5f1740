"""The Kubernetes API client of the extender: pod reads, Bindings, pod labels, Events.

Built on kubernetes-asyncio's ApiClient (kubeconfig or in-cluster auth, TLS), but bodies are
read and written as plain JSON: the extender needs a few fields of each object, and model
deserialisation of every pod would cost far more than the decisions themselves.
Events and label patches are queued and sent by background writers, so no verb waits on them.

Pod label patches (``hami.io/vgpu-node``, see ``Extender.pod_seen``) have their own queue and
writer, rate-limited (``label_rate`` writes per second after a burst of ``label_burst``: a token
bucket, ``core.ratelimit``): a first start on a cluster of pods placed by HAMi without the label
would otherwise patch every one of them at once (tens of thousands of writes in a burst). The
queue holds one entry per pod UID, oldest first, so each pod is written once however often the
watch shows it; it is bounded (``MAX_PENDING_LABELS``), and a pod that does not fit, or whose
patch fails, is labelled when the watch next shows it (its next change, or a re-list).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hami_shared.kube import discard, read_json
from hami_shared.logging import get_logger
from hami_shared.service.kube import KubeAdapter, api_error, calling
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from hami_scheduler_extender.core import commit
from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata
from hami_scheduler_extender.core.ratelimit import TokenBucket

log = get_logger(__name__)

WRITE_QUEUE_SIZE = 4096
WRITERS = 4
DEFAULT_LABEL_RATE = 50.0
"""Label patches per second: kube-scheduler's own default client QPS (40,000 unlabelled pods: ~13 min)."""
DEFAULT_LABEL_BURST = 100
MAX_PENDING_LABELS = 100_000
"""Pods awaiting their label patch: ~0.3 KiB each with the pod's name, namespace and UID strings it keeps
(measured: 29 MiB of entries for 100,000 pods, the strings aside), so ~20 MiB for a first start over 40,000."""


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
        # Best-effort writes (Events): what they are, how to send them, what to do after.
        self._writes: asyncio.Queue[tuple[str, Callable[[], Awaitable[Any]], Callable[[], None]]] = asyncio.Queue(
            maxsize=WRITE_QUEUE_SIZE
        )
        # Label patches awaiting their turn, by pod UID, oldest first: (name, namespace, labels).
        self._labels: collections.OrderedDict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = (
            collections.OrderedDict()
        )
        self._labels_waiting = asyncio.Event()
        self._labelling: set[str] = set()  # UIDs queued or in flight
        self._clock, self._sleep = clock, sleep
        self._label_bucket = TokenBucket(rate=label_rate, burst=label_burst, now=clock())
        self.writes_dropped = 0
        self.labels_written = 0

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
        uid = pod.get("uid", "")
        if uid in self._labelling:
            return  # already queued or in flight
        if len(self._labels) >= MAX_PENDING_LABELS:
            self.writes_dropped += 1  # labelled when the watch shows the pod again
            return
        self._labelling.add(uid)
        self._labels[uid] = (pod.get("name", ""), pod.get("namespace", ""), tuple(labels.items()))
        self._labels_waiting.set()

    def labels_pending(self) -> int:
        """Label patches queued and not yet started."""
        return len(self._labels)

    async def _label_writer(self) -> None:
        """Send the queued label patches in order, each once its token has accrued, up to ``WRITERS`` at a time."""
        slots = asyncio.Semaphore(WRITERS)
        async with asyncio.TaskGroup() as group:
            while True:
                while not self._labels:
                    self._labels_waiting.clear()
                    await self._labels_waiting.wait()
                # A free sender first, then the token: a write starts when its token says (a stall of the API
                # server does not bank tokens for a burst beyond label_burst afterwards).
                await slots.acquire()
                delay = self._label_bucket.reserve(self._clock())
                if delay > 0:
                    await self._sleep(delay)
                uid, (name, namespace, labels) = self._labels.popitem(last=False)
                group.create_task(self._send_label(uid, name, namespace, labels, slots))

    async def _send_label(
        self, uid: str, name: str, namespace: str, labels: tuple[tuple[str, str], ...], slots: asyncio.Semaphore
    ) -> None:
        try:
            await discard(
                self._core.patch_namespaced_pod(
                    name,
                    namespace,
                    commit.label_patch(uid, dict(labels)),
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
            self.labels_written += 1
        except (TimeoutError, ApiException, OSError) as exc:
            log.info("write_not_sent", what="label", error=str(api_error(exc)))
        except Exception:
            # One write must not stop the writer (and with it the service's task group).
            log.exception("label_write_failed", pod=f"{namespace[:63]}/{name[:253]}")
        finally:
            self._labelling.discard(uid)
            slots.release()

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
        """Background task: ``WRITERS`` concurrent senders of the queued Events and the rate-limited label writer;
        failures are logged and dropped."""
        async with asyncio.TaskGroup() as group:
            for _ in range(WRITERS):
                group.create_task(self._writer())
            group.create_task(self._label_writer())

    async def _writer(self) -> None:
        while True:
            what, send, after = await self._writes.get()
            try:
                await discard(send())
            except (TimeoutError, ApiException, OSError) as exc:
                log.info("write_not_sent", what=what, error=str(api_error(exc)))
            finally:
                after()
