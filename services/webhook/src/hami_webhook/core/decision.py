"""The outcome of reviewing one pod: allowed (maybe with a patch) or denied with a message.

Core functions return these and never raise for bad pods. ``reason`` is a short word for logs; ``message``
(denials) is shown to the user by kubectl and must say what to change.
"""

from __future__ import annotations

import dataclasses
import enum

from hami_webhook.core.patch import PatchOperation


class Outcome(enum.StrEnum):
    """The label values of the decisions metric."""

    PATCHED = "patched"
    ALLOWED = "allowed"
    DENIED = "denied"
    ERROR = "error"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Allowed:
    """Let the pod through, after applying ``patch`` (possibly empty)."""

    reason: str
    patch: tuple[PatchOperation, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def outcome(self) -> Outcome:
        return Outcome.PATCHED if self.patch else Outcome.ALLOWED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Denied:
    """Refuse the pod; ``message`` tells the user what to change. ``code`` (metav1.Status): 403 for a
    well-formed pod that cannot work with GPU sharing, 400 for a value that is not valid at all."""

    reason: str
    message: str
    code: int = 403

    @property
    def outcome(self) -> Outcome:
        return Outcome.DENIED


Decision = Allowed | Denied
