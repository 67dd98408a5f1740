"""The Kubernetes API as the device plugin uses it: a list+watch of this node's pods, pod annotation
patches, the node inventory annotation, and Events on pods (the node backstop's; queued, best effort).

kubernetes-asyncio provides the client (kubeconfig or in-cluster auth, TLS); bodies are read and written
as plain JSON (``_preload_content=False``): model deserialisation of every pod would cost more than the
decisions. The client setup and the error type are the service kit's (:mod:`hami_shared.service.kube`), the
list+watch loop :mod:`hami_shared.kube`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.kube import Reflector, discard, read_json
from hami_shared.service.kube import KubeAdapter, KubeError, calling, pod_event
from hami_shared.service.writer import ApiWriter, Verdict
from kubernetes_asyncio import client

from hami_device_plugin.adapters.pod_cache import PodCache

MERGE_PATCH: Final = "application/merge-patch+json"
EVENT_QUEUE_SIZE: Final = 256


def _dropped(exc: Exception) -> Verdict | None:
    """Best effort: a failed Event is logged and dropped (the metric still counts what happened)."""
    return Verdict.DROP if isinstance(exc, KubeError) else None


class KubeClient(KubeAdapter):
    """Pod and node calls of the plugin; each raises :class:`hami_shared.service.kube.KubeError` on failure."""

    def __init__(
        self, api: client.ApiClient | None, *, core: Any = None, component: str = "hami-device-plugin"
    ) -> None:
        super().__init__(api, core=core)
        self._component = component
        self.events: ApiWriter[str, dict[str, Any]] = ApiWriter(
            self._send_event, what="event", classify=_dropped, limit=EVENT_QUEUE_SIZE
        )

    def pod_event(self, pod: Mapping[str, str], *, event_type: str, reason: str, message: str, node: str) -> bool:
        """Queue a core/v1 Event on the pod (``pod``: namespace, name, uid); False when the queue is full."""
        event = pod_event(
            pod, component=self._component, event_type=event_type, reason=reason, message=message, node=node
        )
        return self.events.submit(f"{pod['namespace']}/{event['metadata']['name']}", event)

    async def _send_event(self, _: str, event: dict[str, Any]) -> None:
        await self.create_event(event)

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        *,
        annotations: Mapping[str, str],
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the pod's annotations (and labels); returns the updated pod."""
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if labels:
            metadata["labels"] = dict(labels)
        body = {"metadata": metadata}
        with calling():
            call = self._core.patch_namespaced_pod(
                name, namespace, body, _content_type=MERGE_PATCH, _preload_content=False
            )
            pod: dict[str, Any] = await read_json(call)
        return pod

    async def list_pod_uids(self, node: str) -> frozenset[str]:
        """UIDs of every pod bound to ``node``, from a fresh (paged) list: what cleanup checks before removing."""
        uids: set[str] = set()
        token: str | None = None
        with calling(ValueError, AttributeError):
            while True:
                kwargs: dict[str, Any] = {"field_selector": f"spec.nodeName={node}", "limit": 500}
                if token:
                    kwargs["_continue"] = token
                body = await read_json(self._core.list_pod_for_all_namespaces(_preload_content=False, **kwargs))
                for item in body.get("items") or []:
                    uid = (item.get("metadata") or {}).get("uid") if isinstance(item, Mapping) else None
                    if uid:
                        uids.add(str(uid))
                token = (body.get("metadata") or {}).get("continue")
                if not token:
                    return frozenset(uids)

    async def node_annotation(self, node: str, key: str) -> str | None:
        with calling():
            body = await read_json(self._core.read_node(node, _preload_content=False))
        value = ((body.get("metadata") or {}).get("annotations") or {}).get(key)
        return None if value is None else str(value)

    async def patch_node_annotations(self, node: str, annotations: Mapping[str, str]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        with calling():
            await discard(self._core.patch_node(node, body, _content_type=MERGE_PATCH, _preload_content=False))


def pod_reflector(api: client.ApiClient, node: str, cache: PodCache) -> Reflector:
    """List+watch of the pods with ``spec.nodeName=<node>`` into ``cache``."""
    core: Any = client.CoreV1Api(api)  # Any: called with _preload_content=False (raw JSON)
    return Reflector(
        kind="pods",
        list_call=functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}"),
        on_list=cache.replace,
        on_event=cache.apply,
        on_restart=cache.mark_stale,
    )
