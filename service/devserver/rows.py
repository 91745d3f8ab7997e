"""The rows the store keeps, and how the state is written to and read back from them.

One JSON document per row, keyed by id: a promise with its callbacks and
listeners, a task with its lease and retry times, a schedule. Documents are
decoded straight into typed rows; a document written by an older build
(``callbacks``/``listeners``/``resumes`` absent) reads back with defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from service.devserver.model import Promise, Schedule, Task

# msgspec reads the row structs' annotations at run time: these imports must stay.
from service.devserver.protocol import PromiseState, TaskState, ValueRecord  # noqa: TC001

if TYPE_CHECKING:
    from service.devserver.state import ServerState
    from service.devserver.store import Batch


class PromiseRow(msgspec.Struct, rename="camel", omit_defaults=True):
    id: str
    state: PromiseState
    param: ValueRecord
    value: ValueRecord
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None = None
    #: Ids of the tasks waiting on this promise.
    callbacks: list[str] = []
    #: Addresses to send an ``unblock`` to when it settles.
    listeners: list[str] = []


class TaskRow(msgspec.Struct, rename="camel"):
    id: str
    state: TaskState
    version: int
    pid: str | None = None
    ttl: int | None = None
    lease_until: int | None = None
    retry_at: int | None = None
    resumes: int = 0


class ScheduleRow(msgspec.Struct, rename="camel"):
    id: str
    cron: str
    promise_id: str
    promise_timeout: int
    promise_param: ValueRecord
    promise_tags: dict[str, str]
    created_at: int
    next_run_at: int


_promise_doc = msgspec.json.Decoder(PromiseRow).decode
_task_doc = msgspec.json.Decoder(TaskRow).decode
_schedule_doc = msgspec.json.Decoder(ScheduleRow).decode


def promise_row(state: ServerState, promise_id: str) -> PromiseRow | None:
    """A promise with its callbacks and listeners, as stored (None: it is gone)."""
    p = state.promises.get(promise_id)
    if p is None:
        return None
    return PromiseRow(
        p.id,
        p.state,
        p.param,
        p.value,
        p.tags,
        p.timeout_at,
        p.created_at,
        p.settled_at,
        sorted(state.callbacks.get(promise_id, ())),
        sorted(state.listeners.get(promise_id, ())),
    )


def task_row(state: ServerState, task_id: str) -> TaskRow | None:
    """A task with its lease and retry times, as stored (None: it is gone)."""
    t = state.tasks.get(task_id)
    if t is None:
        return None
    return TaskRow(t.id, t.state, t.version, t.pid, t.ttl, t.lease_until, t.retry_at, t.resumes)


def schedule_row(state: ServerState, schedule_id: str) -> ScheduleRow | None:
    """A schedule as stored (None: it was deleted)."""
    s = state.schedules.get(schedule_id)
    if s is None:
        return None
    return ScheduleRow(
        s.id,
        s.cron,
        s.promise_id,
        s.promise_timeout,
        s.promise_param,
        s.promise_tags,
        s.created_at,
        s.next_run_at,
    )


def snapshot(state: ServerState) -> Batch:
    """Every row changed since the last snapshot (None for a deleted one); clears the marks."""
    batch: Batch = {
        "promises": [(i, promise_row(state, i)) for i in state.dirty_promises],
        "tasks": [(i, task_row(state, i)) for i in state.dirty_tasks],
        "schedules": [(i, schedule_row(state, i)) for i in state.dirty_schedules],
    }
    state.clear_dirty()
    return batch


def load(state: ServerState, promises: list[str], tasks: list[str], schedules: list[str]) -> None:
    """Rebuild ``state`` and its indexes from stored documents (nothing is marked changed)."""
    for doc in promises:
        pr = _promise_doc(doc)
        p = Promise(
            pr.id,
            pr.state,
            pr.param,
            pr.value,
            pr.tags,
            pr.timeout_at,
            pr.created_at,
            settled_at=pr.settled_at,
        )
        state.restore_promise(p, pr.callbacks, pr.listeners)
    for doc in tasks:
        tr = _task_doc(doc)
        state.restore_task(
            Task(
                tr.id,
                tr.state,
                tr.version,
                tr.pid,
                tr.ttl,
                tr.lease_until,
                tr.retry_at,
                resumes=tr.resumes,
            )
        )
    for doc in schedules:
        sr = _schedule_doc(doc)
        state.put_schedule(
            Schedule(
                sr.id,
                sr.cron,
                sr.promise_id,
                sr.promise_timeout,
                sr.promise_param,
                sr.promise_tags,
                sr.created_at,
                sr.next_run_at,
            )
        )
    state.clear_dirty()
