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

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: The API handler: request body in, (HTTP status, JSON reply body) out.
type ApiHandler = Callable[[bytes | None], Awaitable[tuple[int, bytes]]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE_ERROR = b"pipelined requests after POST / must also be POST /\n"
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
        # The chunks of the request being parsed, kept for a hand-off; valid
        # only while it began at the start of a chunk (always, unless pipelined).
        self._raw: list[bytes] = []
        self._between = True  # the parser is between messages
        self._at_chunk_start = True  # no byte of the chunk being fed is consumed yet
        self._aligned = True  # the current message began at a chunk start
        self._rejected = False  # a request that cannot be handed off was seen
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._expect_continue = False
        self._queue: deque[tuple[bytes | None, bool]] = deque()
        self._serving = False
        self._task: asyncio.Task[None] | None = None
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
        if self._rejected:
            return
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
            # Not HTTP this parser accepts: aiohttp's parser decides the answer.
            self._hand_off()
            return
        if self._between:
            self._raw.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._aligned = self._at_chunk_start
        self._at_chunk_start = self._between = False
        self._url = b""
        self._body = []
        self._size = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        if self._parser.get_method() != b"POST" or self._url != b"/":
            raise _HandOff
        if self._expect_continue and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._max_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._between = True
        body = b"".join(self._body) if self._size <= self._max_body else None
        self._body = []
        self._queue.append((body, self._parser.should_keep_alive()))
        if len(self._queue) >= _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        if not self._serving:
            self._serving = True
            # Started eagerly: it runs to its first real wait right here,
            # without a trip through the event loop.
            loop = asyncio.get_running_loop()
            self._task = asyncio.Task(self._serve(), loop=loop, eager_start=True)

    # --------------------------------------------------------------- serving

    async def _serve(self) -> None:
        """Answer queued requests in arrival order (HTTP/1.1 pipelining rules)."""
        try:
            while self._queue:
                body, keep_alive = self._queue.popleft()
                if self._paused and len(self._queue) < _MAX_QUEUED // 2:
                    self._paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                status, reply = await self._api(body)
                transport = self._transport
                if transport is None:
                    return
                head = _STATUS_LINES.get(status) or _status_line(status)
                transport.write(
                    b"%sContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (head, len(reply), b"" if keep_alive else b"Connection: close\r\n", reply)
                )
                if not keep_alive:
                    self._queue.clear()
                    transport.close()
                    return
            if self._rejected:
                self._reject()
        finally:
            self._serving = False

    def _reject(self) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(
            b"%sContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (_STATUS_LINES[400], len(_PIPELINE_ERROR), _PIPELINE_ERROR)
        )
        transport.close()

    def _hand_off(self) -> None:
        """Give the connection, and the bytes of the current request, to aiohttp."""
        transport = self._transport
        if transport is None:
            return
        if not self._aligned or self._serving:
            # A non-API request pipelined behind API requests: where it starts
            # is not known, so it cannot be handed on intact. Answer the
            # requests before it, then refuse it and close.
            self._rejected = True
            transport.pause_reading()
            if not self._serving:
                self._reject()
            return
        raw = b"".join(self._raw)
        self._raw.clear()
        self._connections.discard(self)
        self._transport = None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(raw)
