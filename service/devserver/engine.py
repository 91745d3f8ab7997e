"""The local server's engine: state, clock loop, durable group commit, delivery.

Used two ways with the same code: behind the HTTP server (``resonate-patterns
server``) and in-process for embedded mode. Each request is applied to the
in-memory :class:`~service.devserver.state.ServerState` at once; its reply
and any push messages it produced are released only after every change made
so far is committed to the store. Requests applied in the same event-loop
turn share one commit (group commit), so the durability cost is paid per
batch, not per request.

The clock loop expires promise deadlines and task leases and resends
pending tasks, on the server's own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING

from service.connector.sdk import now_ms
from service.devserver import rows
from service.devserver.state import ServerState
from service.devserver.store import MEMORY, Store
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from service.devserver.dispatch import Gate, Reply
    from service.devserver.metrics import ServerMetrics
    from service.devserver.model import Outgoing

#: Longest the clock loop sleeps; bounds how late a deadline can fire.
MAX_TICK_SECONDS = 0.1


class Engine:
    """Serializes requests onto one state, commits them, and hands out messages."""

    def __init__(
        self,
        *,
        data: str = MEMORY,
        fsync: bool = False,
        deliver: Callable[[list[Outgoing]], None],
        retry_ms: int | None = None,
        clock: Callable[[], int] = now_ms,
        metrics: ServerMetrics | None = None,
        release_leases_on_start: bool = False,
        gate: Gate | None = None,
    ) -> None:
        self.state = ServerState() if retry_ms is None else ServerState(retry_ms=retry_ms)
        self.store: Store | None = None if data == MEMORY else Store(data, fsync=fsync)
        self._deliver = deliver
        self._clock = clock
        self._metrics = metrics
        self._release_on_start = release_leases_on_start
        #: Access check on every request (the HTTP server's JWT auth), or None.
        self._gate = gate
        self._applied = 0
        self._durable = 0
        #: (change number, then, failed) of each request waiting for its commit.
        self._waiters: list[tuple[int, Callable[[], None], Callable[[Exception], None]]] = []
        self._flush_scheduled = False
        self._ticker: asyncio.Task[None] | None = None
        self._log = get_logger("service.devserver")
        if self.store is not None:
            promises, tasks, schedules = self.store.load()
            rows.load(self.state, promises, tasks, schedules)
            self._log.info(
                "store_loaded",
                path=data,
                promises=len(promises),
                tasks=len(tasks),
                pending_tasks=len(self.state.tasks_by_state["pending"]),
            )

    async def start(self) -> None:
        """Start the clock loop and re-dispatch every task that is waiting."""
        if self._release_on_start:
            # Embedded mode: every lease in the store was held by an earlier
            # run of this same process, which is gone. Put that work back.
            now = self._clock()
            for pid in list(self.state.leases):
                self.state.release_pid(now, pid, dispatch=False)
        self.state.resend_pending()
        await self._settle_effects()
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._wait_durable(self._applied)
        if self.store is not None:
            self.store.close()
            self.store = None

    async def request(self, envelope: object) -> Reply:
        """Apply one decoded request envelope; return its reply once the change is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self.submit(envelope, partial(_set_result, fut), partial(_set_exception, fut))
        return await fut

    def submit(
        self,
        envelope: object,
        done: Callable[[Reply], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Apply one decoded request envelope; call ``done(reply)`` once the change is durable.

        :meth:`request` without a coroutine: ``done`` runs before this returns
        when nothing is left to commit (a read), else from the group commit
        itself, so the reply goes out in the commit's own loop turn instead of
        waking a task one turn later. What the apply raises propagates from
        here; what the commit or the delivery raises goes to ``failed``. Once
        the apply succeeded, exactly one of ``done`` and ``failed`` is called.
        """
        started = time.perf_counter()
        reply = self.state.apply(self._clock(), envelope, self._gate)
        outbox = self.state.take_outbox()
        if self._has_dirty():
            self._applied += 1

        def then() -> None:
            try:
                # As in ``_settle_effects``: messages go out only once durable.
                self._deliver(outbox)
                if self._metrics is not None:
                    seconds = time.perf_counter() - started
                    self._metrics.observe_request(reply.kind, reply.status, seconds)
            except Exception as exc:
                failed(exc)
                return
            done(reply)

        self._when_durable(self._applied, then, failed)

    async def release_pid(self, pid: str) -> list[str]:
        """Release every task leased to ``pid``; return their ids."""
        released = self.state.release_pid(self._clock(), pid)
        await self._settle_effects()
        return released

    async def resend_unacquired(self, sent: Iterable[tuple[str, int]]) -> list[str]:
        """Re-send each ``execute`` (task id, version) whose task is still not acquired."""
        resent = self.state.resend_unacquired(self._clock(), sent)
        await self._settle_effects()
        return resent

    async def _settle_effects(self) -> None:
        """Make the state's pending changes durable, then deliver its messages."""
        outbox = self.state.take_outbox()
        if self._has_dirty():
            self._applied += 1
        await self._wait_durable(self._applied)
        # Called even with nothing to send: a change may have freed room on
        # a flow-controlled stream, so held work can go out (``Hub.pump``).
        self._deliver(outbox)

    def _has_dirty(self) -> bool:
        s = self.state
        return bool(s.dirty_promises or s.dirty_tasks or s.dirty_schedules)

    async def _wait_durable(self, target: int) -> None:
        if self.store is None:
            self.state.clear_dirty()
            self._durable = self._applied
            return
        if target <= self._durable:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._when_durable(target, partial(_set_result, fut, None), partial(_set_exception, fut))
        await fut

    def _when_durable(
        self, target: int, then: Callable[[], None], failed: Callable[[Exception], None]
    ) -> None:
        """Call ``then()`` once change ``target`` is committed (at once if it is), or ``failed``."""
        if self.store is None:
            self.state.clear_dirty()
            self._durable = self._applied
            then()
            return
        if target <= self._durable:
            then()
            return
        self._waiters.append((target, then, failed))
        if not self._flush_scheduled:
            # Flush after the requests already read in this loop iteration
            # have been applied, so they share one commit (group commit).
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Commit every change applied so far and release the requests waiting on it.

        Runs on the event loop: a small SQLite transaction in WAL mode takes
        tens of microseconds, less than handing it to a thread and back.
        """
        self._flush_scheduled = False
        store = self.store
        if store is None or self._durable >= self._applied:
            return
        upto = self._applied
        try:
            store.write(rows.snapshot(self.state))
        except Exception as exc:
            # Nothing of this batch was acknowledged; fail its requests loudly
            # rather than pretending they are stored.
            self._log.error("store_write_failed", error=str(exc))
            failing, self._waiters = self._waiters, []
            for _, _, failed in failing:
                self._run(failed, exc)
            return
        self._durable = upto
        ready = [w for w in self._waiters if w[0] <= upto]
        self._waiters = [w for w in self._waiters if w[0] > upto]
        # In arrival order, as the tasks these callbacks replace would have resumed.
        for _, then, _ in ready:
            self._run(then)

    def _run[*A](self, callback: Callable[[*A], None], *args: *A) -> None:
        """Run one waiter's callback; a failure in one never holds up the others."""
        try:
            callback(*args)
        except Exception as exc:
            self._log.exception("durable_callback_failed", error=str(exc))

    async def _tick_loop(self) -> None:
        while True:
            now = self._clock()
            self.state.tick(now)
            try:
                await self._settle_effects()
            except Exception as exc:
                self._log.error("tick_failed", error=str(exc))
            deadline = self.state.next_deadline()
            wait = MAX_TICK_SECONDS
            if deadline is not None:
                wait = min(max((deadline - self._clock()) / 1000, 0.005), MAX_TICK_SECONDS)
            await asyncio.sleep(wait)


def _set_result[T](fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():  # a waiter whose task was cancelled no longer listens
        fut.set_result(value)


def _set_exception[T](fut: asyncio.Future[T], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
