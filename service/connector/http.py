"""The request half of the protocol over pooled HTTP/1.1 keep-alive connections.

A drop-in :class:`~resonate_base.connections.Network` for the SDK's
``HttpConnection``: ``send`` POSTs one JSON envelope to ``{url}/`` and returns
the reply body whatever the HTTP status (the SDK reads the status from the
envelope), and connection failures are retried with the SDK's own backoff
until :meth:`stop`, after which ``send`` raises ``ConnectorError``.

Why not aiohttp: every ``ctx.run`` child costs a worker two protocol requests,
and aiohttp's general-purpose client machinery (URL and header objects,
timeouts, cookie handling, payload and response wrappers) measured about
165 µs of client CPU per sequential request (105 µs with four in flight)
against 55 µs (16 µs) here, which was most of what held the local stack's
fan-out throughput down. The wire format is the same
plain HTTP/1.1 any server speaks; responses are parsed by ``httptools``
(llhttp), so chunked bodies, keep-alive and ``Connection: close`` are handled
by a real parser.

Two rules for the official server:

* with a token, every request carries ``Authorization: Bearer`` (the SDK's
  ``Sender`` also puts it in ``head.auth``, where the server reads it);
* a request whose bytes were written and whose reply did not come in time is
  resent only if it is idempotent (reads, searches, listener registration,
  heartbeats). The server may have applied anything else -- a ``task.acquire``
  bumped the version, a fenced create happened -- so a blind resend could
  double-apply it; such a send fails with ``ConnectorError`` instead, the
  execution fails, and its task is re-delivered after the lease lapses (as
  with the SDK's own client, which does not resend after a timeout either).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools
from resonate.error import ConnectorError
from resonate.retry import ExponentialBackoff

from service.errors import ResonatePatternsError

if TYPE_CHECKING:
    from resonate.retry import Backoff

logger = logging.getLogger(__name__)

#: Most connections open at once; a send beyond this waits for a free one.
DEFAULT_CONN_LIMIT = 256
#: Longest wait for one reply (aiohttp's default total timeout, which the SDK's
#: client had): a server that accepts a request and never answers is treated
#: as a lost connection, closed and retried, instead of hanging the worker.
DEFAULT_REPLY_TIMEOUT_SECONDS = 300.0
#: Resend ladder while the server cannot be reached: 0.1 s doubling to 2 s. The
#: SDK's own (1 s doubling to 60 s) left a request asleep for up to 16 s after
#: a 15 s server restart (the chaos suite's restart variant caught it as a stall);
#: trying a dead address every 2 s costs nothing worth saving.
RESEND_BACKOFF = ExponentialBackoff(initial=0.1, factor=2.0, max_delay=2.0)
#: Longest wait for a new connection (a host that drops packets otherwise
#: holds a connection slot for the operating system's own, minutes-long, limit).
CONNECT_TIMEOUT_SECONDS = 30.0


#: Characters an HTTP header name may hold (RFC 9110 ``token``).
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Set by this connector itself; a caller's value would corrupt the framing.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "authorization"})
#: Request kinds that change nothing when applied twice: safe to resend after
#: a reply timeout. Everything else is sent at most once per written copy.
IDEMPOTENT_KINDS = frozenset(
    {
        "promise.get",
        "promise.search",
        "promise.register_listener",
        "task.get",
        "task.search",
        "task.heartbeat",
        "schedule.get",
        "schedule.search",
    }
)
_KIND = re.compile(rb'"kind"\s*:\s*"([A-Za-z_.]+)"')


def request_kind(body: bytes) -> str | None:
    """The envelope's ``kind`` (the first one in the body: the outer envelope's)."""
    match = _KIND.search(body, 0, 256)
    return match.group(1).decode() if match else None


@functools.cache
def _forwarded(name: str) -> bool:
    """Whether a caller's header goes on the wire.

    The SDK hands every request the lineage origin under ``resonate:origin``
    for sharding connectors; a name with a colon is not a valid HTTP header,
    and the server reads the origin from the envelope head anyway.
    """
    return bool(_TOKEN.match(name)) and name.lower() not in _OWN_HEADERS


class ConnectionLostError(ResonatePatternsError):
    """The server closed or reset the connection before the reply was complete."""


class ReplyTimeoutError(ConnectionLostError):
    """The server accepted a request but sent no complete reply in time."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: host, port, TLS and the request line's path."""

    host: str
    port: int
    tls: bool
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"RESONATE_URL must be an http:// or https:// URL with a host, got {url!r}"
            raise ValueError(msg)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname, port, tls, parts.path.rstrip("/") + "/")

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Exchange(asyncio.Protocol):
    """One connection: writes a request, parses its response, then is reusable."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._reply: asyncio.Future[bytes] | None = None
        self._body: list[bytes] = []
        self._headers_done = False
        self._framed = False  # the body's end is given (Content-Length or chunked)
        self.reusable = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLostError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._transport = None
        if exc is None and self._headers_done and not self._framed:
            # A body with no length ends where the server closes the connection.
            self.on_message_complete()
            return
        self._fail(ConnectionLostError(str(exc) if exc else "connection closed by the server"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers_done = self._framed = False
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._headers_done = False
        if self._parser.get_status_code() < 200:
            # An interim reply (100 Continue, 103 ...): the answer still follows.
            self._body = []
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        reply, body = self._reply, b"".join(self._body)
        self._reply, self._body = None, []
        if reply is not None and not reply.done():
            reply.set_result(body)

    # used by the pool
    async def exchange(self, request: bytes, reply_within: float) -> bytes:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionLostError("connection closed by the server")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        self._reply = reply
        # A bare timer rather than asyncio.timeout(): this runs twice per
        # ctx.run child and the timer is all that is needed.
        timer = loop.call_later(reply_within, self._timed_out, reply_within)
        try:
            self._transport.write(request)
            return await reply
        finally:
            timer.cancel()

    def _timed_out(self, timeout: float) -> None:
        self._fail(ReplyTimeoutError(f"no reply within {timeout:g} s"))

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.set_exception(exc)
        if self._transport is not None:
            self._transport.close()


class PooledHttpNetwork:
    """POST envelopes to a Resonate server over a pool of keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        conn_limit: int = DEFAULT_CONN_LIMIT,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT_SECONDS,
        backoff: Backoff | None = None,
        token: str | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = (
            f"POST {self.endpoint.path} HTTP/1.1\r\nHost: {self.endpoint.authority}\r\n"
            f"Content-Type: application/json\r\n{auth}"
        ).encode("latin-1")
        self._idle: list[_Exchange] = []
        self._active: set[_Exchange] = set()
        self._slots = asyncio.Semaphore(conn_limit)
        self._reply_timeout = reply_timeout
        self._backoff: Backoff = backoff if backoff is not None else RESEND_BACKOFF
        self._running = False
        self._stopped = False
        self._stop_event = asyncio.Event()
        self._tls = ssl.create_default_context() if self.endpoint.tls else None

    async def start(self) -> None:
        self._running = True
        self._stopped = False
        self._stop_event.clear()

    async def stop(self) -> None:
        """Refuse new sends and end those in flight (they raise ``ConnectorError``)."""
        self._running = False
        self._stopped = True
        self._stop_event.set()
        idle, self._idle = self._idle, []
        for conn in [*idle, *self._active]:
            conn.close()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        """Send one envelope; the reply body as text, whatever the HTTP status."""
        body = req.encode()
        request = self._request(body, headers)
        attempt = 0
        while True:
            if self._stopped:
                raise ConnectorError(RuntimeError("network has been stopped"))
            try:
                return (await self._exchange(request)).decode()
            except ReplyTimeoutError as exc:
                kind = request_kind(body)
                if kind not in IDEMPOTENT_KINDS:
                    logger.warning("HTTP %s got no reply in time; not resent: %s", kind, exc)
                    raise ConnectorError(exc) from exc
                if not self._running:
                    raise ConnectorError(exc) from exc
                logger.warning("HTTP %s got no reply in time, resending: %s", kind, exc)
                attempt += 1
            except (OSError, ConnectionLostError) as exc:
                if not self._running:
                    raise ConnectorError(exc) from exc
                delay = self._backoff.delay(attempt)
                logger.warning("HTTP send failed, retrying (backoff=%ss): %s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                if not self._running:
                    raise ConnectorError(exc) from exc
                attempt += 1

    def _request(self, body: bytes, headers: dict[str, str] | None) -> bytes:
        extra = b""
        if headers:
            extra = "".join(
                f"{name}: {value}\r\n"
                for name, value in headers.items()
                if _forwarded(name) and "\r" not in value and "\n" not in value
            ).encode("latin-1")
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (self._head, extra, len(body), body)

    async def _exchange(self, request: bytes) -> bytes:
        async with self._slots:
            while True:
                if self._stopped:
                    raise ConnectionLostError("network has been stopped")
                # A pooled connection the server has since closed (idle
                # timeout) fails without the request being read: move on to
                # the next one, then to a fresh connection, whose failure counts.
                pooled = bool(self._idle)
                conn = self._idle.pop() if pooled else await self._connect()
                self._active.add(conn)
                try:
                    reply = await conn.exchange(request, self._reply_timeout)
                except ReplyTimeoutError:
                    self._active.discard(conn)
                    raise
                except ConnectionLostError:
                    self._active.discard(conn)
                    conn.close()
                    if pooled and not self._stopped:
                        continue
                    raise
                except BaseException:
                    # Cancelled mid-exchange: the reply may still arrive, so
                    # the connection cannot carry another request.
                    self._active.discard(conn)
                    conn.close()
                    raise
                self._active.discard(conn)
                self._release(conn)
                return reply

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _, conn = await loop.create_connection(
                    _Exchange,
                    self.endpoint.host,
                    self.endpoint.port,
                    ssl=self._tls,
                    server_hostname=self.endpoint.host if self._tls else None,
                )
        except TimeoutError:
            msg = f"no connection within {CONNECT_TIMEOUT_SECONDS:g} s"
            raise ConnectionLostError(msg) from None
        return conn

    def _release(self, conn: _Exchange) -> None:
        if conn.reusable and not self._stopped:
            self._idle.append(conn)
        else:
            conn.close()
