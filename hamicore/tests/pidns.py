"""Test "containers" in their own PID namespace, as a container runtime makes them: the command is pid 1 of a
new PID namespace with its own /proc, so hamicore's region records pids (and reads start times) as the
container sees them, while NVML names processes by host pid.

The fake driver (a test double of a driver that lives in the kernel and knows host pids) learns its host pid
from the host's /proc, bind-mounted at ``host_proc`` inside the container's mount namespace before /proc is
replaced (``FAKE_GPU_HOST_PROC``; give it to the command's environment). Needs ``unshare`` (util-linux) and
root, or unprivileged user namespaces. Standalone (stdlib only), so the device plugin's tests use it too.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

_ENTER = 'mount --bind /proc "$0" && mount -t proc proc /proc && exec "$@"'


def _prefix() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"]


def unavailable(scratch: Path) -> str | None:
    """Why PID namespaces cannot be made here, or None when they can."""
    host_proc = scratch / "pidns-probe"
    host_proc.mkdir(exist_ok=True)
    try:
        probe = subprocess.run(command(["true"], host_proc), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    return None if probe.returncode == 0 else f"unshare --pid failed: {probe.stderr.strip()}"


def command(args: list[str], host_proc: Path) -> list[str]:
    """``args`` run as pid 1 of a new PID namespace; ``host_proc`` (an existing empty directory) shows the
    host's /proc inside it. Killing the returned command's process (SIGKILL) ends the whole namespace."""
    return [*_prefix(), "sh", "-c", _ENTER, str(host_proc), *args]


def host_pid(wrapper_pid: int, timeout: float = 30) -> int:
    """The host pid of the namespace's pid 1, the only child of the ``unshare`` process ``wrapper_pid``."""
    children = Path(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children")
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = children.read_text().split()
        except OSError:
            found = []
        if found:
            return int(found[0])
        assert time.monotonic() < deadline, f"unshare {wrapper_pid} started no process"
        time.sleep(0.005)
