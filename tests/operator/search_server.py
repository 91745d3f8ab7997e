"""A stand-in Resonate server for the backlog searches, refusing them as v0.9.8 does.

The official server (resonatehq/resonate, tag v0.9.8 and main at PR #1119)
answers ``POST /`` in this order (``src/server.rs`` ``handle_api``):

1. a body that is not an envelope: ``400 "Invalid request envelope: ..."``;
2. a ``head.version`` other than ``2026-04-01``:
   ``400 "Unsupported protocol version '...', supported versions: [...]"``;
3. with auth on (``src/auth.rs`` ``auth_check``): no ``head.auth`` or a token
   that does not verify: ``401 "Unauthorized"``; a token that may not search
   (no ``role: admin``, a non-empty ``prefix``): ``403 "Forbidden"``;
4. a kind ``dispatch`` does not know: ``400 "Unknown operation: {kind}"``.

Every error reply is ``ResponseEnvelope::error``: ``{"kind", "head": {"corrId",
"status", "version"}, "data": "<message string>"}``, with the HTTP status equal
to ``head.status`` (``into_response``). This stand-in does the same for the two
searches the operator sends, with a fixed accepted token instead of JWTs, and
can drop ``task.search`` (as resonate-pg and servers without it answer) and
bring it back. It runs in its own thread and event loop: kopf cancels, as
hung, every task created in its loop while it runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.ports import free_port

#: The protocol version v0.9.8 speaks (``src/types.rs`` ``SUPPORTED_VERSIONS``).
VERSION = "2026-04-01"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    kind: str
    head_auth: str | None
    authorization: str | None


@dataclass
class SearchServer:
    """``promise.search`` and ``task.search`` over real HTTP, shaped like v0.9.8."""

    #: None: auth off. Else the one token accepted (the official server verifies a JWT).
    token: str | None = None
    #: Tokens that verify but may not search (answered 403 "Forbidden").
    forbidden_tokens: frozenset[str] = frozenset()
    #: False: task.search is answered as an unknown operation.
    task_search: bool = True
    #: Pending promises: id -> group; every one has a pending task.
    promises: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind]

    # -- the protocol ----------------------------------------------------------

    def answer(self, body: bytes, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, reply envelope) for one ``POST /`` body."""
        try:
            req = json.loads(body)
            kind, head, data = req["kind"], req["head"], req["data"]
            corr = head["corrId"]
            version = head["version"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._reply("unknown", "0", 400, f"Invalid request envelope: {exc}")
        auth = head.get("auth")
        self.seen.append(Seen(kind, auth, authorization))
        if version != VERSION:
            message = (
                f"Unsupported protocol version '{version}', supported versions: [\"{VERSION}\"]"
            )
            return self._reply(kind, corr, 400, message)
        if self.token is not None:
            if auth not in (self.token, *self.forbidden_tokens):
                return self._reply(kind, corr, 401, "Unauthorized")
            if auth in self.forbidden_tokens:
                return self._reply(kind, corr, 403, "Forbidden")
        if kind == "promise.search":
            # v0.9.8 filters by tags only when the search names some.
            target = (data.get("tags") or {}).get("resonate:target")
            found = [
                {"id": pid, "state": "pending", "tags": {"resonate:target": f"poll://any@{g}"}}
                for pid, g in sorted(self.promises.items())
                if target in (None, f"poll://any@{g}") and data.get("state") == "pending"
            ]
            return self._reply(kind, corr, 200, {"promises": found, "cursor": None})
        if kind == "task.search" and self.task_search:
            state = data.get("state")
            tasks = [{"id": pid, "state": "pending"} for pid in sorted(self.promises)]
            return self._reply(
                kind, corr, 200, {"tasks": tasks if state == "pending" else [], "cursor": None}
            )
        return self._reply(kind, corr, 400, f"Unknown operation: {kind}")

    @staticmethod
    def _reply(kind: str, corr: str, status: int, data: Any) -> tuple[int, dict[str, Any]]:
        return status, {
            "kind": kind,
            "head": {"corrId": corr, "status": status, "version": VERSION},
            "data": data,
        }

    async def _handle(self, request: web.Request) -> web.Response:
        status, reply = self.answer(await request.read(), request.headers.get("Authorization"))
        return web.json_response(reply, status=status)

    # -- the thread --------------------------------------------------------------

    async def _serve(self, started: threading.Event) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> SearchServer:
        started = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve(started))
            self._loop.close()

        self._thread = threading.Thread(target=main, name="search-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            msg = "the stand-in server did not start"
            raise RuntimeError(msg)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._stop = self._thread = None
