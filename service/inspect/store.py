"""Read a call that is running or finished: its promise and the promises under it.

Everything here reads the store through the SDK's public promises client
(``Resonate.promises``: ``promise.get`` and ``promise.search``), so it works
the same against a Resonate server (the official one or the local one) and on
the embedded store, and values come back decoded from their wire form
(base64 JSON). Rejection values are shown by their ``message`` only: the
SDK's pickled exception payload is never unpickled here.

How the promises under a call are found, with nothing but the official
protocol: the SDK tags every promise of an invocation -- the root and every
``ctx.run``/``ctx.rpc`` descendant, at any depth -- with
``resonate:origin = <root id>``, and descendant ids extend the root's as
lineage ids (``root:1``, ``root:1.2``). ``promise.search`` filters by tags
and pages with ``cursor`` = "ids greater than this one", so one search with
``tags={"resonate:origin": root}`` starting at the cursor ``root`` (an id
never sorts after its own extensions, whatever the database collation)
returns exactly the descendants, a page of at most :data:`PAGE` at a time.
Only server-given cursors are followed after that: a made-up cursor (such as
``root;`` to skip a subtree) is not safe on a Postgres-backed official
server, whose id order follows the database collation, not bytes.

The facts come back as JSON-ready dicts (what ``get --json`` and
``GET /v1/promises/{id}`` answer); :mod:`service.inspect.render` turns them
into text for people.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from resonate.error import ConnectorError, ServerError

from service.connector.envelopes import SETTLED_STATES
from service.errors import AuthRefusedError, ResonatePatternsError, ServerUnreachableError
from service.inspect.render import shorten
from service.patterns.factorial import CACHE_TAG

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from service.config import Settings
    from service.runtime import Runtime

#: Records per ``promise.search`` request: the largest page the official server allows.
PAGE = 1000
#: Longest ``args`` text a description carries (the full arguments are in the store).
ARGS_CHARS = 120

_ORIGIN = "resonate:origin"


class _Value(Protocol):
    @property
    def data(self) -> Any: ...


class _Record(Protocol):
    """The fields of the SDK's (decoded) promise record that this module reads."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def param(self) -> _Value: ...
    @property
    def value(self) -> _Value: ...
    @property
    def tags(self) -> dict[str, str]: ...
    @property
    def timeout_at(self) -> int: ...
    @property
    def created_at(self) -> int: ...
    @property
    def settled_at(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Children:
    """How many promises exist under a call, and how many of them are settled."""

    created: int
    settled: int

    @property
    def pending(self) -> int:
        return self.created - self.settled

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "settled": self.settled, "pending": self.pending}


class PromiseNotFoundError(ResonatePatternsError):
    """No promise has this id (in the store the command reads)."""

    def __init__(self, promise_id: str, where: str) -> None:
        self.promise_id = promise_id
        self.where = where
        super().__init__(f"no promise {promise_id!r} {where}")


@contextlib.asynccontextmanager
async def reader(settings: Settings) -> AsyncIterator[Runtime]:
    """A client runtime for reading the store only; closed on exit.

    Not started: no event stream is opened, and on an embedded store no
    pending work is resumed (the store is loaded, but nothing is dispatched),
    so ``get`` and ``ls`` never execute anything. Unstarted, a remote request
    that cannot connect fails at once instead of retrying, and becomes a
    :class:`ServerUnreachableError`.
    """
    from service.runtime import build_runtime

    runtime = build_runtime(settings, role="client")
    try:
        yield runtime
    except ConnectorError as exc:
        url = settings.resonate_url or "(embedded)"
        raise ServerUnreachableError(url, _reason(exc.error), advice=False) from None
    finally:
        await runtime.stop()


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words (``Connection refused``), not an errno dump."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _refused(exc: ServerError, promise_id: str | None) -> None:
    """Raise a refused token (401/403) as the project's AuthRefusedError."""
    if exc.code in (401, 403):
        raise AuthRefusedError(exc.code, exc.message, promise_id) from None


async def _get(runtime: Runtime, promise_id: str) -> _Record | None:
    try:
        record: _Record = await runtime.resonate.promises.get(promise_id)
    except ServerError as exc:
        if exc.code == 404:
            return None
        _refused(exc, promise_id)
        raise
    return record


async def _pages(
    runtime: Runtime, *, state: str | None, tags: dict[str, str] | None, cursor: str | None
) -> AsyncIterator[Sequence[_Record]]:
    """Every record matching ``state`` and ``tags`` with an id above ``cursor``, page by page."""
    while True:
        try:
            page = await runtime.resonate.promises.search(state, tags, PAGE, cursor)
        except ServerError as exc:
            _refused(exc, None)
            raise
        records: Sequence[_Record] = page.promises
        yield records
        if not page.cursor:
            return
        cursor = page.cursor


def root_of(promise_id: str) -> str:
    """The top-level id a lineage id belongs to (``root:1.2`` -> ``root``)."""
    return promise_id.split(":", 1)[0]


def _subtree_prefix(promise_id: str) -> str:
    """What the ids of a promise's descendants start with (``root:``, ``root:1.``)."""
    return promise_id + ("." if ":" in promise_id else ":")


async def children(runtime: Runtime, promise_id: str) -> Children:
    """Count the promises under ``promise_id`` (any depth) and the settled ones.

    Costs one ``promise.search`` per :data:`PAGE` descendants of the root.
    """
    prefix = _subtree_prefix(promise_id)
    created = settled = 0
    tags = {_ORIGIN: root_of(promise_id)}
    async for page in _pages(runtime, state=None, tags=tags, cursor=promise_id):
        for record in page:
            if record.id.startswith(prefix):
                created += 1
                settled += record.state in SETTLED_STATES
    return Children(created, settled)


