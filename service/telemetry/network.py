"""Count cache hits and misses where the truth is visible: the server's replies.

:class:`TappedNetwork` wraps the SDK's :class:`~resonate_base.connections.Network`
(the request/response channel) and hands every request/reply pair to a
:class:`ReplyObserver`, which reads:

* top-level creates (``task.create`` / ``promise.create`` carrying a function
  call): the reply's promise state says whether the invocation was served
  from the store (hit) or has to execute (miss);
* fenced child creates of rpc children (``task.fence`` + ``promise.create``):
  an already-settled reply is a hit, the result read back from the store;
* a ``task.acquire`` reply at version 1 for a child task: the first
  execution of that child anywhere in the group (the server bumps the
  version on every acquire, starting from 0), i.e. a miss counted once, by
  the worker that runs it;
* a version above 1: the task was delivered again (resume, release or lost
  lease); a 409 on a fenced write: this process lost its lease.

It also lets a caller :meth:`~ReplyObserver.watch` a promise id and learn the
state of the first record the server returned for it, which is how ``call``
tells "cached" from "computed" without a racy read-before-write.

Observation never raises into the SDK: a reply it cannot read is skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

import msgspec

from service.connector.envelopes import SETTLED_STATES
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.connector.sdk import Network
    from service.telemetry.metrics import WorkerMetrics

_FENCED = frozenset({"task.fence", "task.fulfill", "task.suspend"})


def function_of(param: Any) -> str | None:
    """The function name in a promise's ``param`` (base64 JSON ``TaskData``), if any."""
    if not isinstance(param, dict):
        return None
    data = param.get("data")
    if not isinstance(data, str) or not data:
        return None
    try:
        decoded = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return None
    func = decoded.get("func") if isinstance(decoded, dict) else None
    return func if isinstance(func, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _status(reply: dict[str, Any]) -> int:
    status = _dict(reply.get("head")).get("status")
    return status if isinstance(status, int) else 0


class ReplyObserver:
    """Turns request/reply pairs into cache and lease metrics (see module doc)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        #: Promise id -> state of the first record seen for it (None = not yet).
        self._watched: dict[str, str | None] = {}

    def watch(self, promise_id: str) -> None:
        """Start remembering the first state the server reports for ``promise_id``."""
        self._watched[promise_id] = None

    def first_state(self, promise_id: str) -> str | None:
        """State of the first record seen for a watched id, or None if none yet."""
        return self._watched.get(promise_id)

    def observe(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        kind = request.get("kind")
        data = _dict(request.get("data"))
        out = _dict(reply.get("data"))
        status = _status(reply)
        if kind in _FENCED and status == 409:
            self.metrics.leases_lost.labels(self.metrics.group).inc()
            return
        if kind == "promise.create":
            self._top_level(data, _dict(out.get("promise")))
        elif kind == "task.create":
            self._top_level(_dict(_dict(data.get("action")).get("data")), _dict(out.get("promise")))
        elif kind == "task.fence":
            action = _dict(data.get("action"))
            if action.get("kind") == "promise.create":
                created = _dict(_dict(_dict(out.get("action")).get("data")).get("promise"))
                self._child_create(_dict(action.get("data")), created)
        elif kind == "task.acquire" and status == 200:
            self._acquired(_dict(out.get("task")), _dict(out.get("promise")))
        elif kind in ("promise.get", "promise.register_listener"):
            self._note(_dict(out.get("promise")))

    def _note(self, record: dict[str, Any]) -> None:
        pid, state = record.get("id"), record.get("state")
        if isinstance(pid, str) and isinstance(state, str) and self._watched.get(pid, "") is None:
            self._watched[pid] = state

    def _top_level(self, req: dict[str, Any], record: dict[str, Any]) -> None:
        self._note(record)
        function = function_of(req.get("param"))
        state = record.get("state")
        if function is None or not isinstance(state, str):
            return
        self.metrics.cache_result(function, "invocation", hit=state in SETTLED_STATES)

    def _child_create(self, req: dict[str, Any], record: dict[str, Any]) -> None:
        tags = _dict(req.get("tags"))
        function = function_of(req.get("param"))
        if function is None or "resonate:target" not in tags:
            return
        if record.get("state") in SETTLED_STATES:
            self.metrics.cache_result(function, "child", hit=True)

    def _acquired(self, task: dict[str, Any], record: dict[str, Any]) -> None:
        version = task.get("version")
        if not isinstance(version, int):
            return
        if version > 1:
            self.metrics.tasks_redelivered.labels(self.metrics.group).inc()
            return
        promise_id = record.get("id")
        function = function_of(record.get("param"))
        if function is not None and isinstance(promise_id, str) and ":" in promise_id:
            self.metrics.cache_result(function, "child", hit=False)


def _worth_reading(req: str, reply: str) -> bool:
    """Cheap pre-check on the raw JSON (compact, as the SDK and servers encode it).

    Most requests of a busy worker are ``ctx.run`` child creates (counted where
    they are awaited) and settles (nothing to count); skip decoding those.
    """
    if '"status":409' in reply:
        return True
    if '"resonate:scope":"local"' in req or '"kind":"promise.settle"' in req:
        return False
    return '"kind":"task.heartbeat"' not in req


class TappedNetwork:
    """A :class:`Network` that forwards to ``inner`` and shows each reply to an observer.

    ``owns_inner=False`` when ``inner`` is also registered as a message source
    (the embedded connection): the SDK starts and stops it through that role,
    and starting it twice would run two clock loops.
    """

    def __init__(self, inner: Network, observer: ReplyObserver, *, owns_inner: bool) -> None:
        self.inner = inner
        self.observer = observer
        self._owns_inner = owns_inner
        self._log = get_logger("service.telemetry.network")

    async def start(self) -> None:
        if self._owns_inner:
            await self.inner.start()

    async def stop(self) -> None:
        if self._owns_inner:
            await self.inner.stop()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        reply = await self.inner.send(req, headers)
        if not _worth_reading(req, reply):
            return reply
        try:
            self.observer.observe(msgspec.json.decode(req), msgspec.json.decode(reply))
        except (msgspec.DecodeError, ValueError, TypeError, AttributeError) as exc:
            self._log.debug("reply_not_observed", error=str(exc))
        return reply
