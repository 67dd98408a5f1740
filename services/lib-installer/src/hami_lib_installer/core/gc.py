"""Garbage collection of old versions: which versioned files may go, and why the others stay.

A version stays while a process maps one of its files (by inode, ``/proc/<pid>/maps``) or a mount namespace
bind-mounts one (``mountinfo``); when that cannot be known completely, the newest ``keep_last`` old versions
stay too. Nothing goes within ``grace`` seconds of the stable names switching: a device plugin or runtime may
have resolved the old target moments before and not yet opened or mounted it.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence

from hami_lib_installer.core.layout import parse_versioned_name

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_DELETED_SUFFIXES = ("//deleted", " (deleted)")


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledFile:
    name: str
    inode: int
    mtime: float


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledVersion:
    version: str
    files: tuple[InstalledFile, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Which installed files are in use, as far as /proc shows (``complete`` False: some process could not be
    inspected, so an absence from ``mapped`` proves nothing)."""

    mapped: Mapping[int, tuple[int, ...]]
    """inode -> pids mapping a file with that inode"""
    mounted: frozenset[str]
    """base names of files bind-mounted in some mount namespace"""
    complete: bool
    processes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class KeptVersion:
    version: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class GcPlan:
    remove: tuple[str, ...]
    """file names to unlink"""
    removed_versions: tuple[str, ...]
    kept: tuple[KeptVersion, ...]


def group_versions(files: Iterable[InstalledFile]) -> tuple[InstalledVersion, ...]:
    """Group versioned files by version; files with other names are ignored."""
    by_version: dict[str, list[InstalledFile]] = {}
    for f in files:
        parsed = parse_versioned_name(f.name)
        if parsed is not None:
            by_version.setdefault(parsed[1], []).append(f)
    return tuple(InstalledVersion(v, tuple(sorted(fs, key=lambda f: f.name))) for v, fs in sorted(by_version.items()))


def plan_gc(
    installed: Sequence[InstalledVersion],
    *,
    protected: frozenset[str],
    usage: Usage | None,
    keep_last: int,
    switched_age: float,
    grace: float,
) -> GcPlan:
    """Decide which old versions to remove. ``protected``: versions a stable name points at; ``usage`` None:
    /proc not consulted; ``switched_age``: seconds since the stable names last changed."""
    if keep_last < 0:
        raise ValueError("keep_last must be >= 0")
    kept: list[KeptVersion] = []
    candidates: list[InstalledVersion] = []
    for iv in installed:
        if iv.version in protected:
            kept.append(KeptVersion(iv.version, "current"))
            continue
        in_use = _in_use_reason(iv, usage)
        if in_use:
            kept.append(KeptVersion(iv.version, in_use))
        else:
            candidates.append(iv)
    if candidates and switched_age < grace:
        kept.extend(
            KeptVersion(iv.version, f"stable names switched {switched_age:.0f}s ago (grace period {grace:.0f}s)")
            for iv in candidates
        )
        candidates = []
    if usage is None or not usage.complete:
        why = "process maps not visible" if usage is None else "some process maps unreadable"
        newest_first = sorted(candidates, key=lambda iv: (max(f.mtime for f in iv.files), iv.version), reverse=True)
        kept.extend(KeptVersion(iv.version, f"keep-last {keep_last} ({why})") for iv in newest_first[:keep_last])
        candidates = newest_first[keep_last:]
    candidates.sort(key=lambda iv: iv.version)
    return GcPlan(
        remove=tuple(f.name for iv in candidates for f in iv.files),
        removed_versions=tuple(iv.version for iv in candidates),
        kept=tuple(sorted(kept, key=lambda k: k.version)),
    )


def _in_use_reason(iv: InstalledVersion, usage: Usage | None) -> str | None:
    if usage is None:
        return None
    for f in iv.files:
        pids = usage.mapped.get(f.inode)
        if pids:
            shown = ", ".join(str(p) for p in pids[:5]) + (" ..." if len(pids) > 5 else "")
            return f"{f.name} mapped by pid {shown}"
        if f.name in usage.mounted:
            return f"{f.name} bind-mounted in a mount namespace"
    return None


def parse_maps_inodes(text: str) -> set[int]:
    """Inodes of the files mapped in one ``/proc/<pid>/maps`` text. Devices are not compared: on btrfs and
    overlayfs they differ from ``stat``'s, and a false match only keeps a file longer."""
    inodes: set[int] = set()
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        try:
            inode = int(fields[4])
        except ValueError:
            continue
        if inode:
            inodes.add(inode)
    return inodes


def parse_mountinfo_file_roots(text: str) -> set[str]:
    """Base names of the mount roots in one ``/proc/<pid>/mountinfo`` text (a single-file bind mount, such as a
    container's ``libvgpu.so.<version>``, has that file's path as its root)."""
    names: set[str] = set()
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        root = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[3])
        for suffix in _DELETED_SUFFIXES:
            root = root.removesuffix(suffix)
        base = posixpath.basename(root)
        if base:
            names.add(base)
    return names
