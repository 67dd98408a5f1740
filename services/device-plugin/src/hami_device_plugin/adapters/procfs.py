"""The host's ``/proc`` as :class:`~hami_device_plugin.core.hostpid.ProcSource`.

The monitor must run in the host PID namespace (the DaemonSet's ``hostPID: true``): its ``/proc`` then lists
every process of the node, and ``/proc/<pid>/status`` (``NSpid:``) and ``/proc/<pid>/stat`` are readable
for all of them without ptrace rights. ``root`` is a parameter so tests can point it at a tree of files.
"""

from __future__ import annotations

import os
from pathlib import Path

from hami_device_plugin.core.hostpid import ProcIdentity, parse_ns_pid, parse_start_time


def _read(path: str, dir_fd: int | None = None) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # gone, or not ours to read
        return None
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcFs:
    def __init__(self, root: Path = Path("/proc")) -> None:
        self._root = str(root)

    def identity(self, host_pid: int) -> ProcIdentity | None:
        """Both files through one ``/proc/<pid>`` directory descriptor: they describe the same process even
        if the pid is reused meanwhile (reads through a descriptor of a dead process fail)."""
        try:
            dir_fd = os.open(f"{self._root}/{host_pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat, status = _read("stat", dir_fd), _read("status", dir_fd)
        finally:
            os.close(dir_fd)
        start = parse_start_time(stat) if stat is not None else None
        ns_pid = parse_ns_pid(status) if status is not None else None
        return ProcIdentity(host_pid, ns_pid, start) if start is not None and ns_pid is not None else None

    def index(self, start_times: frozenset[int]) -> list[ProcIdentity]:
        try:
            names = [entry.name for entry in os.scandir(self._root) if entry.name.isdigit()]
        except OSError:
            return []
        out = []
        for name in names:
            stat = _read(f"{self._root}/{name}/stat")  # the cheap filter: one read per process
            if stat is None or parse_start_time(stat) not in start_times:
                continue
            ident = self.identity(int(name))
            if ident is not None and ident.start_time in start_times:
                out.append(ident)
        return out

    def cgroup(self, host_pid: int) -> str:
        return _read(f"{self._root}/{host_pid}/cgroup") or ""
