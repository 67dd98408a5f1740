"""Test hook: stop, kill or fail the installer at a named point, to prove crash safety (tests only).

``HAMI_LIB_INSTALLER_TEST_HOOK`` is a comma-separated list of ``POINT[@PATH]=ACTION``: POINT one of
:data:`POINTS` (``mid-write``: half the bytes written; ``after-verify``: just before the rename;
``after-rename``: before the directory fsync; ``mid-gc``: one old file removed); PATH a destination path
(``libvgpu.so``, ``vulkan/implicit_layer.d/hami.json``), else every time; ACTION ``stop`` (SIGSTOP itself),
``kill`` (SIGKILL itself) or ``raise`` (:class:`InjectedFault`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Mapping
from typing import Final

TEST_HOOK_ENV: Final = "HAMI_LIB_INSTALLER_TEST_HOOK"
POINTS: Final = frozenset(
    {
        "after-preflight",
        "before-write",
        "mid-write",
        "after-write",
        "after-fsync",
        "after-verify",
        "after-rename",
        "before-gc",
        "mid-gc",
    }
)
ACTIONS: Final = frozenset({"stop", "kill", "raise"})


class InjectedFault(RuntimeError):
    """Raised by the ``raise`` action."""


@dataclasses.dataclass(frozen=True, slots=True)
class FaultHook:
    """Rules parsed from the test hook variable; an empty hook does nothing."""

    rules: tuple[tuple[str, str | None, str], ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultHook:
        text = (os.environ if environ is None else environ).get(TEST_HOOK_ENV, "").strip()
        if not text:
            return cls()
        rules: list[tuple[str, str | None, str]] = []
        for item in text.split(","):
            where, sep, action = item.strip().partition("=")
            point, _, path = where.partition("@")
            if not sep or point not in POINTS or action not in ACTIONS:
                raise ValueError(
                    f"{TEST_HOOK_ENV}: {item!r} is not POINT[@PATH]=ACTION with POINT in "
                    f"{', '.join(sorted(POINTS))} and ACTION in {', '.join(sorted(ACTIONS))}"
                )
            rules.append((point, path or None, action))
        return cls(tuple(rules))

    def __call__(self, point: str, path: str | None = None) -> None:
        for rule_point, rule_path, action in self.rules:
            if rule_point != point or rule_path not in (None, path):
                continue
            if action == "raise":
                raise InjectedFault(f"test hook: injected fault at {point} {path or ''}".rstrip())
            os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
