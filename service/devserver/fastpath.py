"""``POST /`` served straight off the socket; every other request goes to aiohttp.

Each protocol request is small and every ``ctx.run`` child costs two of them,
so per-request overhead decides the local stack's throughput. Measured on the
2-core benchmark machine, aiohttp's request/response machinery (request and
response objects, router, a task per request) cost about 64 µs of server CPU
per API request; parsing with ``httptools`` (llhttp, the parser aiohttp's own
C extension and uvicorn use) and writing the reply directly costs about 24 µs.

So a connection starts on this protocol. Requests that are ``POST /`` are
parsed here and answered with the API handler's envelope, in order, with
HTTP/1.1 keep-alive, ``Connection: close``, ``Expect: 100-continue`` and the
body limit honoured. The first request that is anything else (a stream, a
health probe, a metrics scrape, a bad method or path, bytes that do not parse)
hands the connection, with the bytes of that request, to aiohttp's protocol
for the rest of its life, so aiohttp answers it exactly as it always did.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools
import msgspec

from service.connector.sdk import PROTOCOL_VERSION
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

#: The API handler: request body in; it calls back with (HTTP status, JSON
#: reply body), before it returns or later (once the request's change is
#: committed), exactly once.
type ApiHandler = Callable[[bytes | None, Callable[[int, bytes], None]], None]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE_ERROR = b"pipelined requests after POST / must also be POST /\n"
_MALFORMED_BODY = b"malformed request body\n"
#: The reply when the API handler itself fails (a server bug, never the client's).
_INTERNAL_ERROR = msgspec.json.encode(
    {
        "kind": "unknown",
        "head": {"corrId": "0", "status": 500, "version": PROTOCOL_VERSION},
        "data": "Internal error",
    }
)
#: Requests parsed but not yet answered on one connection before reading pauses.
_MAX_QUEUED = 16


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus}


class _HandOff(Exception):
    """Raised from a parser callback: this request is not ``POST /``."""


class ApiFastPath(asyncio.Protocol):
    """One client connection, answering ``POST /`` until it sees anything else."""

    def __init__(
        self,
        api: ApiHandler,
        fallback: Callable[[], asyncio.Protocol],
        max_body: int,
        connections: set[ApiFastPath],
    ) -> None:
        self._api = api
        self._fallback = fallback
        self._max_body = max_body
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # The bytes of a request whose headers are still being read, kept for
        # a hand-off; valid only while it began at the start of a chunk
        # (always, unless pipelined). Dropped once it is known to be ``POST /``.
        self._raw: list[bytes] = []
        self._between = True  # the parser is between messages
        self._at_chunk_start = True  # no byte of the chunk being fed is consumed yet
        self._aligned = True  # the current message began at a chunk start
        self._accepted = False  # the current message is a ``POST /`` answered here
        self._refusal: bytes | None = None  # set: answer the queue, then this, then close
        self._closing = False  # reading stopped; nothing more is parsed
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._declared = 0  # Content-Length of the current request, if given
        self._expect_continue = False
        self._continue_owed = False  # a 100 Continue to send once the queue is answered
        self._queue: deque[tuple[bytes | None, bool, bool]] = deque()
        self._serving = False  # answering the queue (a reply may be outstanding)
        self._outstanding: tuple[bool, bool] | None = None  # (keep-alive, HTTP/1.0) of it
        self._in_serve = False  # ``_serve`` is on the stack (a reply came back at once)
        self._idle: asyncio.Future[None] | None = None  # set once serving stops (shutdown)
        self._paused = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._refusal is not None:
            return
        if self._between or not self._accepted:
            self._raw.append(data)
        self._at_chunk_start = self._between
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HandOff):
                self._hand_off()
                return
            raise
        except httptools.HttpParserError:
            # Not HTTP this parser accepts: aiohttp's parser decides the
            # answer, unless the bytes can no longer be handed on intact.
            self._hand_off()
            return
        if self._between:
            self._raw.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def shutdown(self, grace: float) -> None:
        """Stop reading, let the request being answered finish, then close."""
        self._closing = True
        transport = self._transport
        if transport is not None:
            transport.pause_reading()
        if self._serving:
            self._idle = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._idle}, timeout=grace)
        self.close()

    # -------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._aligned = self._at_chunk_start
        self._at_chunk_start = self._between = self._accepted = False
        self._url = b""
        self._body = []
        self._size = self._declared = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif name == b"content-length" and value.strip().isdigit():
            self._declared = int(value)

    def on_headers_complete(self) -> None:
        if self._parser.get_method() != b"POST" or self._url != b"/":
            raise _HandOff
        self._accepted = True
        self._raw.clear()
        if not self._expect_continue or self._declared > self._max_body:
            # Over the limit: no 100, so a waiting client need not send the
            # body; it gets the 413 envelope once the request is read.
            return
        if self._serving or self._queue:
            # Interim replies must not overtake the final replies before them.
            self._continue_owed = True
        elif self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._max_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._between = True
        self._accepted = False
        body = b"".join(self._body) if self._size <= self._max_body else None
        self._body = []
        http10 = self._parser.get_http_version() == "1.0"
        self._queue.append((body, self._parser.should_keep_alive(), http10))
        if len(self._queue) >= _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        if not self._serving:
            self._serving = True
            # Answered right here, without a trip through the event loop; a
            # reply that waits for a commit is written from the commit itself.
            self._serve()

    # --------------------------------------------------------------- serving

    def _serve(self) -> None:
        """Answer queued requests in arrival order (HTTP/1.1 pipelining rules).

        One request at a time: the next is handed to the API handler only
        once the reply before it is written (:meth:`_answered`).
        """
        self._in_serve = True
        try:
            while self._queue and self._outstanding is None:
                body, keep_alive, http10 = self._queue.popleft()
                if self._paused and not self._closing and len(self._queue) < _MAX_QUEUED // 2:
                    self._paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                self._outstanding = (keep_alive, http10)
                try:
                    self._api(body, self._answered)
                except Exception as exc:  # a server bug: answered, and never silent
                    get_logger("service.devserver").exception(
                        "request_failed", error=str(exc) or type(exc).__name__
                    )
                    if self._outstanding is not None:
                        self._outstanding = (False, http10)
                        self._answered(500, _INTERNAL_ERROR)
                if self._outstanding is not None or not self._serving:
                    return  # answered later from the commit, or the connection is done
            self._drained()
        finally:
            self._in_serve = False

    def _answered(self, status: int, reply: bytes) -> None:
        """Write the reply to the request being answered, then go on with the queue."""
        outstanding = self._outstanding
        if outstanding is None:  # answered already (never twice)
            return
        self._outstanding = None
        keep_alive, http10 = outstanding
        transport = self._transport
        if transport is None or transport.is_closing():  # gone (or shut down) meanwhile
            self._stop_serving()
            return
        if not keep_alive:
            connection = b"Connection: close\r\n"
        elif http10:
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        head = _STATUS_LINES.get(status) or _status_line(status)
        transport.write(
            b"%sContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (head, len(reply), connection, reply)
        )
        if not keep_alive:
            self._queue.clear()
            self._closing = True
            transport.close()
            self._stop_serving()
            return
        if not self._in_serve:
            self._serve()  # a reply from the commit: the queue goes on from here

    def _drained(self) -> None:
        """Every queued request is answered: send what was held back, then stop serving."""
        if self._refusal is not None:
            self._refuse()
        elif self._continue_owed and self._transport is not None:
            self._continue_owed = False
            self._transport.write(_CONTINUE)
        self._stop_serving()

    def _stop_serving(self) -> None:
        self._serving = False
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _refuse(self) -> None:
        transport = self._transport
        if transport is None or self._refusal is None:
            return
        transport.write(
            b"%sContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (_STATUS_LINES[400], len(self._refusal), self._refusal)
        )
        transport.close()

    def _hand_off(self) -> None:
        """Give the connection, and the bytes of the current request, to aiohttp."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._accepted or not self._aligned or self._serving:
            # Where the offending request starts is not known (it is pipelined
            # behind API requests, or it is a ``POST /`` whose body does not
            # parse), so it cannot be handed on intact. Answer the requests
            # before it, then refuse it and close.
            self._refusal = _MALFORMED_BODY if self._accepted else _PIPELINE_ERROR
            transport.pause_reading()
            if not self._serving:
                self._refuse()
            return
        raw = b"".join(self._raw)
        self._raw.clear()
        self._connections.discard(self)
        self._transport = None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(raw)
