"""List-then-watch caches of Nodes and Pods feeding the usage cache.

One :class:`hami_shared.kube.Reflector` per resource (list, watch, re-list on 410, backoff with
jitter). The handlers here turn raw JSON into core values; a malformed object is logged and
skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hami_shared.errors import MalformedInputError
from hami_shared.kube import Reflector
from hami_shared.logging import get_logger
from kubernetes_asyncio import client

from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import PodAllocation
from hami_scheduler_extender.core.state import ClusterState

log = get_logger(__name__)

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
