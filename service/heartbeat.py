"""Lease heartbeats that start one interval after the lease, not at once.

The SDK's heartbeat sends a ``task.heartbeat`` the moment the first task of
an idle worker starts, although that task's lease was granted a moment ago
with the full TTL. For a chain of short executions (factorial recursion) that
is one extra request per execution. :class:`LeaseHeartbeat` beats every
``interval`` for the tasks it tracks, the first time one interval after the
loop starts; it speaks the protocol directly over the worker's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from service.protocol import request_envelope
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from resonate_base.connections import Network


class LeaseHeartbeat:
    """Implements the SDK's ``Heartbeat`` protocol (start/stop/shutdown)."""

    def __init__(self, pid: str, interval_seconds: float, network: Network) -> None:
        self.pid = pid
        self.interval = interval_seconds
        self.network = network
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
                    await self._beat()

    async def _beat(self) -> None:
        tasks = [{"id": t, "version": v} for t, v in self.active.items()]
        envelope = request_envelope(
            "task.heartbeat", {"pid": self.pid, "tasks": tasks}, origin="hb"
        )
        try:
            await self.network.send(json.dumps(envelope), {})
        except Exception as exc:  # keep beating; a lapsed lease is re-delivered
            self._log.warning("heartbeat_failed", error=str(exc))
