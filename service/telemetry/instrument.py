"""Per-execution instrumentation of durable functions.

:func:`instrumented` wraps a durable function so each run of its body logs
one line when it starts and one when it ends (outcome, duration) with the
promise id, root id, function, depth and attempt bound as log context, and
feeds the execution metrics. :class:`Telemetry` is the per-process object the
wrapper reaches through ``ctx.get_dependency``: the metrics plus the small
bounded state the metrics need (attempt counts, deepest depth per root).

Depth is read from the promise id: the SDK mints child ids as
``origin:1.2.3``, one lineage segment per level below the root.

The wrapper also counts child calls (``promise_cache_misses_total{kind="child"}``),
exactly once per call: a body run is the first run of its call only when the
SDK said so beforehand (:mod:`service.connector.observer` marks the id
through :meth:`Telemetry.expect_first_run`); every other run of a body (a
replay of a suspended parent, a resume, a retry of a failed leaf, a
redirect) counts nothing. A body that reads a keyed cache inline counts its
lookup (``kind="lookup"``) through :meth:`Telemetry.lookup_done`, also once
per call. See docs/metrics.md for the semantics.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from resonate.error import PlatformError, ServerError, Suspended

from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    import contextvars

    from resonate.context import Context

    from service.telemetry.metrics import WorkerMetrics
    from service.telemetry.names import Outcome

#: The status the server answers a fenced write with once the lease moved on.
_LEASE_GONE = 409

#: Bound on per-promise and per-root bookkeeping; oldest entries are evicted.
#: Above the largest fan-out, so a child's "did it run here?" is still known
#: when its parent reads the result.
_TRACK_LIMIT = 200_000
#: Longest argument summary written to a log line.
_ARGS_SUMMARY_CHARS = 160


def depth_of(promise_id: str) -> int:
    """Depth of a promise below its root: the number of lineage segments.

    >>> depth_of("factorial-8"), depth_of("factorial-8:2"), depth_of("factorial-8:2.2.1")
    (0, 1, 3)
    """
    if ":" not in promise_id:
        return 0
    return promise_id.split(":", 1)[1].count(".") + 1


class Lru[V]:
    """A size-bounded mapping that forgets the least recently written key."""

    def __init__(self, limit: int) -> None:
        self._data: OrderedDict[str, V] = OrderedDict()
        self._limit = limit

    def get(self, key: str) -> V | None:
        return self._data.get(key)

    def put(self, key: str, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._limit:
            self._data.popitem(last=False)

    def pop(self, key: str) -> V | None:
        return self._data.pop(key, None)


class Telemetry:
    """Metrics plus the bookkeeping behind attempts, first runs and per-root max depth."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._attempts: Lru[int] = Lru(_TRACK_LIMIT)
        self._root_depth: Lru[int] = Lru(_TRACK_LIMIT)
        #: Calls whose inline cache lookup was counted (see :meth:`lookup_done`).
        self._lookups: Lru[bool] = Lru(_TRACK_LIMIT)
        #: Ids whose next body run is the first run of their call (insertion
        #: order; the oldest is forgotten past the limit).
        self._first_runs: dict[str, bool] = {}

    def expect_first_run(self, promise_id: str) -> None:
        """Note that the next body run of ``promise_id`` is the first run of its call."""
        first = self._first_runs
        first[promise_id] = True
        if len(first) > _TRACK_LIMIT:
            del first[next(iter(first))]

    def take_first_run(self, promise_id: str) -> bool:
        """Whether this body run of ``promise_id`` is its call's first (true at most once)."""
        return self._first_runs.pop(promise_id, False)

    def lookup_counted(self, promise_id: str) -> bool:
        """Whether call ``promise_id`` has had its inline lookup counted in this process."""
        return self._lookups.get(promise_id) is not None

    def lookup_done(self, function: str, promise_id: str, *, hit: bool) -> None:
        """Count the keyed-cache lookup made by the first run of call ``promise_id``.

        For a body that reads the cache of ``function`` inline (not as a
        durable child): the caller passes only lookups made under the task's
        first lease (version 1), which are all in this process; a redirect
        re-runs the body under that same lease, so each id counts at most once.
        """
        if self._lookups.get(promise_id) is None:
            self._lookups.put(promise_id, True)
            self.metrics.cache_result(function, "lookup", hit=hit)

    @property
    def group(self) -> str:
        return self.metrics.group

    def begin(self, promise_id: str, origin: str, depth: int) -> int:
        """Note that a body starts; return its attempt number in this process."""
        attempt = (self._attempts.get(promise_id) or 0) + 1
        self._attempts.put(promise_id, attempt)
        deepest = self._root_depth.get(origin)
        if deepest is None or depth > deepest:
            self._root_depth.put(origin, depth)
        return attempt

    def root_resolved(self, function: str, origin: str) -> None:
        """Observe the deepest level seen under ``origin`` and forget the root."""
        deepest = self._root_depth.pop(origin)
        self.metrics.root_finished(function, deepest if deepest is not None else 0)


