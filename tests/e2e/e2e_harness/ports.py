"""Free loopback ports for the processes an e2e test starts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Collection


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing is bound to now, none of them in ``exclude``.

    Every probing socket stays bound until all ports are picked: asking for one port at a time can return the same
    port twice (the kernel may hand a port out again as soon as the probing socket closes), which once started the
    extender with its verbs and its probes on one port, and it refused to run.
    """
    ports: list[int] = []
    with contextlib.ExitStack() as sockets:
        while len(ports) < count:
            probe = sockets.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if port not in exclude:
                ports.append(port)
    return ports


def free_port() -> int:
    """One free port on 127.0.0.1 (see :func:`free_ports` when a process needs several)."""
    return free_ports(1)[0]
