"""What every piece of a real node does on the run's host: run a command, read a log's tail, probe an HTTP
endpoint, hold an address on ``lo``; and the guard that all of it happens only inside the e2e run's own network
and mount namespaces (tests/e2e/isolated.sh). Shared by e2e_harness.real_node and its parts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# The apiserver's address inside the e2e namespace (a /32 on lo like the node IPs): pods reach it through the
# kubernetes Service. See control_plane_address().
CONTROL_PLANE_ADDRESS = "10.244.77.1"
# The PATH every node daemon runs with (nothing of the test's environment leaks into a node).
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RealNodeError(RuntimeError):
    """A node did not come up or go down as it should; the message names the piece and carries its log tail."""


def require_isolation() -> None:
    """Real nodes add addresses, links, iptables rules and mounts: only inside the run's own namespaces."""
    if os.environ.get("HAMI_E2E_ISOLATED") != "1":
        raise RealNodeError(
            "real nodes run only inside the e2e run's own network and mount namespaces: "
            "run `tests/e2e/isolated.sh .venv/bin/pytest ...` (make test-e2e does)"
        )
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (mounts, network namespaces, iptables)")


def run(argv: list[str], *, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``argv`` to completion; with ``check`` a non-zero exit is a RealNodeError carrying its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def lo_has(address: str) -> bool:
    return f" {address}/32 " in run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout


def add_lo_address(address: str) -> bool:
    """``address`` as a /32 on lo; False when it was there already (then it is not ours to remove)."""
    if lo_has(address):
        return False
    run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    return True


def remove_lo_address(address: str) -> None:
    run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@contextlib.contextmanager
def control_plane_address(address: str = CONTROL_PLANE_ADDRESS) -> Iterator[str]:
    """``address`` as a /32 on lo for the while (inside the e2e namespaces only), for ``LocalCluster.start(address=)``:
    an apiserver there is what the ``kubernetes`` Service's endpoints name, so pods reach it."""
    require_isolation()
    added = add_lo_address(address)
    try:
        yield address
    finally:
        if added:
            remove_lo_address(address)
