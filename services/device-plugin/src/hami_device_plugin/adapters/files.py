"""Host filesystem: the per-container directories in the regions directory (``--regions-path``, by default
``<hook>/containers``) and their accounting files.

Directories are created world-writable (0777, like HAMi's) because the workload may run as any user and
hamicore creates the accounting file inside. The monitor opens each region once per scan, reads it with
one ``pread`` and writes its fields with 4-byte ``pwrite``s at their fixed offsets.

It deliberately never maps a region: the file is the container's, and a container that truncated it under
a mapping would kill the node's plugin with SIGBUS at the next access; ``pread``/``pwrite`` just see a short
file. The price: the kernel copies a ``pwrite`` into the page that hamicore maps with its user-copy routine,
which for 4 bytes may store them one at a time, so a process reading the field in the same nanoseconds
could see a mix of old and new bytes. The fields are flags (only one byte changes), the heartbeat (any
change counts) and ``host_pid`` (written once per process while it is 0; hamicore reads it once per
100 ms control step, and a mixed value at worst mis-measures that one step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
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

    Written to a temporary file in the same directory and linked into place, so a process of the container
    never sees a partly written region, and a region that exists (the container's processes already use it,
    or kubelet asked again) is never replaced."""
    fd, temp = tempfile.mkstemp(prefix=".region-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
            os.fchmod(out.fileno(), 0o666)  # every user of the container shares it, whatever the umask
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
    return True


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
    """Every ``*.cache`` file directly inside a container directory (plain strings: this runs every scan)."""
    out: list[RegionFile] = []
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return out
    for name in names:
        try:
            for entry in os.scandir(f"{root}/{name}"):
                if entry.name.endswith(".cache") and entry.is_file(follow_symlinks=False):
                    out.append(RegionFile(name, entry.path))
        except FileNotFoundError:
            continue
    return out


class RegionHandle:
    """One region file, open for a scan: read it whole, write fields, close."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)

    def read(self, buffer: bytearray) -> region.RegionSnapshot:
        """Parse the file (raises OSError or RegionFormatError); ``buffer`` is scratch space, grown as needed."""
        size = os.fstat(self._fd).st_size
        if len(buffer) < size:
            buffer.extend(bytes(size - len(buffer)))
        with memoryview(buffer) as view:
            n = os.preadv(self._fd, [view[:size]], 0)
            return region.parse_region(view[:n])

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


def publish_spec(path: Path, image: bytes) -> None:
    """Write the container's spec ``path`` (mode 0444) atomically, replacing an older one.

    It lies next to the container's directory, never inside it (the container can write that directory), and
    reaches the container only through a read-only bind mount; a container running with an older spec keeps the
    file it was started with (the mount holds the inode)."""
    fd, temp = tempfile.mkstemp(prefix=".spec-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
            os.fchmod(out.fileno(), 0o444)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
