"""The drain gate: stop taking new work without disconnecting.

While a worker drains (SIGTERM), an ``execute`` message delivered to it is
handed back to the server -- acquired, then released at once -- so another
member of the group runs it, while this process keeps its stream and its
leases and finishes what it holds. Disconnecting instead would make a server
that frees a disconnected worker's tasks hand the in-flight work to someone
else. The hand-back uses the SDK's own ``Sender`` (``head.auth`` included).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from resonate.error import ServerError

from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate.send import Sender

    from service.connector.sdk import Source

#: Pause before a hand-back, so a group that is draining as a whole does not spin.
HAND_BACK_DELAY_SECONDS = 0.05


def execute_task(raw: str) -> tuple[str, int] | None:
    """``(task id, version)`` of an ``execute`` message, None for anything else."""
    try:
        msg = json.loads(raw)
        if msg.get("kind") != "execute":
            return None
        task = msg["data"]["task"]
        return str(task["id"]), int(task.get("version", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class DrainGate:
    """A message source wrapper that hands new work back while :attr:`draining`."""

    def __init__(self, inner: Source, sender: Sender, pid: str, ttl_ms: int) -> None:
        self.inner = inner
        self._sender = sender
        self._pid = pid
        self._ttl_ms = ttl_ms
        self.draining = False
        self._bounces: set[asyncio.Task[None]] = set()
        self._log = get_logger("service.drain")

    def unicast(self) -> str:
        return self.inner.unicast()

    def resolve_target(self, target: str) -> str:
        return self.inner.resolve_target(target)

    def recv(self, callback: Callable[[str], None]) -> None:
        def gated(raw: str) -> None:
            if self.draining:
                task = execute_task(raw)
                if task is not None:
                    bounce = asyncio.create_task(self._bounce(*task))
                    self._bounces.add(bounce)
                    bounce.add_done_callback(self._bounces.discard)
                    return
            callback(raw)

        self.inner.recv(gated)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def _bounce(self, task_id: str, version: int) -> None:
        """Give a task delivered during drain back to the group."""
        await asyncio.sleep(HAND_BACK_DELAY_SECONDS)
        try:
            acquired = await self._sender.task_acquire(task_id, version, self._pid, self._ttl_ms)
            await self._sender.task_release(task_id, acquired.task.version)
            self._log.info("task_handed_back", task_id=task_id)
        except ServerError as exc:  # 409: someone else has it already; nothing to hand back
            if exc.code != 409:
                self._log.warning("task_hand_back_failed", task_id=task_id, error=str(exc))
        except Exception as exc:  # the lease simply lapses; the server re-delivers
            self._log.warning("task_hand_back_failed", task_id=task_id, error=str(exc))
