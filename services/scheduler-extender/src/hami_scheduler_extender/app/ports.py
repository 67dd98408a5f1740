"""What the extender needs from the Kubernetes API, as a Protocol (adapters/kube.py implements it).

Contracts: every async method raises :class:`KubeError` (with the API's message) on failure and
nothing else; ``label_pod`` and ``emit_event`` queue a write, never block and never raise (best
effort: a failure is logged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status when there was one (0 otherwise)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BindingMetadata:
    """What a Binding writes onto the pod in the same update as ``spec.nodeName``: the annotations
    always; the labels only where kube-apiserver's PodTopologyLabelsAdmission gate is on."""

    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


NO_METADATA = BindingMetadata()


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
