"""Embedded mode: the local server's engine inside the worker's own process.

:class:`EmbeddedConnection` is both the SDK's network (requests go straight
into the :class:`~service.devserver.engine.Engine`) and its message source
(everything the engine sends is handed to this process: with one process
there is nobody else to route to). It uses the same indexed state as the
HTTP server, so ``call`` and embedded workers get the same speed, and with a
SQLite store path (RESONATE_PATTERNS_EMBEDDED_STORE) results outlive the
process, which makes the factorial cache permanent on a laptop too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from service.connector.sdk import anycast_address as resolve_target
from service.connector.sdk import unicast_address as unicast
from service.devserver.engine import Engine
from service.devserver.store import MEMORY

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.devserver.model import Outgoing


class EmbeddedConnection:
    """An in-process server implementing the SDK's ``Network`` and ``Source``."""

    def __init__(self, *, pid: str, group: str, store: str = MEMORY) -> None:
        self.engine = Engine(data=store, deliver=self._deliver, release_leases_on_start=True)
        self._unicast = unicast(group, pid)
        self._subscribers: list[Callable[[str], None]] = []
        self._started = False
        self._closed = False

    def unicast(self) -> str:
        return self._unicast

    def resolve_target(self, target: str) -> str:
        return resolve_target(target)

    def recv(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.engine.start()

    async def stop(self) -> None:
        """Stop pushing messages; requests still work until :meth:`close`."""
        self._subscribers.clear()

    async def close(self) -> None:
        """Flush and close the store (after the SDK has stopped)."""
        if not self._closed:
            self._closed = True
            await self.engine.stop()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        reply = await self.engine.request(msgspec.json.decode(req))
        return msgspec.json.encode(reply.envelope()).decode()

    def _deliver(self, outbox: list[Outgoing]) -> None:
        if not self._subscribers or not outbox:
            return
        subscribers = list(self._subscribers)
        raw = [msgspec.json.encode(out.message).decode() for out in outbox]

        def dispatch() -> None:
            for message in raw:
                for callback in subscribers:
                    callback(message)

        # Off the request's critical path, like a message arriving on a socket.
        asyncio.get_running_loop().call_soon(dispatch)
