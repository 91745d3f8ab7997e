"""``up --autoscale``: the operator's policy driving local worker processes.

The same :func:`~service.operator.autoscaler.autoscale_step` as in
Kubernetes, with the local stack's supervised worker processes as the scale
target, so the whole loop (backlog appears, workers start, backlog drains,
workers stop after the stabilization window and cooldown) can be watched on
a laptop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from service.operator.autoscaler import Identity, autoscale_step
from service.operator.backlog import BacklogReader
from service.operator.policy import PolicySpec, PolicyState
from service.telemetry.http import health_app, serve_http
from service.telemetry.logging import get_logger
from service.telemetry.metrics import OperatorMetrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.local.supervisor import Stack


class LocalWorkers:
    """The local stack's worker processes as a :class:`ScaleTarget`."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    async def get_replicas(self) -> int:
        return len(self.stack.workers)

    async def set_replicas(self, replicas: int) -> None:
        await self.stack.scale(replicas)


async def autoscale_local(
    stack: Stack,
    spec: PolicySpec,
    stop: asyncio.Event,
    out: Callable[[str], None],
    *,
    interval: float = 2.0,
    metrics: OperatorMetrics | None = None,
    metrics_port: int | None = None,
    token: str | None = None,
) -> None:
    """Scale ``stack``'s workers by its group's backlog until ``stop`` is set.

    With ``metrics_port``, the autoscaler's metrics (the operator's) are served
    on ``/metrics`` there (0 picks a free port), as the operator serves them.
    ``token`` is sent to the server as the operator sends it (RESONATE_TOKEN).
    """
    who = Identity("local", "up", stack.plan.group)
    reader = BacklogReader(stack.plan.url, token=token)
    target = LocalWorkers(stack)
    metrics = metrics or OperatorMetrics()
    state = PolicyState()
    log = get_logger("service.autoscale")
    out(
        f"autoscaling group {who.group!r}: {spec.min_replicas}-{spec.max_replicas} workers, "
        f"{spec.target_tasks_per_replica} tasks per worker, polling every {interval:g}s"
    )
    runner = None
    if metrics_port is not None:
        runner, port = await serve_http(
            health_app(metrics.registry, lambda: not stop.is_set()), stack.plan.host, metrics_port
        )
        out(f"autoscaler metrics http://{stack.plan.host}:{port}/metrics")
    try:
        while not stop.is_set():
            result = await autoscale_step(who, spec, state, reader, target, metrics)
            state = result.decision.state
            backlog = result.backlog
            seen = (
                f"backlog {backlog.total} (pending {backlog.pending}, running {backlog.acquired})"
                if backlog
                else f"backlog unreadable: {result.read_error}"
            )
            if result.scaled:
                out(
                    f"autoscaler: {seen}; scaled {result.direction} "
                    f"{result.current_before} -> {result.current}: {result.decision.reason}"
                )
            log.info(
                "autoscale_step",
                backlog=backlog.total if backlog else None,
                current=result.current,
                desired=result.decision.desired,
                reason=result.decision.reason,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await reader.close()
        if runner is not None:
            await runner.cleanup()
