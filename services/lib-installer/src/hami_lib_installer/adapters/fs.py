"""The destination filesystem: atomic replacement of files and symlinks, checks, scans and removal.

Every change is one ``rename(2)`` of a complete, fsynced and verified temporary sibling, then an fsync of
the directory: readers see the old file or the new one, never a partial one, and a holder of the old inode
keeps it intact. A killed installer leaves at most a temporary file, which the next run removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pathlib
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator

from hami_lib_installer.core.errors import DestinationError
from hami_lib_installer.core.gc import InstalledFile
from hami_lib_installer.core.layout import LOCK_FILE, is_temp_name, parse_versioned_name, temp_name
from hami_lib_installer.core.plan import Digest, EntryKind, ExistingEntry, digest_of

FaultPoint = Callable[[str, str | None], None]
_CHUNK = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_INTACT = "the previous installation is unchanged"


class Destination:
    """The installation directory on the host (usually a hostPath mount)."""

    def __init__(self, root: pathlib.Path, fault: FaultPoint) -> None:
        self.root = root
        self._fault = fault

    # --- preflight -----------------------------------------------------------------------
    def prepare(self, subdirs: Iterable[str]) -> None:
        """Create the directory tree; refuse a read-only filesystem with a message."""
        self._refuse_read_only(self.root)
        for rel in ("", *subdirs):
            path = self.root / rel
            try:
                if path.exists() and not path.is_dir():
                    raise DestinationError(f"{path} exists and is not a directory; move it away")
                if not path.is_dir():
                    path.mkdir(mode=0o755, parents=True, exist_ok=True)
                    _fsync_dir(path.parent)
            except OSError as exc:
                raise self._os_error(exc, f"cannot create directory {path}") from exc

    def _refuse_read_only(self, path: pathlib.Path) -> None:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            flags = os.statvfs(probe).f_flag
        except OSError as exc:
            raise DestinationError(f"cannot inspect the destination filesystem at {probe}: {exc.strerror}") from exc
        if flags & os.ST_RDONLY:
            raise DestinationError(
                f"destination {self.root} is on a read-only filesystem; mount it read-write "
                f"(for a hostPath volume: readOnly: false); {_INTACT}"
            )

    def check_space(self, bytes_needed: int, files_needed: int) -> None:
        """Refuse before writing when the filesystem cannot take the new files."""
        if files_needed == 0:
            return
        st = os.statvfs(self.root)
        block = st.f_frsize or st.f_bsize
        # Each file may round up to a whole block, and directories may need one more.
        needed = bytes_needed + (files_needed + 1) * block
        available = st.f_bavail * block
        if needed > available:
            raise DestinationError(
                f"destination {self.root} has {available} bytes free, the installation needs {needed}; "
                f"free space on that filesystem and run again; {_INTACT}"
            )
        if st.f_files and st.f_favail < files_needed + 1:
            raise DestinationError(
                f"destination {self.root} has {st.f_favail} free inodes, the installation needs {files_needed + 1}; "
                f"{_INTACT}"
            )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise installer runs on this destination (an init container and a daemon, a rolling update)."""
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise self._os_error(exc, f"cannot open the lock file {path}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- scans -----------------------------------------------------------------------------
    def remove_stale_temps(self, subdirs: Iterable[str]) -> list[str]:
        """Remove temporary files left by a killed run (call with the lock held)."""
        removed: list[str] = []
        for rel in ("", *subdirs):
            directory = self.root / rel
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(directory):
                    if is_temp_name(entry.name) and not entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                        removed.append(os.path.join(rel, entry.name) if rel else entry.name)
                if removed:
                    _fsync_dir(directory)
        return removed

    def scan(self, paths: Iterable[str]) -> dict[str, ExistingEntry]:
        """What the destination holds at each path (hashing regular files)."""
        found: dict[str, ExistingEntry] = {}
        for rel in paths:
            path = self.root / rel
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ExistingEntry(rel, EntryKind.SYMLINK, link_target=os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ExistingEntry(
                    rel, EntryKind.FILE, digest=_digest_file(path), mode=stat.S_IMODE(st.st_mode)
                )
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ExistingEntry(rel, EntryKind.DIRECTORY)
            else:
                found[rel] = ExistingEntry(rel, EntryKind.OTHER)
        return found

    def installed_files(self) -> list[InstalledFile]:
        """The versioned library files in the destination (candidates for collection)."""
        files: list[InstalledFile] = []
        for entry in os.scandir(self.root):
            if parse_versioned_name(entry.name) is None or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            files.append(InstalledFile(entry.name, st.st_ino, st.st_mtime))
        return files

    def link_mtime(self, name: str) -> float | None:
        try:
            return os.lstat(self.root / name).st_mtime
        except FileNotFoundError:
            return None

    # --- changes ---------------------------------------------------------------------------
    def replace_file(
        self, rel: str, data: bytes, mode: int, digest: Digest, verify: Callable[[bytes], str | None] | None
    ) -> None:
        """Write ``data`` to a temporary sibling, fsync, verify, rename over ``rel``, fsync the directory."""
        final = self.root / rel
        tmp = final.with_name(temp_name(rel, f"{os.getpid()}.{secrets.token_hex(4)}"))
        self._fault("before-write", rel)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        except OSError as exc:
            raise self._os_error(exc, f"cannot create a temporary file for {rel}") from exc
        try:
            try:
                half = len(data) // 2
                _write_all(fd, data[:half])
                self._fault("mid-write", rel)
                _write_all(fd, data[half:])
                os.fchmod(fd, mode)
                self._fault("after-write", rel)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fault("after-fsync", rel)
            written = tmp.read_bytes()
            if digest_of(written) != digest:
                raise DestinationError(
                    f"{rel}: the written file does not read back as written (sha256 or size differs); "
                    f"check the destination disk; {_INTACT}"
                )
            if verify is not None:
                problem = verify(written)
                if problem:
                    raise DestinationError(f"{rel}: the written file is not a valid library: {problem}; {_INTACT}")
            self._fault("after-verify", rel)
            os.rename(tmp, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise self._os_error(exc, f"cannot write {rel}") from exc
            raise
        self._fault("after-rename", rel)
        _fsync_dir(final.parent)

    def replace_link(self, rel: str, target: str) -> None:
        """Point the symlink ``rel`` at ``target`` (a sibling name) by renaming a new symlink over it."""
        final = self.root / rel
        tmp = final.with_name(temp_name(rel, f"{os.getpid()}.{secrets.token_hex(4)}"))
        self._fault("before-write", rel)
        try:
            os.symlink(target, tmp)
            self._fault("after-write", rel)
            self._fault("after-fsync", rel)
            resolved = tmp.resolve(strict=True)
            if not resolved.is_file():
                raise DestinationError(f"{rel}: the target {target} is not a regular file; {_INTACT}")
            self._fault("after-verify", rel)
            os.rename(tmp, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, FileNotFoundError):
                raise DestinationError(f"{rel}: the target {target} does not exist; {_INTACT}") from exc
            if isinstance(exc, OSError):
                raise self._os_error(exc, f"cannot replace {rel}") from exc
            raise
        self._fault("after-rename", rel)
        _fsync_dir(final.parent)

    def remove(self, names: Iterable[str]) -> list[str]:
        """Unlink versioned files collected by GC; returns those actually removed."""
        removed: list[str] = []
        for name in names:
            try:
                os.unlink(self.root / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._os_error(exc, f"cannot remove old file {name}") from exc
            removed.append(name)
            self._fault("mid-gc", name)
        if removed:
            _fsync_dir(self.root)
        return removed

    def _os_error(self, exc: OSError, what: str) -> DestinationError:
        if exc.errno in _NO_SPACE:
            return DestinationError(
                f"{what}: the destination filesystem at {self.root} is full; free space on it and run again; {_INTACT}"
            )
        if exc.errno == errno.EROFS:
            return DestinationError(
                f"{what}: destination {self.root} is on a read-only filesystem; mount it read-write; {_INTACT}"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return DestinationError(f"{what}: permission denied; run the installer as root; {_INTACT}")
        return DestinationError(f"{what}: {exc.strerror or exc}; {_INTACT}")


def _digest_file(path: pathlib.Path) -> Digest:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Digest(h.hexdigest(), size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
