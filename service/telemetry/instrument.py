"""Per-execution instrumentation of durable functions.

:func:`instrumented` wraps a durable function so each run of its body logs
one line when it starts and one when it ends (outcome, duration) with the
promise id, root id, function, depth and attempt bound as log context, and
feeds the execution metrics. :class:`Telemetry` is the per-process object the
wrapper reaches through ``ctx.get_dependency``: the metrics plus the small
bounded state the metrics need (attempt counts, deepest depth per root).

Depth is read from the promise id: the SDK mints child ids as
``origin:1.2.3``, one lineage segment per level below the root.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from resonate.error import Suspended

from service.telemetry.logging import EXECUTION_CONTEXT, get_logger

if TYPE_CHECKING:
    from resonate.context import Context

    from service.telemetry.metrics import Outcome, WorkerMetrics

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


class _Lru[V]:
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
    """Metrics plus the bookkeeping behind attempts and per-root max depth."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._attempts: _Lru[int] = _Lru(_TRACK_LIMIT)
        self._root_depth: _Lru[int] = _Lru(_TRACK_LIMIT)

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

    def ran(self, promise_id: str) -> bool:
        """Whether a body ran for ``promise_id`` in this process (recently)."""
        return self._attempts.get(promise_id) is not None

    def root_resolved(self, function: str, origin: str) -> None:
        """Observe the deepest level seen under ``origin`` and forget the root."""
        deepest = self._root_depth.pop(origin)
        self.metrics.root_finished(function, deepest if deepest is not None else 0)


def _summarize(args: tuple[Any, ...]) -> str:
    text = repr(args[0]) if len(args) == 1 else repr(args)
    if len(text) > _ARGS_SUMMARY_CHARS:
        return text[: _ARGS_SUMMARY_CHARS - 3] + "..."
    return text


type DurableFn = Callable[..., Awaitable[Any]]


def instrumented[F: DurableFn](name: str) -> Callable[[F], F]:
    """Decorate a durable function so every run of its body is logged and measured.

    The wrapper keeps the wrapped signature visible (``functools.wraps``),
    which the SDK inspects to bind arguments.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> Any:
            telemetry = ctx.get_dependency(Telemetry)
            info = ctx.info
            depth = depth_of(info.id)
            attempt = telemetry.begin(info.id, info.origin_id, depth)
            context = {
                "promise_id": info.id,
                "root_id": info.origin_id,
                "function": name,
                "depth": depth,
                "attempt": attempt,
            }
            # Explicit on these two lines, and the context of anything logged
            # while the body runs (the SDK, aiohttp, ...).
            log = get_logger("service.execution")
            in_flight = telemetry.metrics.in_flight_for(name)
            outcome: Outcome = "resolved"
            token = EXECUTION_CONTEXT.set(context)
            try:
                log.info("execution_started", args=_summarize(args), **context)
                started = time.perf_counter()
                in_flight.inc()
                error: str | None = None
                try:
                    return await fn(ctx, *args, **kwargs)
                except Suspended:
                    outcome = "suspended"
                    raise
                except Exception as exc:
                    outcome = "rejected"
                    error = str(exc)
                    raise
                except BaseException:
                    # A platform failure or cancellation: the task is released
                    # and the server delivers it again.
                    outcome = "retried"
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    in_flight.dec()
                    telemetry.metrics.execution_finished(name, depth, outcome, seconds)
                    if outcome == "resolved" and depth == 0:
                        telemetry.root_resolved(name, info.origin_id)
                    fields: dict[str, Any] = {
                        **context,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 3),
                    }
                    if error is not None:
                        fields["error"] = error
                    log.info("execution_finished", **fields)
            finally:
                EXECUTION_CONTEXT.reset(token)

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


__all__ = ["Telemetry", "depth_of", "instrumented"]
