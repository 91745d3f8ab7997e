"""Lease heartbeats: one request per origin, started one interval after the lease.

Two differences from the SDK's own heartbeat, both for the official server:

* **One ``task.heartbeat`` per origin.** From resonatehq/resonate PR #1119 on,
  the server answers ``400 "All tasks must belong to the same origin"`` to a
  heartbeat whose tasks come from more than one root (the origin is the part
  of a task id before the first ``:``) and extends no lease at all. A worker
  routinely holds tasks of several roots, so the held tasks are grouped by
  origin and each group is sent on its own. Every reply is checked: a refusal
  or a lost request is logged with its origin and counted
  (``resonate_patterns_heartbeat_failures_total``), and the other origins'
  leases are still extended.
* **No beat at lease start.** The SDK beats the moment an idle worker starts
  a task, although that lease was granted a moment ago with the full TTL; for
  a chain of short executions (factorial recursion) that is one extra request
  per execution. Here the first beat comes one interval after the loop starts.

Requests go through the SDK's own ``Sender`` (correlation checks, ``head.auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import TYPE_CHECKING

from resonate.error import ServerError
from resonate.send import TaskRef

from service.connector.sdk import origin_of
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from resonate.send import Sender

    from service.telemetry.metrics import HeartbeatFailure, WorkerMetrics


def by_origin(active: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    """Held tasks ``{id: version}`` grouped by origin, in a stable order."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for task_id, version in sorted(active.items()):
        groups[origin_of(task_id)].append((task_id, version))
    return dict(groups)


class LeaseHeartbeat:
    """Implements the SDK's ``Heartbeat`` protocol (start/stop/shutdown)."""

    def __init__(
        self,
        pid: str,
        interval_seconds: float,
        sender: Sender,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.pid = pid
        self.interval = interval_seconds
        self.sender = sender
        self.metrics = metrics
        self.active: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._log = get_logger("service.heartbeat")

    def start(self, task_id: str, task_version: int) -> None:
        self.active[task_id] = task_version
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run())

    def stop(self, task_id: str) -> None:
        self.active.pop(task_id, None)
        if not self.active:
            self.shutdown()

    def shutdown(self) -> None:
        self.active.clear()
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.interval)
                if self.active:
                    await self.beat()

    async def beat(self) -> int:
        """Send one heartbeat per origin of the held tasks; return how many were accepted."""
        groups = by_origin(self.active)
        results = await asyncio.gather(*(self._beat(o, tasks) for o, tasks in groups.items()))
        return sum(results)

    async def _beat(self, origin: str, tasks: list[tuple[str, int]]) -> bool:
        refs = [TaskRef(id=task_id, version=version) for task_id, version in tasks]
        try:
            await self.sender.task_heartbeat(self.pid, refs)
        except ServerError as exc:
            self._failed("rejected", origin, len(refs), f"{exc.code}: {exc.message}")
            return False
        except Exception as exc:  # keep beating; a lapsed lease is re-delivered
            self._failed("unreachable", origin, len(refs), str(exc) or type(exc).__name__)
            return False
        return True

    def _failed(self, reason: HeartbeatFailure, origin: str, tasks: int, error: str) -> None:
        self._log.warning(
            "heartbeat_failed", reason=reason, origin=origin, tasks=tasks, error=error
        )
        if self.metrics is not None:
            self.metrics.heartbeat_failed(reason)
