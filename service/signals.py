"""Stop a long-running command on SIGTERM or SIGINT.

Every service process (server, worker, operator, backlog API, the local
stack) ends the same way: Kubernetes and the supervisor send SIGTERM, a
terminal sends SIGINT, and either sets one :class:`asyncio.Event` the
process awaits before it drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """``stop`` (a new event if None), set by SIGTERM or SIGINT from now on.

    Call from inside the running loop. Where the loop cannot install signal
    handlers (not the main thread, or no support), the event is returned
    untouched: the caller's own ``stop`` still works.
    """
    event = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, event.set)
    return event
