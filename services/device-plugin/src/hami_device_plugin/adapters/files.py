"""Host filesystem: per-container directories under ``<hook>/containers`` and their accounting files.

Directories are created world-writable (0777, like HAMi's) because the workload may run as any user and
hamicore creates the accounting file inside. The monitor reads each region with ``pread`` (no mapping
held between scans) and writes its signals with 4-byte ``pwrite``s at the fields' fixed offsets; aligned
4-byte writes to a shared file mapping are single stores, so the limiter sees old or new values, never a mix.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from pathlib import Path
from typing import Final

from hami_device_plugin.core import region
from hami_device_plugin.core.allocation import CONTAINERS_DIR

_U32: Final = struct.Struct("<I")


@dataclasses.dataclass(frozen=True, slots=True)
class RegionFile:
    container_dir: str
    path: Path
    mtime: float


def containers_root(hook_dir: Path) -> Path:
    return hook_dir / CONTAINERS_DIR


def prepare_container_dir(path: Path) -> None:
    """Create the per-container directory (idempotent), mode 0777 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)


def container_dirs(hook_dir: Path) -> dict[str, float]:
    """Name -> mtime of every directory under ``<hook>/containers``."""
    root = containers_root(hook_dir)
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


def region_files(hook_dir: Path) -> list[RegionFile]:
    """Every ``*.cache`` file directly inside a container directory."""
    out = []
    root = containers_root(hook_dir)
    for name in sorted(container_dirs(hook_dir)):
        try:
            for entry in os.scandir(root / name):
                if entry.name.endswith(".cache") and entry.is_file(follow_symlinks=False):
                    out.append(RegionFile(name, Path(entry.path), entry.stat().st_mtime))
        except FileNotFoundError:
            continue
    return out


def read_region(path: Path) -> region.RegionSnapshot:
    """Read and parse one region (raises OSError or RegionFormatError)."""
    with path.open("rb") as f:
        data = f.read()
    return region.parse_region(data)


def write_u32(path: Path, offset: int, value: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, _U32.pack(value), offset)
    finally:
        os.close(fd)


def remove_container_dir(hook_dir: Path, name: str) -> None:
    target = containers_root(hook_dir) / name
    if target.parent != containers_root(hook_dir) or name in ("", ".", ".."):
        raise ValueError(f"refusing to remove {target}: not a container directory")
    shutil.rmtree(target, ignore_errors=True)
