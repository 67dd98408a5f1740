"""What the extender needs from the Kubernetes API, as a Protocol (adapters/kube.py implements it).

Async methods raise only :class:`hami_shared.service.kube.KubeError` (with the API's message); ``label_pod``
and ``emit_event`` queue a best-effort write and never block or raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from hami_scheduler_extender.core.commit import NO_METADATA, BindingMetadata


class KubePort(Protocol):
    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    async def create_binding(
        self, namespace: str, name: str, uid: str, node: str, metadata: BindingMetadata = NO_METADATA
    ) -> None:
        """Bind the pod, its UID as precondition, with ``metadata`` (see :class:`BindingMetadata`)."""
        ...

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Queue a merge patch of the pod's labels (``pod``: name, namespace, uid; the UID as precondition)."""
        ...

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None: ...
