"""The Kubernetes API as the device plugin uses it: a list+watch of this node's pods, pod annotation
patches, and the node inventory annotation.

kubernetes-asyncio provides the client (kubeconfig or in-cluster auth, TLS); bodies are read and written
as plain JSON (``_preload_content=False``): model deserialisation of every pod would cost more than the
decisions. The watch: list to get the set and a resourceVersion, watch from it, watch again from the last
version when the server ends the stream, list again on 410 Gone, back off with jitter on other errors.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Mapping
from typing import Any, Final

from hami_shared.logging import get_logger
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from hami_device_plugin.adapters.pod_cache import PodCache

log = get_logger(__name__)

WATCH_TIMEOUT_S: Final = 300
MERGE_PATCH: Final = "application/merge-patch+json"
RETRYABLE: Final = (ApiException, OSError, asyncio.TimeoutError, ValueError)


class KubeError(RuntimeError):
    """An API call failed; the message carries the API server's own reason."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


async def make_api_client(kubeconfig: pathlib.Path | None) -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _error(exc: BaseException) -> KubeError:
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        if exc.body:
            try:
                message = json.loads(exc.body).get("message", message)
            except (ValueError, AttributeError):
                message = str(exc.body)[:300]
        return KubeError(f"HTTP {exc.status}: {message}", status=int(exc.status or 0))
    return KubeError(f"{type(exc).__name__}: {exc}")


async def _checked(response: Any) -> Any:
    """``response`` if its status is 2xx. With ``_preload_content=False`` the client does not check the
    status itself, so an error's ``Status`` body would otherwise be read as the object asked for."""
    if not 200 <= response.status <= 299:
        try:
            body = await response.read()
        finally:
            response.release()
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body.decode("utf-8", "replace")
        raise error
    return response


async def _read_json(response: Any) -> Any:
    await _checked(response)
    try:
        return json.loads(await response.read())
    finally:
        response.release()


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
            response = await self._core.patch_namespaced_pod(
                name, namespace, body, _content_type=MERGE_PATCH, _preload_content=False
            )
            pod: dict[str, Any] = await _read_json(response)
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc
        return pod

    async def node_annotation(self, node: str, key: str) -> str | None:
        try:
            response = await self._core.read_node(node, _preload_content=False)
            body = await _read_json(response)
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc
        value = ((body.get("metadata") or {}).get("annotations") or {}).get(key)
        return None if value is None else str(value)

    async def patch_node_annotations(self, node: str, annotations: Mapping[str, str]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            response = await self._core.patch_node(node, body, _content_type=MERGE_PATCH, _preload_content=False)
            await _checked(response)
            response.release()
        except (TimeoutError, ApiException, OSError) as exc:
            raise _error(exc) from exc


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class PodReflector:
    """List+watch of the pods with ``spec.nodeName=<node>`` into a :class:`PodCache`."""

    def __init__(self, api: client.ApiClient, node: str, cache: PodCache) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._selector = f"spec.nodeName={node}"
        self._cache = cache

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
                        log.info("pod_watch_gone_relisting")
                        resource_version = None

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("pod_watch_retry", attempt=state.attempt_number, error=repr(error))

    async def _list(self) -> str:
        body = await _read_json(
            await self._core.list_pod_for_all_namespaces(field_selector=self._selector, _preload_content=False)
        )
        items = body.get("items") or []
        self._cache.replace(items)
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        log.info("pods_listed", count=len(items), resource_version=version)
        return version

    async def _watch(self, resource_version: str) -> str:
        response = await self._core.list_pod_for_all_namespaces(
            field_selector=self._selector,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
            _request_timeout=WATCH_TIMEOUT_S + 30,
        )
        if response.status == 410:
            response.release()
            raise _Gone()
        await _checked(response)
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
        kind = str(event.get("type"))
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
        version = str((obj.get("metadata") or {}).get("resourceVersion", resource_version))
        if kind != "BOOKMARK":
            self._cache.apply(kind, obj)
        return version
