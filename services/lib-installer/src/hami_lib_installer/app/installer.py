"""One installation pass under the destination lock: read the source, bring the destination to it, collect
old versions. The init container runs it once and the daemon periodically, so repair is the ordinary path.
"""

from __future__ import annotations

import dataclasses
import platform
import posixpath
import sys
import time
from collections.abc import Callable, Mapping

from hami_shared.logging import get_logger

from hami_lib_installer.adapters.fs import Destination, FaultPoint
from hami_lib_installer.adapters.procfs import in_initial_pid_namespace, scan_usage
from hami_lib_installer.adapters.source import read_source
from hami_lib_installer.app.settings import Settings
from hami_lib_installer.core.elf import ElfTarget, elf_problem
from hami_lib_installer.core.errors import DestinationError
from hami_lib_installer.core.gc import KeptVersion, Usage, group_versions, plan_gc
from hami_lib_installer.core.layout import (
    LIBRARIES,
    PRELOAD,
    VULKAN_MANIFEST,
    parse_versioned_name,
    render_preload,
    render_vulkan_manifest,
    versioned_name,
)
from hami_lib_installer.core.plan import (
    DesiredFile,
    EntryKind,
    ExistingEntry,
    desired_layout,
    digest_of,
    plan_install,
)
from hami_lib_installer.core.version import validate_version

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    path: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class InstallReport:
    version: str
    changed: tuple[Change, ...]
    unchanged: tuple[str, ...]
    stale_temps_removed: tuple[str, ...]
    removed_versions: tuple[str, ...]
    kept_versions: tuple[KeptVersion, ...]
    duration_s: float


def _no_fault(_point: str, _path: str | None) -> None:
    return None


def install(
    settings: Settings,
    *,
    fault: FaultPoint = _no_fault,
    target: ElfTarget | None = None,
    clock: Callable[[], float] = time.time,
    quiet: bool = False,
) -> InstallReport:
    """Run one pass; raises :class:`InstallError` (with the reason) when nothing could be done safely. ``quiet``
    (the daemon's later passes) logs passes that changed nothing, and kept versions, at debug level only."""
    started = time.monotonic()
    target = target or ElfTarget.for_platform(platform.machine(), sys.byteorder)
    source = read_source(settings.source, target)
    version = validate_version(settings.lib_version) if settings.lib_version else source.default_version()
    runtime_dir = settings.effective_runtime_dir
    manifest = render_vulkan_manifest(source.manifest_template, runtime_dir)
    preload = render_preload(runtime_dir)
    contents = {versioned_name(name, version): source.libraries[name] for name in LIBRARIES}
    contents[VULKAN_MANIFEST] = manifest
    contents[PRELOAD] = preload
    desired = desired_layout(version, source.digests, digest_of(manifest), digest_of(preload))

    dest = Destination(settings.dest, fault)
    subdirs = (posixpath.dirname(VULKAN_MANIFEST),)
    dest.prepare(subdirs)
    with dest.locked():
        stale = tuple(dest.remove_stale_temps(subdirs))
        for name in stale:
            log.info("interrupted_run_temp_removed", path=name)
        plan = plan_install(desired, dest.scan(d.path for d in desired))
        dest.check_space(plan.bytes_to_write, len(plan.actions))
        fault("after-preflight", None)
        changes: list[Change] = []
        for action in plan.actions:
            want = action.desired
            if isinstance(want, DesiredFile):
                verify = (lambda data: elf_problem(data, target)) if want.library else None
                dest.replace_file(want.path, contents[want.path], want.mode, want.digest, verify)
                log.info(
                    "file_installed",
                    path=want.path,
                    reason=action.reason,
                    sha256=want.digest.sha256,
                    size=want.digest.size,
                    previous_sha256=action.previous,
                )
            else:
                dest.replace_link(want.path, want.target)
                log.info(
                    "stable_name_switched",
                    path=want.path,
                    target=want.target,
                    reason=action.reason,
                    previous_target=action.previous,
                )
            changes.append(Change(want.path, action.reason))
        after = dest.scan(d.path for d in desired)
        leftover = plan_install(desired, after).actions
        if leftover:
            raise DestinationError(
                f"{', '.join(a.path for a in leftover)} changed while the installer ran; another writer is "
                "touching the destination"
            )
        removed: tuple[str, ...] = ()
        kept: tuple[KeptVersion, ...] = ()
        if settings.gc:
            removed, kept = _collect(settings, dest, after, version, fault, clock, quiet)
    report = InstallReport(
        version=version,
        changed=tuple(changes),
        unchanged=plan.unchanged,
        stale_temps_removed=stale,
        removed_versions=removed,
        kept_versions=kept,
        duration_s=time.monotonic() - started,
    )
    summary = log.debug if quiet and not report.changed and not removed and not stale else log.info
    summary(
        "installation_updated" if report.changed else "installation_unchanged",
        version=version,
        dest=str(settings.dest),
        changed=[c.path for c in report.changed],
        unchanged=len(report.unchanged),
        removed_versions=list(removed),
        duration_ms=round(report.duration_s * 1000, 1),
    )
    return report


def _collect(
    settings: Settings,
    dest: Destination,
    entries: Mapping[str, ExistingEntry],
    version: str,
    fault: FaultPoint,
    clock: Callable[[], float],
    quiet: bool,
) -> tuple[tuple[str, ...], tuple[KeptVersion, ...]]:
    installed = group_versions(dest.installed_files())
    protected = {version}
    for name in LIBRARIES:
        entry = entries.get(name)
        if entry is not None and entry.kind is EntryKind.SYMLINK and entry.link_target is not None:
            parsed = parse_versioned_name(entry.link_target)
            if parsed:
                protected.add(parsed[1])
    old = [iv for iv in installed if iv.version not in protected]
    if not old:
        return (), ()
    usage: Usage | None = None
    if settings.process_scan == "on" or (
        settings.process_scan == "auto" and in_initial_pid_namespace(settings.proc_root)
    ):
        files = [f for iv in old for f in iv.files]
        usage = scan_usage(settings.proc_root, (f.inode for f in files), (f.name for f in files))
    switched = [m for m in (dest.link_mtime(name) for name in LIBRARIES) if m is not None]
    switched_age = clock() - max(switched) if switched else float("inf")
    gc_plan = plan_gc(
        installed,
        protected=frozenset(protected),
        usage=usage,
        keep_last=settings.keep_last,
        switched_age=switched_age,
        grace=settings.gc_grace,
    )
    for k in gc_plan.kept:
        if k.version not in protected:
            (log.debug if quiet else log.info)("old_version_kept", version=k.version, reason=k.reason)
    fault("before-gc", None)
    dest.remove(gc_plan.remove)
    reason = (
        "no process maps or mounts it"
        if usage is not None and usage.complete
        else f"not among the newest {settings.keep_last} old versions"
    )
    for v in gc_plan.removed_versions:
        log.info("old_version_removed", version=v, reason=reason)
    return gc_plan.removed_versions, gc_plan.kept
