"""``resonate-patterns up``: the local stack in the foreground until SIGINT/SIGTERM.

Claims the data directory (:func:`~service.local.supervisor.claim_stack`),
starts the :class:`~service.local.supervisor.Stack`, prints where everything
is, supervises it and, with ``autoscale``, runs the operator's policy over
the worker processes (:mod:`service.local.autoscale`). On a signal the
autoscaler stops first, then the workers (they drain), then the server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from service.local.autoscale import autoscale_local
from service.local.supervisor import Stack, StackPlan, claim_stack, plan_stack
from service.signals import stop_on_signals

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.config import Settings
    from service.operator.policy import PolicySpec


async def run_stack(
    settings: Settings,
    out: Callable[[str], None],
    *,
    workers: int,
    port: int,
    data: str | None,
    group: str | None,
    server_args: list[str] | None = None,
    autoscale: PolicySpec | None = None,
    poll_seconds: float = 2.0,
    metrics_port: int | None = 0,
) -> int:
    """``up``: run the stack in the foreground until SIGINT/SIGTERM.

    With ``autoscale``, the operator's policy grows and shrinks the worker
    processes by the local server's backlog for the group.
    """
    plan = plan_stack(settings, workers=workers, port=port, data=data, group=group)
    with claim_stack(plan):
        stack = Stack(plan, out=out, server_args=server_args)
        return await _run(stack, plan, settings, out, autoscale, poll_seconds, metrics_port)


async def _run(
    stack: Stack,
    plan: StackPlan,
    settings: Settings,
    out: Callable[[str], None],
    autoscale: PolicySpec | None,
    poll_seconds: float,
    metrics_port: int | None,
) -> int:
    """``run_stack`` once :func:`claim_stack` holds the data directory."""
    stop = stop_on_signals()
    try:
        await stack.start()
    except BaseException:
        await stack.stop_quietly()
        raise
    out(f"resonate-patterns local stack: group {plan.group!r}, {len(plan.worker_ports)} worker(s)")
    for line in stack.describe():
        out(line)
    out("press Ctrl-C to stop")
    scaler: asyncio.Task[None] | None = None
    if autoscale is not None:
        scaler = asyncio.create_task(
            autoscale_local(
                stack,
                autoscale,
                stop,
                out,
                interval=poll_seconds,
                metrics_port=metrics_port,
                token=settings.token,
            )
        )
    try:
        await stack.supervise(stop)
    finally:
        if scaler is not None:
            stop.set()
            await scaler
        await stack.stop()
    return 0
