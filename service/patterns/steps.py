"""Spawning children from a pattern, with the cache outcome counted.

``ctx.run`` children (leaf steps) run in this process, so whether one was
answered from the store or had to execute is known exactly: the step body
either ran or it did not. :func:`spawn_local` wraps the child so the first
line of its body notes that it ran; :meth:`LocalChild.result` then counts a
cache hit (settled promise replayed from the store) or a miss. ``ctx.rpc``
children run elsewhere and are counted from the server's replies instead
(see :mod:`service.telemetry.network`).
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

    def __init__(
        self, future: ResonateFuture[Any], function: str, ran: list[bool], telemetry: Telemetry
    ) -> None:
        self._future = future
        self._function = function
        self._ran = ran
        self._telemetry = telemetry

    async def result(self) -> Any:
        """The child's value (or its error), counting a hit or miss once it settles."""
        try:
            value = await self._future
        except Exception:
            self._count()
            raise
        self._count()
        return value

    def _count(self) -> None:
        self._telemetry.metrics.cache_result(self._function, "child", hit=not self._ran[0])


def spawn_local(
    ctx: Context,
    function: str,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    retry_policy: RetryPolicy | None = None,
) -> LocalChild:
    """Start ``fn(*args)`` as a durable ``ctx.run`` child named ``function``."""
    ran = [False]

    async def step(child_ctx: Context, *step_args: Any) -> Any:
        ran[0] = True
        return await fn(child_ctx, *step_args)

    step.__name__ = function
    caller = ctx.options(retry_policy=retry_policy) if retry_policy is not None else ctx
    future = caller.run(step, *args)
    return LocalChild(future, function, ran, ctx.get_dependency(Telemetry))
