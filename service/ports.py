"""Whether a port the user chose can be listened on, for a one-line refusal up front.

This is a check of a port someone named (``up --port 8001``,
``RESONATE_PATTERNS_HTTP_PORT=9400``), made so that a taken port is one
clear line instead of a child's traceback or a silent attach to whatever
listens there. It never chooses ports: a process that may listen anywhere
binds port 0 itself and reports the port it got (see
:mod:`service.local.children`), so there is no window in which two processes
can be handed the same free port.
"""

from __future__ import annotations

import errno
import socket


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (``None``: it can), probed by a bind.

    Binds with ``SO_REUSEADDR`` as aiohttp does, so a port in TIME_WAIT counts
    as free and only a live listener (or a bad address) counts as taken.
    Port 0 (any) is never taken.
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"{host}:{port} is already in use by another process"
                return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None
