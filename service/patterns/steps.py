"""Spawning children from a pattern, with the cache outcome counted.

``ctx.run`` children (leaf steps) run in this process, so whether one was
answered from the store or had to execute is known exactly: every body that
starts is recorded by the instrumentation under its promise id. When a
:class:`LocalChild` settles it asks whether its own id ran here: if not, the
result was replayed from the store (a cache hit), otherwise it was computed
(a miss). ``ctx.rpc`` children run elsewhere and are counted from the
server's replies instead (see :mod:`service.telemetry.network`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.telemetry.instrument import Telemetry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resonate.context import Context, ResonateFuture
    from resonate.retry import RetryPolicy


class LocalChild:
    """A spawned ``ctx.run`` child; await :meth:`result` for its value."""

    def __init__(self, future: ResonateFuture[Any], function: str, telemetry: Telemetry) -> None:
        self._future = future
        self._function = function
        self._telemetry = telemetry

    async def result(self) -> Any:
        """The child's value (or its error), counting a hit or miss once it settles."""
        try:
            value = await self._future
        except Exception:
            await self._count()
            raise
        await self._count()
        return value

    async def _count(self) -> None:
        child_id = await self._future.id()
        hit = not self._telemetry.ran(child_id)
        self._telemetry.metrics.cache_result(self._function, "child", hit=hit)


def spawn_local(
    ctx: Context,
    function: str,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    retry_policy: RetryPolicy | None = None,
) -> LocalChild:
    """Start ``fn(*args)`` (an instrumented durable function) as a ``ctx.run`` child."""
    caller = ctx.options(retry_policy=retry_policy) if retry_policy is not None else ctx
    return LocalChild(caller.run(fn, *args), function, ctx.get_dependency(Telemetry))
