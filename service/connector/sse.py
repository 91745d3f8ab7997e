"""The event stream: ``GET {url}/poll/{group}/{pid}`` as a source that never goes deaf.

Replaces the SDK's ``SSEConnection`` (resonate-sdk 0.8.1), which runs on
aiohttp's default session timeout (``total=300``) and catches only
``aiohttp.ClientError``: 300 s after connecting, the plain ``TimeoutError``
ends its read loop for good, silently, and the process never receives another
message (and its shutdown raises that error). Here:

* a **read timeout** instead of a total one: a stream may stay open for days,
  but one that sends nothing (no message, no ``: ping`` comment) for
  ``read_timeout`` seconds is treated as dead (a half-open connection after a
  node failure never errors on its own);
* **any** error or end of stream reconnects, with a short backoff that grows
  to a few seconds while the server stays away and starts over after a
  success;
* the state is visible: :attr:`connected`, ``on_change`` callbacks (the
  worker's ``/readyz`` and the ``event_stream_*`` metrics use them) and one
  structured log line per transition; a refusal (401/403) is logged as an
  error naming the cause, because retrying will not fix a wrong token;
* the token, when configured, goes as ``Authorization: Bearer`` -- where the
  official server reads it on ``/poll``;
* a worker announces how many tasks it can run at once in the
  ``Resonate-Patterns-Capacity`` request header; a server that honours it
  (the local one) echoes it and sends an ``execute`` only while the worker has
  room. :meth:`EventStream.set_capacity` re-opens the stream with a new value
  (0 when draining: out of the rotation). The official server ignores it.

Framing is the SDK's own pure ``SseFramer`` (``data:`` lines, events split on
a blank line, comments ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Literal

import aiohttp
from resonate.connections.sse import SseFramer
from resonate.retry import ExponentialBackoff

from service.connector.envelopes import bearer_headers
from service.connector.sdk import anycast_address, unicast_address
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate.retry import Backoff

#: Default silence after which a stream counts as dead. The local server
#: pings every 15 s; the official server keeps its streams open without
#: traffic, so an idle stream to it is re-opened every read timeout (a quick,
#: harmless reconnect) rather than trusted forever.
DEFAULT_READ_TIMEOUT_SECONDS = 60.0
#: Longest wait for the stream's connection and response headers.
CONNECT_TIMEOUT_SECONDS = 10.0
#: Reconnect ladder: 0.1 s, 0.2 s, ... capped at 2 s while the server is away
#: (the same ladder as the HTTP connector's resends).
RECONNECT_BACKOFF = ExponentialBackoff(initial=0.1, factor=2.0, max_delay=2.0)
#: Request header announcing the worker's capacity (tasks it can run at once).
CAPACITY_HEADER = "Resonate-Patterns-Capacity"
#: Statuses that mean "this token may not listen here": logged as errors.
_REFUSED = frozenset({401, 403})

#: Why an open stream ended: silent past the read timeout (normal against a
#: server that sends no keep-alives), ended by the server, or a failure.
CloseCause = Literal["idle", "closed", "error"]


class EventStream:
    """A :class:`~resonate_base.connections.Source` over the server's SSE endpoint."""

    def __init__(
        self,
        url: str,
        *,
        pid: str,
        group: str,
        token: str | None = None,
        read_timeout: float = DEFAULT_READ_TIMEOUT_SECONDS,
        backoff: Backoff = RECONNECT_BACKOFF,
        capacity: int | None = None,
    ) -> None:
        self.url = f"{url.rstrip('/')}/poll/{group}/{pid}"
        self.group = group
        self.pid = pid
        self._headers = {"Accept": "text/event-stream", **bearer_headers(token)}
        if capacity is not None:
            self._headers[CAPACITY_HEADER] = str(capacity)
        #: Whether the server said it honours the announced capacity (it
        #: echoed the header on the current or last stream).
        self.flow_controlled = False
        self._response: aiohttp.ClientResponse | None = None
        self._reopen = False
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout
        )
        self._backoff = backoff
        self._subscribers: list[Callable[[str], None]] = []
        self._watchers: list[Callable[[bool, CloseCause | None], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.connected = False
        #: Times the stream was opened after its first opening.
        self.reconnects = 0
        #: The last reason the stream is not open (None while open or never tried).
        self.last_error: str | None = None
        self._opened_once = False
        self._last_close: CloseCause = "error"
        self._log = get_logger("service.stream")

    # -- Source -------------------------------------------------------------------

    def unicast(self) -> str:
        return unicast_address(self.group, self.pid)

    def resolve_target(self, target: str) -> str:
        return anycast_address(target)

    def recv(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-stream")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._set_connected(False, None)
        self._subscribers.clear()

    def set_capacity(self, capacity: int) -> None:
        """Announce a new capacity: re-open the stream with it, at once.

        Only against a server that honours the header (:attr:`flow_controlled`);
        others would gain nothing from the reconnect. The local server re-sends
        at once what it wrote to the old stream and nobody acquired, and keeps
        the process's leases (it reconnects within the release grace).
        """
        self._headers[CAPACITY_HEADER] = str(capacity)
        if self.flow_controlled and self._response is not None:
            self._reopen = True
            self._response.close()

    # -- state ---------------------------------------------------------------------

    def on_change(self, callback: Callable[[bool, CloseCause | None], None]) -> None:
        """Call ``callback(connected, cause)`` on every open and close.

        ``cause`` is set when the stream opens again after it had been open:
        why the previous one ended. It is None on the first opening and on closes.
        """
        self._watchers.append(callback)

    def _set_connected(self, connected: bool, error: str | None) -> None:
        self.last_error = error
        if connected == self.connected:
            return
        self.connected = connected
        cause: CloseCause | None = None
        if connected:
            if self._opened_once:
                cause = self._last_close
                self.reconnects += 1
            self._opened_once = True
        for watcher in list(self._watchers):
            watcher(connected, cause)

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            error = await self._listen_once()
            self._set_connected(False, error or "stream ended")
            if error is None and (self._last_close == "idle" or self._reopen):
                self._reopen = False
                continue  # a quiet stream timed out, or a new capacity: reopen at once
            if error is None:  # the stream was open and ended: start the ladder over
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen_once(self) -> str | None:
        """Open the stream and pump it until it ends; the error if it never opened."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url, headers=self._headers) as resp:
                if resp.status != 200:
                    return await self._refused(resp)
                self.flow_controlled = CAPACITY_HEADER in resp.headers
                self._response = resp
                self._set_connected(True, None)
                self._log.info(
                    "event_stream_connected",
                    url=self.url,
                    reconnects=self.reconnects,
                    capacity=self._headers.get(CAPACITY_HEADER),
                    flow_controlled=self.flow_controlled,
                )
                await self._pump(resp)
                self._ended("closed")
                return None
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            if self.connected:
                # Expected against a server that sends no keep-alives: not a warning.
                self._ended("idle")
                return None
            reason = "connect timeout"
        except (aiohttp.ClientError, OSError) as exc:
            if self._reopen and self.connected:
                self._ended("closed")
                return None
            reason = str(exc) or type(exc).__name__
        except Exception as exc:  # never let the listener die: anything else reconnects too
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._response = None
        if self.connected:
            self._last_close = "error"
            self._log.warning("event_stream_closed", url=self.url, cause="error", reason=reason)
            return None
        self._log.warning("event_stream_connect_failed", url=self.url, reason=reason)
        return reason

    def _ended(self, cause: CloseCause) -> None:
        """An open stream ended without an error: log why."""
        self._last_close = cause
        if self._reopen:  # closed on purpose by ``set_capacity``
            self._log.info("event_stream_reopening", url=self.url, reason="capacity")
        elif cause == "idle":
            self._log.info("event_stream_closed", url=self.url, cause="idle")
        else:
            self._log.warning("event_stream_closed", url=self.url, cause=cause)

    async def _refused(self, resp: aiohttp.ClientResponse) -> str:
        body = (await resp.text())[:200].strip()
        reason = f"HTTP {resp.status}: {body}" if body else f"HTTP {resp.status}"
        if resp.status in _REFUSED:
            self._log.error(
                "event_stream_refused",
                url=self.url,
                status=resp.status,
                error=body,
                hint="check RESONATE_TOKEN against the server's auth settings",
            )
        else:
            self._log.warning("event_stream_connect_failed", url=self.url, reason=reason)
        return reason

    async def _pump(self, resp: aiohttp.ClientResponse) -> None:
        framer = SseFramer()
        async for chunk in resp.content.iter_any():
            for data in framer.feed(chunk):
                for callback in list(self._subscribers):
                    callback(data)
