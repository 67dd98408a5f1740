"""Polling waits with generous deadlines: e2e tests run on a loaded 2-core machine, so they wait for states,
never for fixed times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kubernetes_asyncio import client as k8s

T = TypeVar("T")


async def wait_for(
    check: Callable[[], Awaitable[T | None]], *, what: str, within: float = 60.0, interval: float = 0.2
) -> T:
    """Call ``check`` until it returns something other than None (or False); return that."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def read_pod(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod as a plain dict (camelCase, as on the wire), or None if it does not exist."""
    try:
        pod = await k8s.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except k8s.ApiException as e:
        if e.status == 404:
            return None
        raise
    result: dict[str, Any] = api.sanitize_for_serialization(pod)
    return result


async def wait_for_pod(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    what: str,
    within: float = 90.0,
) -> dict[str, Any]:
    last: dict[str, Any] | None = None

    async def check() -> dict[str, Any] | None:
        nonlocal last
        last = await read_pod(api, namespace, name)
        return last if last is not None and predicate(last) else None

    try:
        return await wait_for(check, what=f"pod {namespace}/{name}: {what}", within=within)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last seen status: {(last or {}).get('status')}") from None


async def node_allocatable(api: k8s.ApiClient, node: str, resource: str) -> str | None:
    obj = await k8s.CoreV1Api(api).read_node(node)
    return (obj.status.allocatable or {}).get(resource)
