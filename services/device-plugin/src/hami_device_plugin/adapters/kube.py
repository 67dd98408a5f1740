"""The Kubernetes API as the device plugin uses it: a list+watch of this node's pods, pod annotation
patches, and the node inventory annotation.

kubernetes-asyncio provides the client (kubeconfig or in-cluster auth, TLS); bodies are read and written
as plain JSON (``_preload_content=False``): model deserialisation of every pod would cost more than the
decisions. The client plumbing and the list+watch loop are :mod:`hami_shared.kube`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.kube import Reflector, describe, discard, read_json
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from hami_device_plugin.adapters.pod_cache import PodCache

MERGE_PATCH: Final = "application/merge-patch+json"


class KubeError(RuntimeError):
    """An API call failed; the message carries the API server's own reason."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _error(exc: BaseException) -> KubeError:
    message, status = describe(exc)
    return KubeError(message, status=status)


class KubeClient:
    """Pod and node calls of the plugin."""

    def __init__(self, api: client.ApiClient) -> None:
        # Any: called with _preload_content=False (raw JSON), which the generated stubs do not model.
        self._core: Any = client.CoreV1Api(api)

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
        try:
            call = self._core.patch_namespaced_pod(
                name, namespace, body, _content_type=MERGE_PATCH, _preload_content=False
            )
            pod: dict[str, Any] = await read_json(call)
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc
        return pod

    async def list_pod_uids(self, node: str) -> frozenset[str]:
        """UIDs of every pod bound to ``node``, from a fresh (paged) list: what cleanup checks before removing."""
        uids: set[str] = set()
        token: str | None = None
        try:
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
        except (TimeoutError, ApiException, OSError, ValueError, AttributeError) as exc:
            raise _error(exc) from exc

    async def node_annotation(self, node: str, key: str) -> str | None:
        try:
            body = await read_json(self._core.read_node(node, _preload_content=False))
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc
        value = ((body.get("metadata") or {}).get("annotations") or {}).get(key)
        return None if value is None else str(value)

    async def patch_node_annotations(self, node: str, annotations: Mapping[str, str]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await discard(self._core.patch_node(node, body, _content_type=MERGE_PATCH, _preload_content=False))
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc


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
