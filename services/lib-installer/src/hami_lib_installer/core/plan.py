"""The install plan: what to write, given what the source holds and what the destination has.

An entry whose content, mode or link target already matches is left alone, so a re-run with the same
source changes nothing; everything else is replaced whole. Actions are ordered for safety: versioned files,
then the stable names pointing at them, then the files naming the stable paths (manifest, preload).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping, Sequence

from hami_lib_installer.core.errors import DestinationError
from hami_lib_installer.core.layout import (
    CORE_LIBRARY,
    LIBRARIES,
    PRELOAD,
    VULKAN_LIBRARY,
    VULKAN_MANIFEST,
    versioned_name,
)

FILE_MODE = 0o644


class EntryKind(enum.Enum):
    FILE = "file"
    SYMLINK = "symlink"
    DIRECTORY = "directory"
    OTHER = "other"


@dataclasses.dataclass(frozen=True, slots=True)
class Digest:
    """Content identity of a file: SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), len(data))


@dataclasses.dataclass(frozen=True, slots=True)
class ExistingEntry:
    """What the destination holds at a path (relative to the destination directory)."""

    path: str
    kind: EntryKind
    digest: Digest | None = None
    mode: int = 0
    link_target: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredFile:
    """A regular file to hold exactly this content; ``library`` files are also ELF-checked."""

    path: str
    digest: Digest
    library: bool
    mode: int = FILE_MODE


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredLink:
    """A relative symlink (a stable name) pointing at a sibling file."""

    path: str
    target: str


Desired = DesiredFile | DesiredLink


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """One atomic replacement of one destination path, with the reason for the log."""

    desired: Desired
    reason: str
    previous: str | None = None

    @property
    def path(self) -> str:
        return self.desired.path


@dataclasses.dataclass(frozen=True, slots=True)
class InstallPlan:
    actions: tuple[Action, ...]
    unchanged: tuple[str, ...]

    @property
    def bytes_to_write(self) -> int:
        return sum(a.desired.digest.size for a in self.actions if isinstance(a.desired, DesiredFile))


def desired_layout(
    version: str, libraries: Mapping[str, Digest], manifest: Digest, preload: Digest
) -> tuple[Desired, ...]:
    """Every destination entry of one installation, in the order they are installed."""
    files: list[Desired] = [
        DesiredFile(versioned_name(name, version), libraries[name], library=True) for name in LIBRARIES
    ]
    links: list[Desired] = [DesiredLink(name, versioned_name(name, version)) for name in (CORE_LIBRARY, VULKAN_LIBRARY)]
    texts: list[Desired] = [
        DesiredFile(VULKAN_MANIFEST, manifest, library=False),
        DesiredFile(PRELOAD, preload, library=False),
    ]
    return (*files, *links, *texts)


def plan_install(desired: Sequence[Desired], existing: Mapping[str, ExistingEntry]) -> InstallPlan:
    """Actions that bring ``existing`` to ``desired``; raises when a path holds something we must not replace."""
    actions: list[Action] = []
    unchanged: list[str] = []
    for want in desired:
        have = existing.get(want.path)
        if have is not None and have.kind in (EntryKind.DIRECTORY, EntryKind.OTHER):
            raise DestinationError(
                f"{want.path} in the destination is a {have.kind.value}, not a file the installer manages; "
                "move it away and run the installer again"
            )
        action = _compare(want, have)
        if action is None:
            unchanged.append(want.path)
        else:
            actions.append(action)
    return InstallPlan(tuple(actions), tuple(unchanged))


def _compare(want: Desired, have: ExistingEntry | None) -> Action | None:
    if have is None:
        return Action(want, "missing")
    if isinstance(want, DesiredLink):
        if have.kind is EntryKind.SYMLINK:
            if have.link_target == want.target:
                return None
            return Action(want, f"points at {have.link_target}", previous=have.link_target)
        return Action(want, "was a regular file, becomes a symlink to the versioned file", previous="regular file")
    if have.kind is EntryKind.SYMLINK:
        return Action(want, f"was a symlink to {have.link_target}", previous=have.link_target)
    if have.digest != want.digest:
        previous = have.digest.sha256 if have.digest else None
        return Action(want, "content differs", previous=previous)
    if have.mode != want.mode:
        return Action(want, f"mode {have.mode:04o}, want {want.mode:04o}")
    return None
