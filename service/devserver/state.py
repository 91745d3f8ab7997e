"""The local server's promise/task state machine, indexed so nothing scans the store.

It follows the SDK's own in-process state machine
(:class:`resonate.connections.local.ServerState`) step for step, and where
that simulation and the official Resonate server disagree it answers as the
official server does (``docs/devserver-protocol.md`` lists each difference
with the place in the official source that decides it): every success is
200, error bodies are plain strings, task versions start at 1 and are bumped
by acquire, ``task.create`` on a promise without a task is 422, and
``promise.search``/``task.search`` page by id with a cursor.

What it changes on purpose, for speed: every lookup the SDK's simulation
does by scanning (awaiters on fulfill, same-branch preload, timeouts) goes
through an index here, and ``task.fence`` does not resend the branch (the
SDK already holds it from the acquire's preload).

The state is pure: :meth:`ServerState.handle` takes ``now`` and a decoded
request envelope and returns the reply envelope, appending any push messages
to :attr:`ServerState.outbox` and the ids of changed rows to the ``dirty_*``
sets, which the durable store (:mod:`service.devserver.store`) writes before
the reply is released. This module holds the rows, their indexes and the
transitions; the request kinds are applied by :mod:`~service.devserver.promises`,
:mod:`~service.devserver.tasks` and :mod:`~service.devserver.schedules`
through the public methods here, and dispatched by :mod:`~service.devserver.dispatch`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sortedcontainers import SortedSet

from service.devserver import dispatch
from service.devserver.decoding import Fail
from service.devserver.model import (
    Outgoing,
    Promise,
    Schedule,
    Task,
    execute_message,
    timeout_state,
    unblock_message,
)
from service.devserver.protocol import (
    I64_MAX,
    PROMISE_STATES,
    TASK_STATES,
    JsonObject,
    PromiseCreate,
    PromiseState,
    TaskState,
    ValueRecord,
    value_record,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from service.devserver.dispatch import Gate, Reply

#: How often a pending task's execute message is sent again (official default).
DEFAULT_RETRY_MS = 30_000


@dataclass
class ServerState:
    """Promises, tasks, callbacks, listeners and schedules, with their indexes.

    The attributes are readable by anyone (metrics, the HTTP front, tests);
    they change only through the methods, which keep the indexes, timers,
    outbox and dirty sets in step.
    """

    retry_ms: int = DEFAULT_RETRY_MS
    #: Optional server URL stamped on execute messages (``head.serverUrl``).
    server_url: str = ""
    promises: dict[str, Promise] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    #: awaited promise id -> ids of tasks waiting on it.
    callbacks: dict[str, set[str]] = field(default_factory=dict)
    #: task id -> promise ids it waits on (the reverse of ``callbacks``).
    awaiting: dict[str, set[str]] = field(default_factory=dict)
    #: promise id -> addresses to send an ``unblock`` to when it settles.
    listeners: dict[str, set[str]] = field(default_factory=dict)
    #: ``resonate:branch`` tag -> ids of promises on that branch (for preload).
    branches: dict[str, SortedSet] = field(default_factory=dict)
    promise_ids: SortedSet = field(default_factory=SortedSet)
    promises_by_state: dict[PromiseState, SortedSet] = field(
        default_factory=lambda: {s: SortedSet() for s in PROMISE_STATES}
    )
    task_ids: SortedSet = field(default_factory=SortedSet)
    tasks_by_state: dict[TaskState, SortedSet] = field(
        default_factory=lambda: {s: SortedSet() for s in TASK_STATES}
    )
    #: pid -> ids of the tasks it holds a lease on.
    leases: dict[str, set[str]] = field(default_factory=dict)
    outbox: list[Outgoing] = field(default_factory=list)
    dirty_promises: set[str] = field(default_factory=set)
    dirty_tasks: set[str] = field(default_factory=set)
    dirty_schedules: set[str] = field(default_factory=set)
    _promise_timeouts: list[tuple[int, str]] = field(default_factory=list)
    _task_timers: list[tuple[int, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ entry

    def apply(self, now: int, envelope: object, gate: Gate | None = None) -> Reply:
        """Apply one decoded request envelope (any JSON value) and return its reply.

        ``gate`` (auth) runs after the envelope checks and before the kind is
        looked up, where the official server runs its auth check: a malformed
        envelope is 400 whatever the token, an unknown kind is 401/403 first.
        """
        return dispatch.apply(self, now, envelope, gate)

    def handle(self, now: int, envelope: object, gate: Gate | None = None) -> JsonObject:
        """:meth:`apply`, with the reply as the envelope sent on the wire."""
        return self.apply(now, envelope, gate).envelope()

    # ----------------------------------------------------------------- lookups

    def promise(self, promise_id: str, message: str = "Promise not found") -> Promise:
        """The promise ``promise_id``, or :class:`Fail` 404 with ``message``."""
        p = self.promises.get(promise_id)
        if p is None:
            raise Fail(404, message)
        return p

    def task(self, task_id: str) -> Task:
        """The task ``task_id``, or :class:`Fail` 404."""
        t = self.tasks.get(task_id)
        if t is None:
            raise Fail(404, "Task not found")
        return t

    def preload(self, promise_id: str) -> list[JsonObject]:
        """Records on the same ``resonate:branch`` as ``promise_id`` (itself excluded)."""
        p = self.promises.get(promise_id)
        branch = p.tags.get("resonate:branch") if p is not None else None
        if branch is None:
            return []
        ids = self.branches.get(branch, ())
        return [self.promises[i].record() for i in ids if i != promise_id]

    def still_unacquired(self, task_id: str, version: int) -> bool:
        """Whether an ``execute`` sent for ``task_id`` at ``version`` still awaits an acquire."""
        t = self.tasks.get(task_id)
        return t is not None and t.state == "pending" and t.version == version

    # ---------------------------------------------------------------- promises

    def create_promise(
        self, now: int, c: PromiseCreate, *, acquire: tuple[str, int] | None = None
    ) -> tuple[Promise, Task | None]:
        """Create a promise (and its task if it has a target). Returns the new rows.

        A promise created at or past its deadline is stored already timed out
        (and its task fulfilled). ``acquire`` (pid, ttl) acquires the new task
        at once (``task.create``); otherwise it is dispatched, or held until
        its ``resonate:delay``.
        """
        tags = c.tags or {}
        param = value_record(c.param)
        target = tags.get("resonate:target")
        if now >= c.timeout_at:
            state = timeout_state(tags)
            p = Promise(c.id, state, param, {}, tags, c.timeout_at, c.timeout_at, c.timeout_at)
            self.restore_promise(p)
            task = None
            if target is not None:
                task = Task(c.id, "fulfilled", 0)
                self.restore_task(task)
            return p, task
        p = Promise(c.id, "pending", param, {}, tags, c.timeout_at, now)
        self.restore_promise(p)
        if target is None:
            return p, None
        task = Task(c.id, "pending", 0)
        self.restore_task(task)
        if acquire is not None:
            self.acquire(now, task, *acquire)
            return p, task
        delay = tags.get("resonate:delay")
        if delay is not None and now < int(delay):
            task.retry_at = int(delay)
            self._timer(task.retry_at, task.id)
        else:
            task.retry_at = now + self.retry_ms
            self._timer(task.retry_at, task.id)
            self._send_execute(task)
        return p, task

    def settle(
        self, now: int, p: Promise, state: PromiseState, value: ValueRecord, settled_at: int
    ) -> None:
        """Settle pending ``p`` and run the chain: its task, awaiting tasks, listeners."""
        self.promises_by_state[p.state].discard(p.id)
        p.state, p.value, p.settled_at = state, value, settled_at
        self.promises_by_state[state].add(p.id)
        self.dirty_promises.add(p.id)
        own = self.tasks.get(p.id)
        if own is not None and own.state != "fulfilled":
            self.fulfill(own)
        for awaiter in sorted(self.callbacks.pop(p.id, set())):
            waits = self.awaiting.get(awaiter)
            if waits is not None:
                waits.discard(p.id)
                if not waits:
                    del self.awaiting[awaiter]
            t = self.tasks.get(awaiter)
            if t is None:
                continue
            if t.state == "suspended":
                self.resume(now, t)
            elif t.state in ("pending", "acquired", "halted"):
                t.resumes += 1
                self.dirty_tasks.add(t.id)
        for address in sorted(self.listeners.pop(p.id, set())):
            self.outbox.append(Outgoing(address, unblock_message(p)))

    def try_timeout(self, now: int, promise_id: str) -> None:
        """Settle a pending promise whose deadline has passed (lazily, on access)."""
        p = self.promises.get(promise_id)
        if p is not None and p.state == "pending" and now >= p.timeout_at:
            self.settle(now, p, timeout_state(p.tags), {}, p.timeout_at)

    def add_listener(self, promise_id: str, address: str) -> None:
        """Send ``address`` an ``unblock`` when pending ``promise_id`` settles."""
        self.listeners.setdefault(promise_id, set()).add(address)
        self.dirty_promises.add(promise_id)

    def add_callback(self, awaited: str, awaiter: str) -> None:
        """Make task ``awaiter`` wait on pending promise ``awaited``."""
        self.callbacks.setdefault(awaited, set()).add(awaiter)
        self.awaiting.setdefault(awaiter, set()).add(awaited)
        self.dirty_promises.add(awaited)

    # ------------------------------------------------------------------- tasks

    def acquire(self, now: int, t: Task, pid: str, ttl: int) -> None:
        """Lease ``t`` to ``pid`` for ``ttl`` ms; every acquire bumps the version."""
        self._set_task_state(t, "acquired")
        t.version += 1
        t.pid, t.ttl = pid, ttl
        t.lease_until = min(now + ttl, I64_MAX)
        t.retry_at = None
        t.resumes = 0
        self.leases.setdefault(pid, set()).add(t.id)
        self._timer(t.lease_until, t.id)

    def to_pending(self, now: int, t: Task, *, dispatch: bool = True) -> None:
        """Put a task back in the queue (version unchanged) and dispatch it again."""
        self._release_lease(t)
        self._set_task_state(t, "pending")
        t.retry_at = now + self.retry_ms
        self._timer(t.retry_at, t.id)
        if dispatch:
            self._send_execute(t)

    def resume(self, now: int, t: Task) -> None:
        """Wake suspended ``t``: a promise it awaits settled; it is dispatched again."""
        t.resumes = 1
        self.to_pending(now, t)

    def fulfill(self, t: Task) -> None:
        """Mark ``t`` done: release its lease and drop the callbacks it registered."""
        self._release_lease(t)
        t.retry_at = None
        t.resumes = 0
        self._set_task_state(t, "fulfilled")
        for awaited in self.awaiting.pop(t.id, set()):
            waiting = self.callbacks.get(awaited)
            if waiting is not None:
                waiting.discard(t.id)
                if not waiting:
                    del self.callbacks[awaited]
                self.dirty_promises.add(awaited)

    def suspend(self, t: Task, awaited: Iterable[str]) -> None:
        """Park acquired ``t`` until one of the ``awaited`` pending promises settles."""
        for promise_id in awaited:
            self.add_callback(promise_id, t.id)
        self._release_lease(t)
        self._set_task_state(t, "suspended")

    def clear_resumes(self, t: Task) -> None:
        """Forget ``t``'s pending resumes (a suspend that redirects instead)."""
        t.resumes = 0
        self.dirty_tasks.add(t.id)

    def extend_lease(self, now: int, t: Task) -> None:
        """Renew acquired ``t``'s lease for another ``ttl`` from ``now``."""
        if t.ttl is None:
            return
        t.lease_until = min(now + t.ttl, I64_MAX)
        self._timer(t.lease_until, t.id)
        self.dirty_tasks.add(t.id)

    def halt(self, t: Task) -> None:
        """Take ``t`` out of the queue (and its lease away) until ``task.continue``."""
        self._release_lease(t)
        t.retry_at = None
        self._set_task_state(t, "halted")

    # --------------------------------------------------------------- schedules

    def put_schedule(self, schedule: Schedule) -> None:
        self.schedules[schedule.id] = schedule
        self.dirty_schedules.add(schedule.id)

    def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule; False if there was none."""
        if self.schedules.pop(schedule_id, None) is None:
            return False
        self.dirty_schedules.add(schedule_id)
        return True

    # ------------------------------------------------------------ rows and indexes

    def restore_promise(
        self, p: Promise, callbacks: Iterable[str] = (), listeners: Iterable[str] = ()
    ) -> None:
        """Store ``p`` (new, or read back from the store) and index it."""
        self.promises[p.id] = p
        self.promise_ids.add(p.id)
        self.promises_by_state[p.state].add(p.id)
        branch = p.tags.get("resonate:branch")
        if branch is not None:
            members = self.branches.get(branch)
            if members is None:  # not setdefault: a SortedSet is costly to build
                members = self.branches[branch] = SortedSet()
            members.add(p.id)
        if p.state == "pending":
            heapq.heappush(self._promise_timeouts, (p.timeout_at, p.id))
        for awaiter in callbacks:
            self.callbacks.setdefault(p.id, set()).add(awaiter)
            self.awaiting.setdefault(awaiter, set()).add(p.id)
        for address in listeners:
            self.listeners.setdefault(p.id, set()).add(address)
        self.dirty_promises.add(p.id)

    def restore_task(self, t: Task) -> None:
        """Store ``t`` (new, or read back from the store) with its lease and timers."""
        self.tasks[t.id] = t
        self.task_ids.add(t.id)
        self.tasks_by_state[t.state].add(t.id)
        if t.state == "acquired" and t.pid is not None:
            self.leases.setdefault(t.pid, set()).add(t.id)
        for when in (t.lease_until, t.retry_at):
            if when is not None:
                self._timer(when, t.id)
        self.dirty_tasks.add(t.id)

    def clear_dirty(self) -> None:
        """Forget which rows changed (they are written, or there is no store)."""
        self.dirty_promises.clear()
        self.dirty_tasks.clear()
        self.dirty_schedules.clear()

    def _set_task_state(self, t: Task, state: TaskState) -> None:
        if t.state != state:
            self.tasks_by_state[t.state].discard(t.id)
            self.tasks_by_state[state].add(t.id)
            t.state = state
        self.dirty_tasks.add(t.id)

    def _release_lease(self, t: Task) -> None:
        if t.pid is not None:
            held = self.leases.get(t.pid)
            if held is not None:
                held.discard(t.id)
                if not held:
                    del self.leases[t.pid]
        t.pid = t.ttl = t.lease_until = None

    def _timer(self, when: int, task_id: str) -> None:
        heapq.heappush(self._task_timers, (when, task_id))

    def _send_execute(self, task: Task) -> None:
        p = self.promises.get(task.id)
        if p is None or p.target is None:
            return
        self.outbox.append(Outgoing(p.target, execute_message(task, self.server_url)))

    # --------------------------------------------------------- clock and links

    def tick(self, now: int) -> None:
        """Expire due promise deadlines and task leases, and resend pending tasks."""
        while self._promise_timeouts and self._promise_timeouts[0][0] <= now:
            when, pid = heapq.heappop(self._promise_timeouts)
            p = self.promises.get(pid)
            if p is not None and p.state == "pending" and p.timeout_at == when:
                self.settle(now, p, timeout_state(p.tags), {}, p.timeout_at)
        while self._task_timers and self._task_timers[0][0] <= now:
            when, tid = heapq.heappop(self._task_timers)
            t = self.tasks.get(tid)
            if t is None:
                continue
            if t.state == "acquired" and t.lease_until is not None and t.lease_until <= now:
                self.to_pending(now, t)
            elif t.state == "pending" and t.retry_at is not None and t.retry_at <= now:
                t.retry_at = now + self.retry_ms
                self._timer(t.retry_at, t.id)
                self.dirty_tasks.add(t.id)
                self._send_execute(t)

    def next_deadline(self) -> int | None:
        """Earliest time :meth:`tick` has work to do, if any."""
        heads = [h[0][0] for h in (self._promise_timeouts, self._task_timers) if h]
        return min(heads) if heads else None

    def release_pid(self, now: int, pid: str, *, dispatch: bool = True) -> list[str]:
        """Release every task leased to ``pid`` (its connection is gone)."""
        released = sorted(self.leases.get(pid, set()))
        for tid in released:
            self.to_pending(now, self.tasks[tid], dispatch=dispatch)
        return released

    def resend_unacquired(self, now: int, sent: Iterable[tuple[str, int]]) -> list[str]:
        """Send again the ``execute`` of each task still pending at the version it went out with.

        For messages written to a stream that closed before their task was
        acquired (the process is gone). A task acquired meanwhile has a newer
        version and is skipped, so a task is never offered twice for one
        version by this path. The retry timer restarts from now, as after a
        timed resend. Returns the ids sent again.
        """
        resent: list[str] = []
        for task_id, version in sent:
            if not self.still_unacquired(task_id, version):
                continue
            t = self.tasks[task_id]
            t.retry_at = now + self.retry_ms
            self._timer(t.retry_at, t.id)
            self.dirty_tasks.add(t.id)
            self._send_execute(t)
            resent.append(task_id)
        return resent

    def resend_pending(self) -> None:
        """Queue an execute message for every pending task (after a restart)."""
        for tid in self.tasks_by_state["pending"]:
            self._send_execute(self.tasks[tid])

    def take_outbox(self) -> list[Outgoing]:
        """The push messages produced since the last call (the outbox is emptied)."""
        out, self.outbox = self.outbox, []
        return out
