"""The ``task.*`` request kinds, applied to a :class:`~service.devserver.state.ServerState`.

Each operation takes (state, now, decoded request, corrId) and returns
(status, reply data), or raises :class:`~service.devserver.protocol.Fail`.
Versions are the official server's: ``task.create`` acquires at version 1,
every acquire bumps the version, and a request naming another version is 409.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.connector.sdk import origin_of
from service.devserver import promises
from service.devserver.decoding import Fail, decode
from service.devserver.protocol import (
    JsonObject,
    PromiseCreate,
    PromiseSettle,
    TaskAcquire,
    TaskCreate,
    TaskFence,
    TaskFulfill,
    TaskHeartbeat,
    TaskRef,
    TaskRelease,
    TaskSearch,
    TaskSuspend,
    reply,
    suspend_problem,
)
from service.devserver.search import page

if TYPE_CHECKING:
    from service.devserver.dispatch import Result
    from service.devserver.model import Task
    from service.devserver.state import ServerState

#: The official server's reply to a heartbeat mixing origins (PR #1119, ``src/types.rs``).
HEARTBEAT_ORIGIN_MESSAGE = "All tasks must belong to the same origin"


def _held(s: ServerState, now: int, task_id: str, version: int, message: str) -> Task:
    """The task, acquired at ``version``; else 409 with ``message`` (404 if unknown)."""
    s.try_timeout(now, task_id)
    t = s.task(task_id)
    if t.state != "acquired" or t.version != version:
        raise Fail(409, message)
    return t


def get(s: ServerState, now: int, r: TaskRef, corr: str) -> Result:
    s.try_timeout(now, r.id)
    return 200, {"task": s.task(r.id).record()}


def create(s: ServerState, now: int, r: TaskCreate, corr: str) -> Result:
    """Create a promise with its task acquired by ``pid``, or acquire the existing pending one."""
    c = r.action.data
    promises.validate_create(c)
    tags = c.tags or {}
    if "resonate:target" not in tags:
        raise Fail(400, "Action must have a resonate:target tag")
    if "resonate:delay" in tags:
        raise Fail(400, "Action must not have a resonate:delay tag")
    s.try_timeout(now, c.id)
    existing = s.promises.get(c.id)
    if existing is None:
        p, task = s.create_promise(now, c, acquire=(r.pid, r.ttl))
        assert task is not None
        preload = [] if task.state == "fulfilled" else s.preload(p.id)
        return 200, {"task": task.record(), "promise": p.record(), "preload": preload}
    t = s.tasks.get(c.id)
    if t is None:
        raise Fail(422, "The promise does not have a resonate:target tag")
    if t.state == "fulfilled":
        return 200, {"task": t.record(), "promise": existing.record(), "preload": []}
    if t.state == "pending":
        s.acquire(now, t, r.pid, r.ttl)
        return 200, {"task": t.record(), "promise": existing.record(), "preload": s.preload(t.id)}
    raise Fail(409, "Already exists")


def acquire(s: ServerState, now: int, r: TaskAcquire, corr: str) -> Result:
    s.try_timeout(now, r.id)
    t = s.task(r.id)
    if t.state != "pending":
        raise Fail(409, "Task is not pending")
    if t.version != r.version:
        raise Fail(409, "Version mismatch")
    s.acquire(now, t, r.pid, r.ttl)
    p = s.promises[r.id]
    return 200, {"task": t.record(), "promise": p.record(), "preload": s.preload(r.id)}


def release(s: ServerState, now: int, r: TaskRelease, corr: str) -> Result:
    t = _held(s, now, r.id, r.version, "Task version mismatch or invalid state")
    s.to_pending(now, t)
    return 200, {}


def fulfill(s: ServerState, now: int, r: TaskFulfill, corr: str) -> Result:
    """Settle the task's own promise (``action.data`` is a ``promise.settle``) and finish it."""
    if r.action.data.get("id") != r.id:
        raise Fail(400, "Action ID must match the task ID")
    t = _held(s, now, r.id, r.version, "Task version mismatch or invalid state")
    # Validated only now, after the version check, where the official server does.
    p = promises.settle_promise(s, now, decode(r.action.data, PromiseSettle, "action.data"))
    if t.state != "fulfilled":
        s.fulfill(t)
    return 200, {"promise": p.record()}


