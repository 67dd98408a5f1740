"""What the extender needs from the Kubernetes API, as a Protocol (adapters/kube.py implements it).

Contracts: every method raises :class:`KubeError` (with the API's message) on failure and
nothing else; ``emit_event`` never blocks and never raises (events are best effort).
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

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...

    async def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None: ...

    def emit_event(self, *, pod: Mapping[str, str], event_type: str, reason: str, message: str) -> None: ...
