"""List-then-watch caches of Nodes and Pods feeding the usage cache (one ``hami_shared.kube.Reflector`` each).

Handlers turn raw JSON into core values one object at a time: an object that cannot be read is logged,
counted and left out of capacity, and never stops the list, the watch or the other objects. A list is
digested page by page as it arrives (a pod becomes its UID and hold, a node its inventory: holding a
40,000-pod list as parsed JSON cost hundreds of MiB), then handed to the cache in one call, so a list that
fails half-way changes nothing. Only pods bound through us count (``objects.trusted_allocation``); the
others are logged once per reason and counted in ``hami_extender_pods_ignored_total{reason}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hami_shared.errors import MalformedInputError
from hami_shared.kube import Reflector
from hami_shared.logging import get_logger
from kubernetes_asyncio import client

from hami_scheduler_extender.core import objects
from hami_scheduler_extender.core.model import PodAllocation
from hami_scheduler_extender.core.objects import DEFAULT_TRUST, Ignored, PlacementTrust
from hami_scheduler_extender.core.state import ClusterState

log = get_logger(__name__)

DETAIL_MAX = 300


class IgnoredPods:
    """Pods whose placement counts for nothing: one log line and one count per pod and reason (remembered for
    live pods only: :meth:`forget`, :meth:`keep_only`)."""

    def __init__(self, count: Callable[[str], None] = lambda reason: None) -> None:
        self._count = count
        self._seen: dict[str, set[Ignored]] = {}

    def report(self, *, uid: str, pod: str, reason: Ignored, detail: str) -> None:
        reasons = self._seen.setdefault(uid, set())
        if reason in reasons:
            return
        reasons.add(reason)
        self._count(reason.value)
        log.warning("pod_placement_ignored", pod=pod, uid=uid[:64], reason=reason.value, detail=detail[:DETAIL_MAX])

    def report_allocation(self, allocation: PodAllocation, reason: Ignored, detail: str) -> None:
        """The usage cache's ``on_ignored`` hook."""
        self.report(uid=allocation.uid, pod=f"{allocation.namespace}/{allocation.name}", reason=reason, detail=detail)

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)

    def keep_only(self, uids: Iterable[str]) -> None:
        live = set(uids)
        self._seen = {uid: reasons for uid, reasons in self._seen.items() if uid in live}


def apply_node_list(
    state: ClusterState,
    items: list[Any],
    *,
    count_resource: str,
    on_malformed: Callable[[], None] = lambda: None,
) -> None:
    """A full node list of raw objects: digested, then the node set is replaced at once."""
    digests = [digest_node(item, count_resource=count_resource, on_malformed=on_malformed) for item in items]
    state.replace_nodes(inventory for inventory in digests if inventory is not None)


def apply_node_event(
    state: ClusterState,
    kind: str,
    node: Any,
    *,
    count_resource: str,
    on_malformed: Callable[[], None] = lambda: None,
) -> None:
    """One node watch event."""
    if kind == "DELETED":
        name = objects.node_name(node) if isinstance(node, Mapping) else ""
        if name:
            state.delete_node(name)
        return
    inventory = digest_node(node, count_resource=count_resource, on_malformed=on_malformed)
    if inventory is not None:
        state.upsert_node(inventory)


@dataclasses.dataclass(frozen=True, slots=True)
class PodDigest:
    """What the cache keeps of one listed live pod: its UID and its hold (``None``: it holds nothing)."""

    uid: str
    allocation: PodAllocation | None


def digest_pod(pod: Any, *, trust: PlacementTrust = DEFAULT_TRUST, ignored: IgnoredPods) -> PodDigest | None:
    """One listed pod as a :class:`PodDigest`, or ``None`` for a pod that is not live (terminated, no UID) or not
    an object (reported)."""
    if not isinstance(pod, Mapping):
        ignored.report(uid="", pod="?", reason=Ignored.MALFORMED, detail=f"not an object: {type(pod).__name__}")
        return None
    uid = objects.pod_identity(pod).uid
    if not uid or objects.pod_is_terminal(pod):
        return None
    return PodDigest(uid, _allocation(pod, uid, trust, ignored))


def apply_pod_digests(
    state: ClusterState, digests: Iterable[PodDigest | None], *, ignored: IgnoredPods | None = None
) -> None:
    """A full pod list, digested (after list or re-list): the holds are swapped in at once."""
    ignored = ignored if ignored is not None else IgnoredPods()
    holds: dict[str, PodAllocation] = {}
    live: set[str] = set()
    for digest in digests:
        if digest is None:
            continue
        live.add(digest.uid)
        if digest.allocation is not None:
            holds[digest.uid] = digest.allocation
    state.replace_pods(holds, live)
    ignored.keep_only(live)


def apply_pod_list(
    state: ClusterState,
    items: list[Any],
    *,
    trust: PlacementTrust = DEFAULT_TRUST,
    ignored: IgnoredPods | None = None,
) -> None:
    """A full pod list of raw objects: digested, then the holds are swapped in at once."""
    ignored = ignored if ignored is not None else IgnoredPods()
    apply_pod_digests(state, [digest_pod(pod, trust=trust, ignored=ignored) for pod in items], ignored=ignored)


