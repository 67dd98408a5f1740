"""The Kubernetes side of the kit (extra ``kube``): the one error type, its mapping, and the client setup.

A service's API adapter (``adapters/kube.py``) subclasses :class:`KubeAdapter`, makes its own calls through
``self._core`` (CoreV1Api, raw JSON with :mod:`hami_shared.kube`'s ``read_json``/``discard``) inside
``with calling():``, and so raises :class:`KubeError`, with the API server's own message, and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from hami_shared.kube import discard


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status when there was one (0 otherwise)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def api_error(exc: BaseException) -> KubeError:
    """Our error from whatever the client raised, keeping the API server's own message."""
    if not isinstance(exc, ApiException):
        return KubeError(f"{type(exc).__name__}: {exc}")
    message = exc.reason or ""
    if exc.body:
        try:
            message = json.loads(exc.body).get("message", message)
        except (ValueError, AttributeError):
            message = str(exc.body)[:300]
    return KubeError(f"HTTP {exc.status}: {message}", status=int(exc.status or 0))


@contextlib.contextmanager
def calling(*also: type[Exception]) -> Iterator[None]:
    """Turn a failed call (the API's answer, a timeout, a connection error, and the exception types in ``also``,
    e.g. a malformed body) into :class:`KubeError`."""
    failures: tuple[type[Exception], ...] = (ApiException, TimeoutError, OSError, *also)
    try:
        yield
    except failures as exc:
        raise api_error(exc) from exc


@contextlib.asynccontextmanager
async def api_client(kubeconfig: pathlib.Path | None) -> AsyncIterator[client.ApiClient]:
    """An ApiClient from ``kubeconfig``, else in-cluster, else the default kubeconfig, closed on exit
    (``await life.resources.enter_async_context(api_client(...))``)."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    api = client.ApiClient(configuration)
    # kubernetes-asyncio opens its aiohttp session with trust_env=True, which makes every request look up
    # ~/.netrc and the proxy environment in a worker thread: two thread hand-offs per API call. The
    # services talk to the API server directly.
    session = getattr(api.rest_client, "pool_manager", None)
    if session is not None and hasattr(session, "_trust_env"):
        session._trust_env = False
    try:
        yield api
    finally:
        await api.close()


EVENT_MESSAGE_MAX = 1024
"""Event messages are cut to 1 KiB, the limit events.k8s.io/v1 sets on a note."""


def pod_event(
    pod: Mapping[str, str], *, component: str, event_type: str, reason: str, message: str, node: str = ""
) -> dict[str, Any]:
    """A core/v1 Event about a pod (``pod``: namespace, name, uid) from ``component``, on ``node`` when given."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event: dict[str, Any] = {
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
        "message": message[:EVENT_MESSAGE_MAX],
        "source": {"component": component, **({"host": node} if node else {})},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
    }
    if node:
        event["reportingInstance"] = node
    return event


class KubeAdapter:
    """Base of a service's API adapter: the CoreV1Api its calls go through."""

    def __init__(self, api: client.ApiClient | None, *, core: Any = None) -> None:
        """``core`` replaces the CoreV1Api built from ``api`` (a test double of the API)."""
        # Any: called with _preload_content=False (raw JSON), which the generated stubs do not model.
        self._core: Any = core if core is not None else client.CoreV1Api(api)

    async def create_event(self, event: Mapping[str, Any]) -> None:
        """Write an Event (from :func:`pod_event`); raises :class:`KubeError`."""
        with calling():
            await discard(
                self._core.create_namespaced_event(event["metadata"]["namespace"], event, _preload_content=False)
            )
