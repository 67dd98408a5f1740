"""List-then-watch of ResourceQuota objects into the quota ledger (``core/quota.py``), all namespaces.

Only the GPU limits of each object are kept (``limits.<memory>``, ``limits.<cores>``; a quota without them
costs nothing). An object that cannot be read (no name, a GPU limit that is not a whole quantity, a
``spec.hard`` that is not an object) is logged, counted in ``hami_extender_quotas_malformed_total`` and
left out, and any limit it had before is dropped with it: kube-apiserver validates these fields, so such
an object comes from a broken or foreign API server and we do not guess at its intent. One object never
stops the list, the watch or the other objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hami_shared.kube import Reflector
from hami_shared.logging import get_logger
from hami_shared.names import ResourceNames
from kubernetes_asyncio import client

from hami_scheduler_extender.core import quota
from hami_scheduler_extender.core.quota import QuotaLedger, QuotaSpec

log = get_logger(__name__)

DETAIL_MAX = 300


def digest_quota(
    obj: Any, *, names: ResourceNames, on_malformed: Callable[[], None] = lambda: None
) -> QuotaSpec | None:
    """The object's GPU limits, or ``None`` (logged, counted) when it cannot be read."""
    try:
        if not isinstance(obj, Mapping):
            raise ValueError(f"not an object: {type(obj).__name__}")
        return quota.read_quota(obj, names)
    except Exception as exc:
        # Per-object isolation: whatever one object does to the reader, the others still load.
        on_malformed()
        namespace, name = _ref(obj)
        text = f"{type(exc).__name__}: {exc}"
        log.warning("resource_quota_unreadable", namespace=namespace, quota=name, error=text[:DETAIL_MAX])
        return None


def apply_quota_event(
    ledger: QuotaLedger,
    kind: str,
    obj: Any,
    *,
    names: ResourceNames,
    on_malformed: Callable[[], None] = lambda: None,
) -> None:
    """One ResourceQuota watch event."""
    namespace, name = _ref(obj)
    if kind == "DELETED":
        if namespace and name:
            ledger.delete(namespace, name)
        return
    spec = digest_quota(obj, names=names, on_malformed=on_malformed)
    if spec is not None:
        ledger.upsert(spec)
    elif namespace and name:
        ledger.delete(namespace, name)


def quota_reflector(
    api: client.ApiClient,
    ledger: QuotaLedger,
    *,
    names: ResourceNames,
    on_restart: Callable[[], None],
    on_malformed: Callable[[], None] = lambda: None,
) -> Reflector:
    return Reflector(
        kind="resourcequotas",
        list_call=client.CoreV1Api(api).list_resource_quota_for_all_namespaces,
        digest=lambda obj: digest_quota(obj, names=names, on_malformed=on_malformed),
        # A full list, digested (after list or re-list): the quotas are replaced at once.
        on_list=lambda specs: ledger.replace(s for s in specs if s is not None),
        on_event=lambda kind, obj: apply_quota_event(ledger, kind, obj, names=names, on_malformed=on_malformed),
        on_restart=on_restart,
    )


def _ref(obj: Any) -> tuple[str, str]:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        return "", ""
    namespace, name = metadata.get("namespace"), metadata.get("name")
    return (
        namespace[:63] if isinstance(namespace, str) else "",
        name[:253] if isinstance(name, str) else "",
    )