def apply_pod_event(
    state: ClusterState,
    kind: str,
    pod: Any,
    *,
    trust: PlacementTrust = DEFAULT_TRUST,
    ignored: IgnoredPods | None = None,
) -> None:
    """One pod watch event."""
    ignored = ignored if ignored is not None else IgnoredPods()
    if not isinstance(pod, Mapping):
        ignored.report(uid="", pod="?", reason=Ignored.MALFORMED, detail=f"not an object: {type(pod).__name__}")
        return
    uid = objects.pod_identity(pod).uid
    if not uid:
        return
    if kind == "DELETED" or objects.pod_is_terminal(pod):
        state.delete_pod(uid)
        ignored.forget(uid)
        return
    state.apply_pod(uid, _allocation(pod, uid, trust, ignored))


def node_reflector(
    api: client.ApiClient,
    state: ClusterState,
    *,
    count_resource: str,
    on_restart: Callable[[], None],
    on_malformed: Callable[[], None] = lambda: None,
) -> Reflector:
    return Reflector(
        kind="nodes",
        list_call=_core(api).list_node,
        digest=lambda node: digest_node(node, count_resource=count_resource, on_malformed=on_malformed),
        # A full node list, digested (after list or re-list): the node set is replaced at once.
        on_list=lambda inventories: state.replace_nodes(i for i in inventories if i is not None),
        on_event=lambda kind, node: apply_node_event(
            state, kind, node, count_resource=count_resource, on_malformed=on_malformed
        ),
        on_restart=on_restart,
    )


def pod_reflector(
    api: client.ApiClient,
    state: ClusterState,
    *,
    on_restart: Callable[[], None],
    trust: PlacementTrust = DEFAULT_TRUST,
    ignored: IgnoredPods | None = None,
    on_pod: Callable[[Mapping[str, Any]], None] = lambda pod: None,
) -> Reflector:
    """``on_pod`` also sees every listed pod (as its page is digested, before the list reaches the cache) and every
    pod of an added/modified event (after the cache)."""
    ignored = ignored if ignored is not None else IgnoredPods()

    def digest(pod: Any) -> PodDigest | None:
        digested = digest_pod(pod, trust=trust, ignored=ignored)
        if isinstance(pod, Mapping):
            try:
                on_pod(pod)
            except Exception:
                log.exception("pod_handler_failed", pod=_ref(pod))
        return digested

    def on_event(kind: str, pod: Any) -> None:
        apply_pod_event(state, kind, pod, trust=trust, ignored=ignored)
        if kind != "DELETED" and isinstance(pod, Mapping):
            on_pod(pod)

    return Reflector(
        kind="pods",
        list_call=_core(api).list_pod_for_all_namespaces,
        digest=digest,
        on_list=lambda digests: apply_pod_digests(state, digests, ignored=ignored),
        on_event=on_event,
        on_restart=on_restart,
    )


def digest_node(
    node: Any, *, count_resource: str, on_malformed: Callable[[], None] = lambda: None
) -> objects.NodeInventory | None:
    """The node's inventory, or ``None`` (logged, counted) when the object cannot be read at all."""
    try:
        if not isinstance(node, Mapping):
            raise MalformedInputError("Node", type(node).__name__, "not an object")
        inventory = objects.node_inventory(node, count_resource=count_resource)
        if not inventory.name:
            raise MalformedInputError("Node", "metadata.name", "no name")
    except Exception as exc:
        # Per-object isolation: whatever one object does to a decoder, the others still load.
        on_malformed()
        name = objects.node_name(node) if isinstance(node, Mapping) else "?"
        log.warning("node_unreadable", node=name[:253], error=_clip(exc))
        return None
    if inventory.topology_error:
        log.warning("node_topology_ignored", node=inventory.name[:253], error=inventory.topology_error[:300])
    return inventory


def _allocation(pod: Mapping[str, Any], uid: str, trust: PlacementTrust, ignored: IgnoredPods) -> PodAllocation | None:
    try:
        allocation, reason = objects.trusted_allocation(pod, trust)
    except Exception as exc:
        # MalformedInputError is the decoders' contract; anything else from one pod is isolated the same way.
        ignored.report(uid=uid, pod=_ref(pod), reason=Ignored.MALFORMED, detail=_clip(exc))
        return None
    if reason is not None:
        ignored.report(uid=uid, pod=_ref(pod), reason=reason, detail=_why(reason))
    return allocation


def _why(reason: Ignored) -> str:
    if reason is Ignored.NOT_BOUND_THROUGH_US:
        return (
            "placement annotations on a pod that is not bound to the annotated node by a scheduler this extender "
            "serves; they count nothing"
        )
    return "the pod carries a GPU placement but asks for no GPU resource; it counts nothing"


def _clip(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX] + "..."


def _ref(pod: Mapping[str, Any]) -> str:
    identity = objects.pod_identity(pod)
    return f"{identity.namespace[:63]}/{identity.name[:253]}"


def _core(api: client.ApiClient) -> Any:
    """The generated API typed as Any: we call it with _preload_content=False (raw JSON)."""
    return client.CoreV1Api(api)
