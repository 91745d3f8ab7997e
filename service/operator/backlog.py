"""Read a worker group's backlog from a Resonate server, over the official protocol.

Backlog = tasks not yet picked up (``pending``) plus tasks a worker holds
(``acquired``) whose promise targets ``poll://any@{group}``. The server has
no group filter on ``task.search`` and tasks carry no target, but a task's id
is its promise's id, so one scan (:meth:`BacklogReader.scan`) pages through

1. ``task.search`` (state ``pending``, then ``acquired``) for every such task,
2. ``promise.search`` (state ``pending``) for every pending promise, whose
   ``resonate:target`` tag names its group,

and joins the two by id: the backlog of every group at once, so N groups
cost one scan, not N. :class:`SharedScan` shares one scan among every reader
of a server (the operator's autoscalers, the backlog API) for a few seconds.
Suspended tasks (waiting on children) are not backlog: they need no worker
until a child settles. Pages are followed with the server's cursor until it
stops returning one. The same code reads the
official server and the local one.

Two kinds of failure, because the operator reacts to them differently:

* :class:`BacklogReadError`: the read failed this time (connection refused,
  timeout, 5xx, a garbled reply); the next poll may well succeed.
* :class:`BacklogCapabilityError` (a subclass): the server answered, and the
  answer says it will not serve this search to this client -- ``400
  "Unknown operation: task.search"`` (how the official server refuses a kind
  it lacks, ``src/server.rs`` ``dispatch``; resonate-pg has no
  ``task.search``), ``400 "Unsupported protocol version ..."``, ``401
  "Unauthorized"`` (no or bad token, ``src/auth.rs`` ``auth_check``), ``403
  "Forbidden"`` (the token may not search: searches need role ``admin`` or an
  empty ``prefix`` claim), ``404`` or ``501``. Retrying does not fix these;
  an operator has to.

With a token (``RESONATE_TOKEN``) every request carries it in ``head.auth``,
where the official server reads it on ``POST /``, and as ``Authorization:
Bearer`` for proxies in front of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from service.connector.envelopes import bearer_headers, request_envelope
from service.connector.sdk import anycast_address as anycast
from service.errors import ResonatePatternsError

#: The tag a promise's routing address is stored under (set by the SDK).
TARGET_TAG = "resonate:target"
#: What every group's anycast address starts with (``poll://any@``).
ANYCAST_PREFIX = anycast("")
#: Largest page the official server allows.
MAX_PAGE = 1000
#: Longest server message quoted in an error (a proxy may answer with a whole HTML page).
MAX_QUOTED = 200

#: Why a server will not serve a search: it lacks the request kind (or the
#: protocol), it refused the token, or the token may not search.
CapabilityReason = Literal["Unsupported", "Unauthorized", "Forbidden"]
CAPABILITY_REASONS: tuple[CapabilityReason, ...] = ("Unsupported", "Unauthorized", "Forbidden")

#: Statuses that mean "not this request, not from this client", whatever the body says.
_STATUS_REASONS: dict[int, CapabilityReason] = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Unsupported",
    501: "Unsupported",
}
#: The official server's 400 messages for a kind or a protocol version it does not
#: speak (v0.9.8 and main, ``src/server.rs``: ``format!("Unknown operation: {}", kind)``
#: and ``"Unsupported protocol version '...'"``). Any other 400 is a bad request.
_UNSUPPORTED_400 = ("Unknown operation", "Unsupported protocol version")


def classify(status: int, message: str) -> CapabilityReason | None:
    """The capability problem a search reply reports, or ``None`` for any other outcome.

    ``status`` is the reply's status (the envelope's ``head.status``, else the
    HTTP status) and ``message`` the server's message (the envelope's ``data``
    string). ``None`` covers success, 5xx (the server is unwell, not
    incapable), 429 and any 400 other than an unknown operation or protocol.
    """
    if status == 400:
        return "Unsupported" if message.strip().startswith(_UNSUPPORTED_400) else None
    return _STATUS_REASONS.get(status)


class BacklogReadError(ResonatePatternsError):
    """The Resonate server could not be read (down, unreachable, or an error reply)."""


class BacklogCapabilityError(BacklogReadError):
    """The server answered a search with a refusal that retrying will not change.

    ``reason`` says which (:data:`CapabilityReason`), ``status`` and
    ``server_message`` are what the server answered, ``kind`` the request
    that was refused. The message is one line naming the cause.
    """

    def __init__(
        self,
        *,
        url: str,
        kind: str,
        status: int,
        server_message: str,
        reason: CapabilityReason,
        token_sent: bool,
    ) -> None:
        self.url = url
        self.kind = kind
        self.status = status
        self.server_message = server_message
        self.reason = reason
        self.token_sent = token_sent
        super().__init__(_capability_message(url, kind, status, server_message, reason, token_sent))


def _capability_message(
    url: str,
    kind: str,
    status: int,
    server_message: str,
    reason: CapabilityReason,
    token_sent: bool,
) -> str:
    answer = f"{kind} on {url} answered {status} {server_message!r}"
    if reason == "Unauthorized":
        if token_sent:
            return (
                f"the server refused the token: {answer} "
                "(RESONATE_TOKEN is invalid, expired or not signed by the server's key)"
            )
        return f"the server requires a token: {answer} and RESONATE_TOKEN is not set"
    if reason == "Forbidden":
        if token_sent:
            return (
                f"the server refused the token: {answer} "
                "(searching needs a token with role 'admin' or an empty 'prefix' claim)"
            )
        return f"the server refused access: {answer} and RESONATE_TOKEN is not set"
    return (
        f"the server does not support {kind}: {answer} "
        "(backlog-based scaling needs promise.search and task.search)"
    )


def _quote(text: str) -> str:
    """One line of at most :data:`MAX_QUOTED` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_QUOTED else line[: MAX_QUOTED - 3] + "..."


