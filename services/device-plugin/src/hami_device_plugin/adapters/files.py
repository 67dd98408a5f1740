"""Host filesystem: the per-container directories in the regions directory (``--regions-path``, by default
``<hook>/containers``) and their accounting files.

Directories are created world-writable (0777, like HAMi's) because the workload may run as any user and
hamicore creates the accounting file inside.

A region is read only when it is a regular file of exactly the layout's size (``fstat`` on the open handle,
opened with ``O_NOFOLLOW | O_NONBLOCK``, so neither a symlink nor a FIFO put in its place is followed or blocks
the scan), and only the file the plugin named, ``<dir>/<dir>.cache``: the container owns its directory.

It deliberately never maps a region: a container that truncated it under a mapping would kill the node's plugin
with SIGBUS; ``pread``/``pwrite`` just see a short file. The price: a 4-byte ``pwrite`` may reach hamicore's
mapping one byte at a time, which is harmless for these fields (flags, the heartbeat where any change counts, and
``host_pid``, written once while 0 and read once per 100 ms control step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path
from typing import Final

from hami_device_plugin.core import region

_U32: Final = struct.Struct("<I")


@dataclasses.dataclass(frozen=True, slots=True)
class RegionFile:
    container_dir: str
    path: str


def prepare_container_dir(path: Path) -> None:
    """Create the per-container directory (idempotent), mode 0777 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)


def publish_region(path: Path, image: bytes) -> bool:
    """Create the region file ``path`` with ``image`` unless it exists; True when this call created it.

    Linked into place complete, so a process of the container never sees a partly written region, and a region
    that exists (the container's processes already use it, or kubelet asked again) is never replaced."""
    return publish_file(path, image, 0o666, replace=False)  # every user of the container shares it


def container_dirs(root: Path) -> dict[str, float]:
    """Name -> mtime of every directory in the regions directory ``root``."""
    out: dict[str, float] = {}
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                out[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
    return out


def region_files(root: Path) -> list[RegionFile]:
    """The region file ``<dir>/<dir>.cache`` of every container directory (plain strings: this runs every scan).

    Named, not searched for: a container can put any number of files into its own directory."""
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(root)
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
        )
    except FileNotFoundError:
        return []
    return [RegionFile(name, f"{root}/{name}/{name}.cache") for name in names]


class RegionRefusedError(OSError):
    """A region file the monitor will not read: not a regular file, or not the layout's size."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegionHandle:
    """One region file, open for a scan: read its fixed size, write fields, close."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)

    def read(self, buffer: bytearray) -> region.RegionSnapshot:
        """Parse the file (raises OSError, RegionRefusedError or RegionFormatError); ``buffer`` is scratch space
        of the region's size."""
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            raise RegionRefusedError("not_regular", "not a regular file")
        if st.st_size != region.REGION_SIZE:
            raise RegionRefusedError(
                "size", f"file has {st.st_size} bytes; a region has exactly {region.REGION_SIZE}: not read"
            )
        if len(buffer) != region.REGION_SIZE:
            buffer[:] = bytes(region.REGION_SIZE)
        with memoryview(buffer) as view:
            n = os.preadv(self._fd, [view], 0)
            if n != region.REGION_SIZE:  # truncated between fstat and the read
                raise RegionRefusedError("size", f"read {n} bytes of {region.REGION_SIZE}: the file shrank")
            try:
                return region.parse_region(view)
            except region.RegionFormatError:
                raise
            except (ValueError, struct.error, IndexError, OverflowError, TypeError) as exc:
                raise region.RegionFormatError(f"unreadable region: {exc}") from exc

    def write_u32(self, offset: int, value: int) -> None:
        os.pwrite(self._fd, _U32.pack(value), offset)

    def close(self) -> None:
        os.close(self._fd)


def remove_container_dir(root: Path, name: str) -> None:
    target = root / name
    if target.parent != root or name in ("", ".", ".."):
        raise ValueError(f"refusing to remove {target}: not a container directory")
    shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / f"{name}.spec")  # its spec (publish_spec), next to it


def publish_spec(path: Path, image: bytes, *, replace: bool = True) -> None:
    """Write the container's spec ``path`` (mode 0444) atomically, replacing an older one (``replace=False``: an
    existing one is kept, as for a container served again).

    It lies next to the container's directory, never inside it (the container can write that directory), and
    reaches the container only through a read-only bind mount; a container running with an older spec keeps the
    file it was started with (the mount holds the inode)."""
    publish_file(path, image, 0o444, replace=replace)


def publish_file(path: Path, image: bytes, mode: int, *, replace: bool) -> bool:
    """Write ``image`` to a temporary file next to ``path`` (``mode`` whatever the umask), then move it into place
    (``replace``) or link it there unless ``path`` exists; True when ``path`` is now this image."""
    fd, temp = tempfile.mkstemp(prefix=".publish-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
            os.fchmod(out.fileno(), mode)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return True
