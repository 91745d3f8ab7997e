"""Spawning ``ctx.run`` children from a pattern.

A child's call is counted where the fact is known, not here: the SDK reports
a child create that went to the server and came back pending (the call is
made for the first time) and the child's instrumented body counts the miss
when it starts (see :mod:`service.connector.observer` and
:mod:`service.telemetry.instrument`). A parent that replays re-reads its
finished children from the store and counts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resonate.context import Context, ResonateFuture
    from resonate.retry import RetryPolicy


def spawn_local(
    ctx: Context,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    retry_policy: RetryPolicy | None = None,
) -> ResonateFuture[Any]:
    """Start ``fn(*args)`` (an instrumented durable function) as a ``ctx.run`` child.

    Await the returned future for the child's value (or its error).
    """
    caller = ctx.options(retry_policy=retry_policy) if retry_policy is not None else ctx
    return caller.run(fn, *args)