async def progress(runtime: Runtime, root_id: str) -> tuple[int, int]:
    """(settled, created) promises under ``root_id`` so far, for a progress line.

    One search request per :data:`PAGE` promises under the call (a fan-out of
    5,000 is five requests); the caller paces its polls by what a poll costs
    (see :func:`poll_interval`).
    """
    counted = await children(runtime, root_id)
    return counted.settled, counted.created


def poll_interval(last_poll_seconds: float, *, floor: float = 0.5) -> float:
    """Seconds to wait before the next progress poll: ``floor``, or 9x what the last one took.

    A poll is a read the server serializes with its writes (the official
    server runs every request in one storage transaction), so one watcher
    takes at most a tenth of the store's time however large the fan-out:
    4,000-5,000 children cost 55-75 ms a poll on the local server (0.5-0.7 s
    apart) and 170-230 ms on the official v0.9.8 with SQLite (1.5-2 s apart).
    """
    return max(floor, 9 * last_poll_seconds)


def _function_of(record: _Record) -> str | None:
    """The registered function a promise runs, or the pattern that published it."""
    data = record.param.data
    if isinstance(data, dict) and isinstance(data.get("func"), str):
        return str(data["func"])
    return record.tags.get(CACHE_TAG)


def _args_of(record: _Record) -> str | None:
    data = record.param.data
    if isinstance(data, dict) and isinstance(data.get("args"), list):
        return shorten(json.dumps(data["args"]), ARGS_CHARS)
    return None


def _kind_of(record: _Record) -> str:
    if ":" in record.id:
        return "child"
    if record.tags.get(_ORIGIN) == record.id:
        return "invocation"
    if CACHE_TAG in record.tags:
        return "cache"
    return "promise"


def error_of(state: str, value: Any) -> str | None:
    """The failure message of a settled promise (None unless it was rejected)."""
    if state == "pending" or state == "resolved":
        return None
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return str(value["message"])
    if state == "rejected_timedout":
        return "timed out before it settled"
    if state == "rejected_canceled":
        return "canceled"
    return "rejected" if value is None else shorten(json.dumps(value), 200)


def _duration_ms(record: _Record) -> int | None:
    if record.settled_at is None:
        return None
    return max(0, record.settled_at - record.created_at)


async def describe(runtime: Runtime, promise_id: str) -> dict[str, Any] | None:
    """What is known about promise ``promise_id``, as a JSON-ready dict; None if there is none.

    Keys (always all present):

    * ``id``; ``root`` (the top-level id it belongs to); ``kind``: ``invocation``
      (a top-level call), ``child`` (a promise under one), ``cache`` (a value
      published by the factorial cache) or ``promise`` (anything else);
    * ``state``: ``pending``, ``resolved``, ``rejected``, ``rejected_canceled``
      or ``rejected_timedout``;
    * ``pattern``: the function it runs (null for ``ctx.run`` children, whose
      promises do not record it); ``args``: its arguments as JSON text, cut
      to :data:`ARGS_CHARS` characters (null when not recorded);
    * ``value``: the result once resolved (else null); ``error``: the failure
      message once rejected (else null);
    * ``created_at``, ``settled_at`` (null while pending), ``timeout_at``:
      milliseconds since the epoch, server clock; ``duration_ms``:
      ``settled_at - created_at`` (null while pending);
    * ``children``: ``{created, settled, pending}`` over every promise below
      this one (any depth).
    """
    record = await _get(runtime, promise_id)
    if record is None:
        return None
    counted = await children(runtime, promise_id)
    value = record.value.data
    return {
        "id": record.id,
        "root": root_of(record.id),
        "kind": _kind_of(record),
        "state": record.state,
        "pattern": _function_of(record),
        "args": _args_of(record),
        "value": value if record.state == "resolved" else None,
        "error": error_of(record.state, value),
        "created_at": record.created_at,
        "settled_at": record.settled_at,
        "timeout_at": record.timeout_at,
        "duration_ms": _duration_ms(record),
        "children": counted.as_dict(),
    }


async def list_invocations(
    runtime: Runtime, *, pending_only: bool, pattern: str | None, limit: int
) -> list[dict[str, Any]]:
    """Top-level invocations (ids without ``:``), newest first, at most ``limit``.

    Each entry: ``id``, ``state``, ``pattern``, ``args`` (short JSON text),
    ``created_at``, ``settled_at``, ``duration_ms`` -- no values (``get`` has
    them). Values published by the factorial cache are not invocations and
    are left out. The protocol has no "top-level only" or "newest first"
    query, so this reads every promise the SDK marks global-scope (roots and
    rpc children; ``ctx.run`` children are skipped by the server), or only
    pending ones with ``pending_only``, and sorts them here.
    """
    state = "pending" if pending_only else None
    found: list[dict[str, Any]] = []
    async for page in _pages(runtime, state=state, tags={"resonate:scope": "global"}, cursor=None):
        for record in page:
            if _kind_of(record) != "invocation":
                continue
            function = _function_of(record)
            if pattern is not None and function != pattern:
                continue
            found.append(
                {
                    "id": record.id,
                    "state": record.state,
                    "pattern": function,
                    "args": _args_of(record),
                    "created_at": record.created_at,
                    "settled_at": record.settled_at,
                    "duration_ms": _duration_ms(record),
                }
            )
    found.sort(key=lambda e: (-e["created_at"], e["id"]))
    return found[:limit]