def suspend(s: ServerState, now: int, r: TaskSuspend, corr: str) -> Result:
    """Suspend on the awaited promises; 300 with the preload if one has settled already."""
    tid = r.id
    awaited_ids: list[str] = []
    for action in r.actions:
        problem = suspend_problem(tid, action.data.awaited, action.data.awaiter)
        if problem is not None:
            raise Fail(400, problem)
        awaited_ids.append(action.data.awaited)
    t = _held(s, now, tid, r.version, "Task is not acquired or version mismatch")
    for awaited in awaited_ids:
        s.try_timeout(now, awaited)
    if any(a not in s.promises for a in awaited_ids):
        raise Fail(422, "Awaited promise not found")
    if t.resumes or any(s.promises[a].state != "pending" for a in awaited_ids):
        s.clear_resumes(t)
        return 300, {"preload": s.preload(tid)}
    s.suspend(t, awaited_ids)
    return 200, {}


def fence(s: ServerState, now: int, r: TaskFence, corr: str) -> Result:
    """Apply a ``promise.create``/``promise.settle`` only while the task is held at ``version``.

    The inner request's reply is a full envelope; a settle the inner request
    refuses is that envelope's status, not the fence's.
    """
    kind, data = r.action.kind, r.action.data
    if data.get("id") == r.id:
        raise Fail(400, "Action ID must not equal the task ID")
    created: PromiseCreate | None = None
    if kind == "promise.create":
        created = decode(data, PromiseCreate, "action.data")
        promises.validate_create(created)
    s.try_timeout(now, r.id)
    t = s.task(r.id)
    if t.state != "acquired" or t.version != r.version:
        raise Fail(409, "Version mismatch")
    inner: tuple[int, JsonObject | str]
    if created is not None:
        inner = promises.create(s, now, created, corr)
    else:
        try:
            inner = promises.settle(s, now, decode(data, PromiseSettle, "action.data"), corr)
        except Fail as exc:
            inner = (exc.status, exc.message)
    # The official server also resends the whole branch here; the SDK already
    # holds it from the acquire, so this server sends only what changed.
    return 200, {"action": reply(kind, corr, *inner), "preload": []}


def heartbeat(s: ServerState, now: int, r: TaskHeartbeat, corr: str) -> Result:
    """Extend the leases ``pid`` still holds; a liveness signal, never an error per task.

    As on the official server from PR #1119 on (``src/types.rs``
    ``validate_task_heartbeat_data``): an empty list is 400 ``Tasks array must
    not be empty`` and tasks of more than one origin are 400 ``All tasks must
    belong to the same origin``; either way no lease is extended. Tasks that
    are unknown, not acquired, held by another process or at another version
    are skipped silently.
    """
    if not r.tasks:
        raise Fail(400, "Tasks array must not be empty")
    if len({origin_of(ref.id) for ref in r.tasks}) > 1:
        raise Fail(400, HEARTBEAT_ORIGIN_MESSAGE)
    for ref in r.tasks:
        t = s.tasks.get(ref.id)
        if (
            t is not None
            and t.state == "acquired"
            and t.pid == r.pid
            and (ref.version is None or ref.version == t.version)
        ):
            s.extend_lease(now, t)
    return 200, {}


def halt(s: ServerState, now: int, r: TaskRef, corr: str) -> Result:
    t = s.task(r.id)
    if t.state == "fulfilled":
        raise Fail(409, "Task is fulfilled")
    if t.state != "halted":
        s.halt(t)
    return 200, {}


def resume(s: ServerState, now: int, r: TaskRef, corr: str) -> Result:
    """``task.continue``: a halted task goes back to the queue."""
    t = s.task(r.id)
    if t.state != "halted":
        raise Fail(409, "Task is not halted")
    s.to_pending(now, t)
    return 200, {}


def search(s: ServerState, now: int, r: TaskSearch, corr: str) -> Result:
    """Tasks in ``state`` (any if None), by id."""
    ids = s.tasks_by_state[r.state] if r.state is not None else s.task_ids
    found, cursor = page(ids, lambda _: True, r.limit, r.cursor)
    out: JsonObject = {"tasks": [s.tasks[i].record() for i in found]}
    if cursor is not None:
        out["cursor"] = cursor
    return 200, out