def _envelope(text: str) -> dict[str, Any] | None:
    """The reply envelope in ``text`` (with an integer ``head.status``), else ``None``."""
    try:
        reply = json.loads(text)
    except ValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("head"), dict):
        return None
    status = reply["head"].get("status")
    return reply if isinstance(status, int) and not isinstance(status, bool) else None


def _server_message(data: Any) -> str:
    if isinstance(data, str):
        return _quote(data)
    return _quote(json.dumps(data, separators=(",", ":"), default=str))


@dataclass(frozen=True)
class Backlog:
    """Tasks of one group waiting (``pending``) and running (``acquired``)."""

    pending: int
    acquired: int

    @property
    def total(self) -> int:
        return self.pending + self.acquired


#: The backlog of a group with no work.
EMPTY = Backlog(pending=0, acquired=0)


class BacklogReader:
    """Reads backlogs from one Resonate server (an aiohttp session, reused)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        page_size: int = MAX_PAGE,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE:
            msg = f"page_size must be between 1 and {MAX_PAGE}"
            raise ValueError(msg)
        self.url = url.rstrip("/")
        #: Sent in ``head.auth`` and as ``Authorization: Bearer`` (``None``: no auth).
        self.token = token or None
        self.page_size = page_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=bearer_headers(self.token)
            )
        envelope = request_envelope(kind, data, origin="backlog", token=self.token)
        try:
            async with self._session.post(f"{self.url}/", json=envelope) as resp:
                http_status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            msg = f"cannot read {kind} from {self.url}: {exc or type(exc).__name__}"
            raise BacklogReadError(msg) from exc
        reply = _envelope(text)
        if reply is None:
            # Not an envelope (a proxy, another service): the HTTP status is all there is.
            reason = classify(http_status, text)
            if reason is not None:
                raise self._refused(kind, http_status, _quote(text), reason)
            msg = (
                f"{kind} on {self.url} answered HTTP {http_status} without a reply envelope: "
                f"{_quote(text)!r}"
            )
            raise BacklogReadError(msg)
        status = reply["head"]["status"]
        if status != 200:
            detail = _server_message(reply.get("data"))
            reason = classify(status, detail)
            if reason is not None:
                raise self._refused(kind, status, detail, reason)
            msg = f"{kind} on {self.url} answered {status}: {detail}"
            raise BacklogReadError(msg)
        data_out = reply.get("data")
        if not isinstance(data_out, dict):
            msg = f"{kind} on {self.url} returned no data"
            raise BacklogReadError(msg)
        return data_out

    def _refused(
        self, kind: str, status: int, message: str, reason: CapabilityReason
    ) -> BacklogCapabilityError:
        return BacklogCapabilityError(
            url=self.url,
            kind=kind,
            status=status,
            server_message=message,
            reason=reason,
            token_sent=self.token is not None,
        )

    async def _pages(self, kind: str, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Every record of a search, following the cursor."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            data = {**query, "limit": self.page_size}
            if cursor is not None:
                data["cursor"] = cursor
            page = await self._send(kind, data)
            items = page.get(key)
            if not isinstance(items, list):
                msg = f"{kind} on {self.url} returned no {key!r} list"
                raise BacklogReadError(msg)
            records.extend(item for item in items if isinstance(item, dict))
            next_cursor = page.get("cursor")
            if not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
                return records
            cursor = next_cursor

    async def task_ids(self, state: str) -> set[str]:
        found = await self._pages("task.search", "tasks", {"state": state})
        return {str(t["id"]) for t in found if "id" in t}

    async def scan(self) -> dict[str, Backlog]:
        """The backlog of every group with work, from one pass over tasks and promises."""
        pending = await self.task_ids("pending")
        acquired = await self.task_ids("acquired")
        promises = await self._pages("promise.search", "promises", {"state": "pending"})
        return join_backlogs(promises, pending, acquired)

    async def read_groups(self, groups: list[str]) -> dict[str, Backlog]:
        """Backlogs of ``groups`` (a group without work has an empty backlog)."""
        found = await self.scan()
        return {group: found.get(group, EMPTY) for group in groups}

    async def read(self, group: str) -> Backlog:
        """The backlog of one group."""
        return (await self.read_groups([group]))[group]


def group_of(target: object) -> str | None:
    """The group an anycast address routes to (``poll://any@{group}[/...]``), else None."""
    if not isinstance(target, str) or not target.startswith(ANYCAST_PREFIX):
        return None
    return target[len(ANYCAST_PREFIX) :].split("/", 1)[0] or None


def join_backlogs(
    promises: list[dict[str, Any]], pending: set[str], acquired: set[str]
) -> dict[str, Backlog]:
    """Count, per group, the pending promises whose task is pending or acquired."""
    counts: dict[str, tuple[int, int]] = {}
    for promise in promises:
        tags = promise.get("tags")
        group = group_of(tags.get(TARGET_TAG)) if isinstance(tags, dict) else None
        if group is None:
            continue
        task_id = str(promise.get("id"))
        waiting, running = counts.get(group, (0, 0))
        counts[group] = (waiting + (task_id in pending), running + (task_id in acquired))
    return {group: Backlog(*pair) for group, pair in counts.items() if sum(pair)}


class BacklogSource(Protocol):
    """What the autoscaler reads a group's backlog from."""

    @property
    def url(self) -> str: ...

    async def read(self, group: str) -> Backlog: ...


@dataclass(frozen=True)
class Snapshot:
    """Every group's backlog as one scan found it."""

    backlogs: dict[str, Backlog]
    #: Wall-clock time the scan finished (seconds since the epoch).
    scanned_at: float
    #: How long the scan took, in seconds.
    duration: float


class SharedScan:
    """One scan of a server for every group, shared by all its readers for ``max_age`` seconds.

    Concurrent readers wait for the same scan (one in flight at a time). A
    failed scan is not kept: every waiter gets its error and the next read
    scans again.
    """

    def __init__(
        self,
        reader: BacklogReader,
        max_age_seconds: float,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self.reader = reader
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: Snapshot | None = None
        self._last_at = 0.0
        #: Scans made (for tests and metrics).
        self.scans = 0

    @property
    def url(self) -> str:
        return self.reader.url

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            if self._last is not None and self._clock() - self._last_at < self.max_age_seconds:
                return self._last
            started = self._clock()
            backlogs = await self.reader.scan()
            self.scans += 1
            self._last_at = self._clock()
            self._last = Snapshot(backlogs, time.time(), self._last_at - started)
            return self._last

    async def read(self, group: str) -> Backlog:
        return (await self.snapshot()).backlogs.get(group, EMPTY)

    async def close(self) -> None:
        await self.reader.close()
