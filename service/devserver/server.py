"""``resonate-patterns server``: the local Resonate server over HTTP.

Routes (the official server's, plus health and metrics on the same port):

* ``POST /`` — one protocol request envelope in, one reply envelope out; the
  HTTP status mirrors ``head.status``. A malformed body, an unknown kind,
  missing fields or an oversized body get a 4xx envelope with a clear
  message; a client's mistake never produces a 5xx and never touches what
  is stored.
* ``GET /poll/{group}/{pid}`` — Server-Sent Events: one ``data:`` line per
  message, ``: ping`` comments while idle. When a process's last stream
  closes, the tasks it holds are released unless the same process (pid)
  opens a stream again within ``--release-grace-seconds`` (1.5 s): a worker
  whose connection merely dropped reconnects within 0.1 s and keeps its
  leases, a killed one has its work re-delivered once the grace runs out
  (``--no-release-on-disconnect`` turns the release off and leaves the leases
  to expire). Every ``execute`` that stream had written whose task is still
  not acquired is sent again at once, without waiting for the grace
  (``--no-resend-on-close`` leaves those to the retry timer, ``--retry-ms``,
  30 s by default like the official ``tasks.retry_timeout``).
  A stream opened with ``Resonate-Patterns-Capacity: N`` is offered an
  ``execute`` only while its process has room (flow control, see
  :mod:`service.devserver.hub`); the header is echoed to say so.
* ``GET /healthz`` ``/readyz`` ``/metrics`` (``/health`` and ``/ready`` too,
  as on the official server); always open.

With a public key (``--auth-public-key``), ``POST /`` needs a JWT in
``head.auth`` and ``/poll`` one in ``Authorization: Bearer``, checked as the
official server checks them (:mod:`service.devserver.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec
from aiohttp import web

from service.devserver.auth import UNAUTHORIZED, Verifier
from service.devserver.dispatch import Reply
from service.devserver.engine import Engine
from service.devserver.fastpath import ApiFastPath
from service.devserver.grace import LOGGED_IDS, ReconnectGrace
from service.devserver.hub import CAPACITY_HEADER, Hub
from service.devserver.metrics import ServerMetrics
from service.devserver.store import MEMORY
from service.errors import ConfigError
from service.telemetry.http import add_health_routes
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from service.devserver.hub import Connection

#: Largest request body accepted (a promise value is base64 JSON; 10 MiB is plenty).
MAX_BODY_BYTES = 10 * 1024 * 1024
#: Group and process ids on the stream URL: the characters an address can carry.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,252}$")
_JSON = "application/json"
#: How long ``stop`` waits for requests already being answered.
_STOP_GRACE_SECONDS = 5.0
#: The official server's variable for the retry timeout (ms), honoured by ``server``.
ENV_RETRY_TIMEOUT = "RESONATE_TASKS__RETRY_TIMEOUT"
#: How long a process whose last stream closed has to open one again before
#: its leases are released. A live worker's stream (``EventStream``) reconnects
#: 0.1 s after it ends, and 0.3 s / 0.7 s after that if those attempts fail:
#: all well inside 1.5 s, with room for a slow handshake or a busy event loop.
#: A ``kill -9``'d worker's in-flight work restarts 1.5 s after its stream
#: closes (instead of a 60 s lease TTL).
DEFAULT_RELEASE_GRACE_SECONDS = 1.5

#: What happened to a process's leases when one of its streams closed.
ReleaseOutcome = Literal[
    "after_grace", "immediate", "other_stream_open", "disabled", "server_stopping"
]


@dataclass(frozen=True)
class ServerOptions:
    """How a local server runs (see ``resonate-patterns server --help``)."""

    #: SQLite file of the store, or ``:memory:``.
    data: str = MEMORY
    #: fsync every commit.
    fsync: bool = False
    #: Release a process's leases when its last stream closes (after the grace).
    release_on_disconnect: bool = True
    #: Seconds a process whose last stream closed has to reconnect (same pid)
    #: and keep its leases; 0 releases them as the stream closes.
    release_grace_seconds: float = DEFAULT_RELEASE_GRACE_SECONDS
    #: Re-send at once the unacquired ``execute`` messages of a stream that closed.
    resend_on_close: bool = True
    #: Idle stream ping interval.
    keepalive_seconds: float = 15.0
    #: Pending tasks' execute resend period in ms (None: 30000, the official default).
    retry_ms: int | None = None
    #: JWT verification of every request and stream (None: auth off, all accepted).
    auth: Verifier | None = None
    #: Answer ``POST /`` on the httptools fast path (False: aiohttp serves everything).
    fast_path: bool = True


class DevServer:
    """The HTTP front of an :class:`Engine`, with the SSE hub."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions()
        self.metrics = ServerMetrics()
        self.hub = Hub(
            self.metrics,
            leased=lambda pid: len(self.engine.state.leases.get(pid, ())),
            unacquired=lambda tid, version: self.engine.state.still_unacquired(tid, version),
        )
        self.auth = self.options.auth
        self.engine = Engine(
            data=self.options.data,
            fsync=self.options.fsync,
            deliver=self.hub.deliver,
            retry_ms=self.options.retry_ms,
            metrics=self.metrics,
            gate=self.auth.check_request if self.auth is not None else None,
        )
        self.metrics.watch_state(lambda: self.engine.state, self.hub.connected)
        self.ready = False
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._fast: set[ApiFastPath] = set()
        #: Releases of disconnected processes' leases, waiting out the reconnect grace.
        self.grace = ReconnectGrace(self.engine, self.hub)
        #: The tasks serving open event streams (``stop`` ends them), and
        #: whether there are none.
        self._streams: set[asyncio.Task[object]] = set()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self._stopping = False
        self._log = get_logger("service.devserver")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/", self._api)
        app.router.add_get("/poll/{group}/{pid}", self._poll)
        add_health_routes(app, self.metrics.registry, lambda: self.ready, aliases=True)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8001) -> int:
        """Load the store, start the clock loop and listen; return the bound port."""
        await self.engine.start()
        # Cancel a handler when its client goes away: that is how a crashed
        # worker's stream is noticed at once (and its tasks released).
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        fallback = self._runner.server
        assert fallback is not None

        # Connections start on the ``POST /`` fast path and are handed to
        # aiohttp (``fallback``) at their first other request.
        def fast() -> asyncio.Protocol:
            return ApiFastPath(self.answer, fallback, MAX_BODY_BYTES, self._fast)

        factory: Callable[[], asyncio.Protocol] = fast if self.options.fast_path else fallback
        self._listener = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_address=True
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        self.ready = True
        self._log.info(
            "server_started",
            host=host,
            port=self.port,
            data=self.options.data,
            release_on_disconnect=self.options.release_on_disconnect,
            release_grace_seconds=self.options.release_grace_seconds,
            resend_on_close=self.options.resend_on_close,
            retry_ms=self.engine.state.retry_ms,
            auth=_auth_mode(self.auth),
        )
        return self.port

    async def stop(self) -> None:
        self.ready = False
        # Streams that the shutdown itself closes release nothing: those
        # workers are alive, and with a stored state they reconnect to the
        # restarted server and go on heartbeating their leases. A process
        # whose stream had already closed is still waited for; it cannot be
        # any longer, so its release is applied now rather than lost with
        # its timer (``up`` stops its workers before the server, so that
        # process has exited).
        self._stopping = True
        await self.grace.release_now()
        if self._listener is not None:
            self._listener.close()
            # Requests already read are answered (their changes are applied
            # either way) before their connections close.
            await asyncio.gather(*(conn.shutdown(_STOP_GRACE_SECONDS) for conn in list(self._fast)))
        await self._end_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        # Releases already under way finish (their effects are committed)
        # before the store closes; no timer outlives the server.
        await self.grace.stop()
        await self.engine.stop()
        self._log.info("server_stopped")

    # ------------------------------------------------------------------ routes

    async def _api(self, request: web.Request) -> web.Response:
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        status, reply_body = await self.api(body)
        return web.Response(body=reply_body, status=status, content_type=_JSON)

    async def api(self, body: bytes | None) -> tuple[int, bytes]:
        """One ``POST /``: the body (None when over the limit) to (status, reply body).

        The HTTP status mirrors the reply's ``head.status``.
        """
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, reply: bytes) -> None:
            if not fut.done():
                fut.set_result((status, reply))

        self.answer(body, done)
        return await fut

    def answer(self, body: bytes | None, done: Callable[[int, bytes], None]) -> None:
        """:meth:`api` without a coroutine: ``done(status, reply body)`` is called once.

        Before this returns for a reply that waits for no commit, else from
        the engine's group commit (the fast path writes the reply from there).
        """

        answered = False

        def send(out: Reply) -> None:
            nonlocal answered
            try:
                reply = msgspec.json.encode(out.envelope())
            except Exception as exc:  # a reply this server cannot encode: its bug
                internal_error(exc)
                return
            if not answered:  # once, even if ``done`` itself raised
                answered = True
                done(out.status, reply)

        def internal_error(exc: Exception) -> None:
            self._log.error("request_failed", error=str(exc), exc_info=exc)
            send(Reply("unknown", "0", 500, f"Internal error: {exc}"))

        def failed(exc: Exception) -> None:
            if isinstance(exc, RecursionError):  # a value nested past what the store can encode
                send(self._refused(400, "Invalid request: nested too deeply", "depth"))
            else:  # a bug here, never the client's fault
                internal_error(exc)

        if body is None:
            send(Reply("unknown", "0", 413, f"Request body larger than {MAX_BODY_BYTES} bytes"))
            return
        try:
            envelope = msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # Malformed JSON, or strings that are not UTF-8: the client's mistake.
            send(self._refused(400, f"Invalid request envelope: {exc}", type(exc).__name__))
            return
        except RecursionError:
            send(self._refused(400, "Invalid request envelope: nested too deeply", "depth"))
            return
        try:
            self.engine.submit(envelope, send, failed)
        except Exception as exc:  # raised by the apply: nothing was answered yet
            failed(exc)

    def _refused(self, status: int, message: str, reason: str) -> Reply:
        """A client's mistake: a 4xx reply and one log line (never a 500)."""
        self._log.info("request_refused", status=status, reason=reason)
        return Reply("unknown", "0", status, message)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        group, pid = request.match_info["group"], request.match_info["pid"]
        # Authenticated before anything else, as on the official server; a
        # stream is never authorized by prefix (any valid token may listen).
        if self.auth is not None and not self.auth.check_stream(
            request.headers.get("Authorization")
        ):
            return web.Response(status=401, text=UNAUTHORIZED)
        if not _NAME_RE.match(group) or not _NAME_RE.match(pid):
            return web.json_response(
                {"error": "group and pid must be 1-253 URL-safe characters"}, status=400
            )
        capacity = _capacity(request.headers.get(CAPACITY_HEADER))
        if capacity is False:
            return web.json_response(
                {"error": f"{CAPACITY_HEADER} must be an integer from 0 to 1000000"}, status=400
            )
        if self._stopping:  # a stream opened now would hold up the shutdown
            return web.Response(status=503, text="Server stopping")
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if capacity is not None:  # tells the worker its capacity is honoured here
            headers[CAPACITY_HEADER] = str(capacity)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        conn = self.hub.connect(group, pid, capacity)
        self._log.info("worker_connected", group=conn.group, pid=pid, capacity=capacity)
        self.grace.keep(conn)
        keepalive = self.options.keepalive_seconds
        unacquired = self.engine.state.still_unacquired
        serving = asyncio.current_task()
        if serving is not None:
            self._streams.add(serving)
            self._no_streams.clear()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(conn.queue.get(), keepalive)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                try:
                    await response.write(b"data: " + msgspec.json.encode(message) + b"\n\n")
                except BaseException:
                    conn.queue.put_nowait(message)  # routed again on disconnect
                    raise
                conn.wrote(message, unacquired)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                await self._stream_closed(conn)
            finally:
                if serving is not None:
                    self._streams.discard(serving)
                if not self._streams:
                    self._no_streams.set()
        return response

    async def _end_streams(self) -> None:
        """End every open event stream (the server is stopping).

        A stream never ends on its own; left to aiohttp's shutdown, each one
        would hold ``stop`` for its 60 s timeout, twice.
        """
        for task in list(self._streams):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE_SECONDS):
                await self._no_streams.wait()

    async def _stream_closed(self, conn: Connection) -> None:
        """Clean up after a stream: re-send its unacquired work, release its process's leases.

        Both only when it was the process's last stream: a process that still
        has another stream open is alive, holds its leases and has read (or
        will be re-sent by the timer) what it was sent.

        The leases are released only after the reconnect grace
        (:class:`~service.devserver.grace.ReconnectGrace`), because a live worker whose connection
        dropped opens a new stream within 0.1 s and is still running the
        work it holds; releasing at once would hand that work to another
        worker (it would run twice) and fail the first worker's fenced writes
        with 409.

        The unacquired ``execute`` messages are re-sent at once, grace or
        not, deliberately: the server cannot tell whether the bytes it wrote
        to a connection that dropped ever reached the worker, and a new
        stream does not replay them. If they did arrive, the copy costs one
        message and a 409 on the slower of two acquires (the task still runs
        once); if they did not, waiting would leave the task to the retry
        timer (30 s by default). For a worker that was killed, waiting would
        only delay its queued work by the grace.
        """
        self.hub.disconnect(conn)
        state = self.engine.state
        gone = not self.hub.has_pid(conn.pid)
        leased = len(state.leases.get(conn.pid, ()))
        released: list[str] = []
        resent: list[str] = []
        grace = self.options.release_grace_seconds
        release: ReleaseOutcome
        if not gone:
            release = "other_stream_open"
        elif not self.options.release_on_disconnect:
            release = "disabled"
        elif self._stopping:
            release = "server_stopping"
        elif grace > 0:
            release = "after_grace"
            self.grace.schedule(conn, grace)
        else:
            release = "immediate"
            with contextlib.suppress(Exception):
                released = await asyncio.shield(self.engine.release_pid(conn.pid))
        # Released tasks were acquired (a newer version than any written to
        # the stream), so they are never among these; what is left was
        # written and never acquired.
        stranded = [(t, v) for t, v in conn.written.items() if state.still_unacquired(t, v)]
        # Also when the process's other streams take no work: a draining
        # worker re-opens its stream with a capacity of 0, and the new stream
        # may open before the server notices the old one closed.
        takes_work = self.hub.takes_work(conn.pid)
        if (gone or not takes_work) and stranded and self.options.resend_on_close:
            with contextlib.suppress(Exception):
                resent = await asyncio.shield(self.engine.resend_unacquired(stranded))
        self._log.info(
            "worker_disconnected",
            group=conn.group,
            pid=conn.pid,
            release=release,
            leased_tasks=leased,
            release_grace_seconds=grace,
            # Released as the stream closed: only with a zero grace (see
            # the ``worker_released`` event for releases after the grace).
            released_tasks=len(released),
            unacquired_tasks=len(stranded),
            resent_tasks=len(resent),
            unacquired_task_ids=[t for t, _ in stranded[:LOGGED_IDS]],
        )

    @property
    def pending_releases(self) -> frozenset[str]:
        """Processes whose leases will be released unless they reconnect in time."""
        return self.grace.pending


def _capacity(raw: str | None) -> int | Literal[False] | None:
    """The stream's announced capacity: None without the header, False when malformed."""
    if raw is None:
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 7 or int(value) > 1_000_000:
        return False
    return int(value)


def _auth_mode(auth: Verifier | None) -> str:
    if auth is None:
        return "off"
    return "unsigned" if auth.unsigned else "jwt"


def retry_ms_from_env(env: Mapping[str, str]) -> int | None:
    """``RESONATE_TASKS__RETRY_TIMEOUT`` (ms) if set, as the official server reads it.

    Raises :class:`~service.errors.ConfigError` for a value that is not a
    positive integer.
    """
    raw = env.get(ENV_RETRY_TIMEOUT)
    if raw is None:
        return None
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(ENV_RETRY_TIMEOUT, raw, "a positive number of milliseconds")
    return int(value)


async def serve(options: ServerOptions, host: str, port: int, stop: asyncio.Event) -> None:
    """Run a server until ``stop`` is set."""
    server = DevServer(options)
    await server.start(host, port)
    # Everything allocated so far (modules, the loaded store) lives as long
    # as the process: out of the collector's sight, a full collection scans
    # only what requests added, not ~30 ms of startup objects each time.
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await server.stop()