def _summarize(args: tuple[Any, ...]) -> str:
    text = repr(args[0]) if len(args) == 1 else repr(args)
    if len(text) > _ARGS_SUMMARY_CHARS:
        return text[: _ARGS_SUMMARY_CHARS - 3] + "..."
    return text


def lease_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK reporting a fenced write refused because the lease moved on."""
    return isinstance(exc, PlatformError) and any(
        isinstance(cause, ServerError) and cause.code == _LEASE_GONE for cause in exc.causes
    )


type DurableFn = Callable[..., Awaitable[Any]]

#: The execution context bound for the length of a body, in this order.
_CONTEXT_KEYS = ("promise_id", "root_id", "function", "depth", "attempt")
#: structlog's context variables for :data:`_CONTEXT_KEYS`, once known.
_context_vars: tuple[contextvars.ContextVar[Any], ...] = ()


def _bind(context: dict[str, Any]) -> list[contextvars.Token[Any]]:
    """``bind_contextvars(**context)`` for :data:`_CONTEXT_KEYS`, at a fifth of its cost.

    structlog keeps one ``ContextVar`` per key for the life of the process;
    the first bind learns them from its tokens (``Token.var``), later binds set
    them directly instead of looking each up by its prefixed name.
    """
    global _context_vars
    if not _context_vars:
        tokens = structlog.contextvars.bind_contextvars(**context)
        _context_vars = tuple(tokens[key].var for key in _CONTEXT_KEYS)
        return [tokens[key] for key in _CONTEXT_KEYS]
    return [var.set(context[key]) for var, key in zip(_context_vars, _CONTEXT_KEYS, strict=True)]


def _unbind(tokens: list[contextvars.Token[Any]]) -> None:
    """Restore what :func:`_bind` replaced (``reset_contextvars``), last bound first."""
    for token in reversed(tokens):
        token.var.reset(token)


def instrumented[F: DurableFn](name: str) -> Callable[[F], F]:
    """Decorate a durable function so every run of its body is logged and measured.

    The first run of a child call counts one ``child`` miss for ``name``.

    The wrapper keeps the wrapped signature visible (``functools.wraps``),
    which the SDK inspects to bind arguments.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> Any:
            telemetry = ctx.get_dependency(Telemetry)
            info = ctx.info
            promise_id = info.id
            if telemetry.take_first_run(promise_id):
                telemetry.metrics.cache_result(name, "child", hit=False)
            depth = depth_of(promise_id)
            origin = info.origin_id
            attempt = telemetry.begin(promise_id, origin, depth)
            context = {
                "promise_id": promise_id,
                "root_id": origin,
                "function": name,
                "depth": depth,
                "attempt": attempt,
            }
            # Explicit on these two lines (so they are there even where context
            # variables are not merged, as in structlog's ``capture_logs``), and
            # bound for anything logged while the body runs (the SDK, aiohttp).
            # Both lines are rendered by the sink's flush, after the body's
            # first request or the result is sent (see service.telemetry.logging).
            log = get_logger("service.execution")
            series = telemetry.metrics.execution_series(name)
            in_flight = series.in_flight
            outcome: Outcome = "resolved"
            tokens = _bind(context)
            try:
                log.info("execution_started", args=_summarize(args), **context)
                started = time.perf_counter()
                in_flight.inc()
                error: str | None = None
                try:
                    result = await fn(ctx, *args, **kwargs)
                except Suspended:
                    outcome = "suspended"
                    raise
                except Exception as exc:
                    outcome = "rejected"
                    error = str(exc)
                    raise
                except BaseException as exc:
                    # A platform failure or cancellation: the task is released
                    # and the server delivers it again. Counted once per
                    # execution, where it reaches the task's root function.
                    outcome = "retried"
                    if info.parent_id == promise_id and lease_gone(exc):
                        telemetry.metrics.lease_lost()
                    raise
                else:
                    return result
                finally:
                    seconds = time.perf_counter() - started
                    in_flight.dec()
                    series.finished(depth, outcome, seconds)
                    if outcome == "resolved" and depth == 0:
                        telemetry.root_resolved(name, origin)
                    fields: dict[str, Any] = {
                        **context,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 3),
                    }
                    if error is not None:
                        fields["error"] = error
                    log.info("execution_finished", **fields)
            finally:
                _unbind(tokens)

        # The SDK builds a DurableFunction (signature inspection plus string
        # annotation evaluation) on every ``ctx.run`` of a function object.
        # Patterns validate their own inputs, so hand it a signature with no
        # annotations: nothing to evaluate, nothing coerced behind our back.
        signature = inspect.signature(fn)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["Lru", "Telemetry", "depth_of", "instrumented", "lease_gone"]
