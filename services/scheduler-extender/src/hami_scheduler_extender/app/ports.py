"""What the extender needs from the Kubernetes API, as a Protocol (adapters/kube.py implements it).

Contracts: every async method raises :class:`KubeError` (with the API's message) on failure and
nothing else; ``label_pod`` and ``emit_event`` queue a write, never block and never raise (best
effort: a failure is logged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status when there was one (0 otherwise)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubePort(Protocol):
    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    async def create_binding(
        self,
        namespace: str,
        name: str,
        uid: str,
        node: str,
        *,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Bind the pod (its UID as precondition). kube-apiserver writes ``annotations`` onto the pod in the
        same update as ``spec.nodeName``; ``labels`` only where its PodTopologyLabelsAdmission gate is on."""
        ...

    def label_pod(self, *, pod: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Queue a merge patch of the pod's labels (``pod``: name, namespace, uid; the UID as precondition)."""
        ...

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None: ...
