"""Free TCP ports for tests that must name a port before something listens on it.

Only for tests: a port found free here can be taken by another process
before the test binds it. Production code never pre-allocates: the local
stack's processes bind port 0 and report what they got.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection


def free_ports(count: int, host: str = "127.0.0.1", *, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now, none in ``avoid``.

    All are held open until every one is chosen: a port released by one
    call can come straight back from the next.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    return free_ports(1, host)[0]
