"""/proc scans: which files processes map and which files mount namespaces bind-mount. Meaningful only
when the installer sees the host's processes (``hostPID: true``; :func:`in_initial_pid_namespace`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterable

from hami_lib_installer.core.gc import Usage, parse_maps_inodes, parse_mountinfo_file_roots

# The kernel gives the initial PID namespace this fixed inode number (PROC_PID_INIT_INO).
INITIAL_PID_NAMESPACE = "pid:[4026531836]"


def in_initial_pid_namespace(proc_root: pathlib.Path) -> bool:
    """True when this process runs in the host's PID namespace, so /proc lists every process."""
    try:
        return os.readlink(proc_root / "self" / "ns" / "pid") == INITIAL_PID_NAMESPACE
    except OSError:
        return False


def scan_usage(proc_root: pathlib.Path, inodes: Iterable[int], names: Iterable[str]) -> Usage:
    """Which of ``inodes`` are mapped (and by whom) and which of ``names`` are bind-mounted; unreadable maps
    (permission denied) make the result incomplete, processes that exit meanwhile are skipped."""
    wanted_inodes = set(inodes)
    wanted_names = set(names)
    mapped: dict[int, list[int]] = {}
    mounted: set[str] = set()
    seen_namespaces: set[str] = set()
    complete = True
    processes = 0
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        base = pathlib.Path(entry.path)
        try:
            maps = (base / "maps").read_text(encoding="utf-8", errors="replace")
        except PermissionError:
            complete = False
            continue
        except OSError:  # the process exited
            continue
        processes += 1
        for inode in parse_maps_inodes(maps) & wanted_inodes:
            mapped.setdefault(inode, []).append(pid)
        namespace = f"pid {pid}"
        with contextlib.suppress(OSError):
            namespace = os.readlink(base / "ns" / "mnt")
        if namespace in seen_namespaces:
            continue
        seen_namespaces.add(namespace)
        try:
            mountinfo = (base / "mountinfo").read_text(encoding="utf-8", errors="replace")
        except PermissionError:
            complete = False
            continue
        except OSError:
            continue
        mounted |= parse_mountinfo_file_roots(mountinfo) & wanted_names
    return Usage(
        mapped={inode: tuple(sorted(pids)) for inode, pids in mapped.items()},
        mounted=frozenset(mounted),
        complete=complete,
        processes=processes,
    )
