"""The reconnect grace: a process's leases outlive its stream for a short while.

When a process's last stream closes, :class:`ReconnectGrace` releases the
tasks it holds only after ``grace`` seconds, unless the same process (pid)
opens a stream again first. A live worker whose connection merely dropped
reconnects within 0.1 s and is still running the work it holds; releasing at
once would hand that work to another worker (it would run twice) and fail the
first worker's fenced writes with 409. A killed worker's work is re-delivered
once the grace runs out, instead of after its lease TTL.

The server owns one: it calls :meth:`schedule` when a stream closes, :meth:`keep`
when one opens, and :meth:`stop` when it stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.devserver.engine import Engine
    from service.devserver.hub import Connection, Hub

#: Why a process's leases were released after its last stream closed.
ReleaseReason = Literal["grace_elapsed", "server_stopping"]

#: Most task ids listed in one ``worker_released`` log event.
LOGGED_IDS = 100


@dataclass(frozen=True)
class PendingRelease:
    """A release of one process's leases, waiting out the reconnect grace."""

    #: The group of the stream that closed (for the log).
    group: str
    #: When it closed (event loop clock).
    closed_at: float
    timer: asyncio.TimerHandle


class ReconnectGrace:
    """Releases of disconnected processes' leases, each due when its grace runs out."""

    def __init__(self, engine: Engine, hub: Hub) -> None:
        self.engine = engine
        self.hub = hub
        #: pid -> the release of its leases, due when the grace runs out.
        self.due: dict[str, PendingRelease] = {}
        #: Releases whose grace ran out and that are being applied (``stop`` waits).
        self.releasing: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._log = get_logger("service.devserver")

    @property
    def pending(self) -> frozenset[str]:
        """Processes whose leases will be released unless they reconnect in time."""
        return frozenset(self.due)

    def schedule(self, conn: Connection, grace: float) -> None:
        """Release ``conn.pid``'s leases in ``grace`` seconds unless it reconnects first."""
        loop = asyncio.get_running_loop()
        earlier = self.due.pop(conn.pid, None)
        if earlier is not None:  # cannot happen (a reconnect cancels it); never leak a timer
            earlier.timer.cancel()
        timer = loop.call_later(grace, self._release_due, conn.pid)
        self.due[conn.pid] = PendingRelease(conn.group, loop.time(), timer)

    def keep(self, conn: Connection) -> None:
        """A stream opened: cancel its process's release if one is pending."""
        pending = self.due.pop(conn.pid, None)
        if pending is None:
            return
        pending.timer.cancel()
        self._log.info(
            "worker_reconnected",
            group=conn.group,
            pid=conn.pid,
            after_seconds=round(asyncio.get_running_loop().time() - pending.closed_at, 3),
            leases_kept=len(self.engine.state.leases.get(conn.pid, ())),
        )

    async def release_now(self) -> None:
        """Apply every pending release at once (the server is stopping); leave no timer."""
        self.stopping = True
        due, self.due = self.due, {}
        for pending in due.values():
            pending.timer.cancel()
        for pid, pending in due.items():
            await self._release(pid, pending, "server_stopping")

    async def stop(self) -> None:
        """Let releases under way finish (their effects are committed), then apply the rest."""
        await asyncio.gather(*self.releasing, return_exceptions=True)
        await self.release_now()

    def _release_due(self, pid: str) -> None:
        """The grace ran out: release ``pid``'s leases (timer callback)."""
        pending = self.due.pop(pid, None)
        if pending is None or self.stopping:
            return
        task = asyncio.create_task(self._release(pid, pending, "grace_elapsed"))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _release(self, pid: str, pending: PendingRelease, reason: ReleaseReason) -> None:
        # Checked in the same step as the state change inside ``release_pid``,
        # so a stream opened in between cannot lose its leases. Never
        # cancelled: the change, once applied, is committed and delivered.
        if self.hub.has_pid(pid):
            return
        try:
            released = await self.engine.release_pid(pid)
        except Exception as exc:
            self._log.error("worker_release_failed", pid=pid, error=str(exc))
            return
        self._log.info(
            "worker_released",
            group=pending.group,
            pid=pid,
            reason=reason,
            after_seconds=round(asyncio.get_running_loop().time() - pending.closed_at, 3),
            released_tasks=len(released),
            released_task_ids=released[:LOGGED_IDS],
        )
