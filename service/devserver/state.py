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
the reply is released.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedSet

from service.connector.sdk import PROTOCOL_VERSION, origin_of
from service.devserver.addresses import is_routable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: An access check run on every valid envelope before it is applied: takes
#: (kind, head, data) and returns None to go on, or (status, message) to
#: refuse the request (the local server's JWT auth, :mod:`service.devserver.auth`).
type Gate = Callable[[str, dict[str, Any], dict[str, Any]], tuple[int, str] | None]

PROMISE_STATES = ("pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout")
SETTLE_REQUEST_STATES = ("resolved", "rejected", "rejected_canceled")
TASK_STATES = ("pending", "acquired", "suspended", "halted", "fulfilled")
#: How often a pending task's execute message is sent again (official default).
DEFAULT_RETRY_MS = 30_000
#: The official server's reply to a heartbeat mixing origins (PR #1119, ``src/types.rs``).
HEARTBEAT_ORIGIN_MESSAGE = "All tasks must belong to the same origin"
#: Search page size when none is asked for, and the largest allowed.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: Longest promise id accepted (the official server has no limit; this keeps
#: one request from pinning unbounded memory in a development server).
MAX_ID_CHARS = 8192
I64_MAX = (1 << 63) - 1


class Fail(Exception):
    """Abort the current request with ``status`` and a plain-string message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Promise:
    id: str
    state: str
    param: dict[str, Any]
    value: dict[str, Any]
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None = None

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "param": self.param,
            "value": self.value,
            "tags": self.tags,
            "timeoutAt": self.timeout_at,
            "createdAt": self.created_at,
        }
        if self.settled_at is not None:
            rec["settledAt"] = self.settled_at
        return rec

    @property
    def target(self) -> str | None:
        return self.tags.get("resonate:target")


@dataclass(slots=True)
class Task:
    id: str
    state: str
    version: int
    pid: str | None = None
    ttl: int | None = None
    lease_until: int | None = None
    retry_at: int | None = None
    resumes: int = 0

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "version": self.version,
            "resumes": self.resumes,
        }
        if self.state == "acquired":
            rec["ttl"] = self.ttl
            rec["pid"] = self.pid
        return rec


@dataclass(slots=True)
class Outgoing:
    """A push message for ``address`` (delivered after the change is durable)."""

    address: str
    message: dict[str, Any]


def _str(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or value == "":
        raise Fail(400, f"Invalid request: '{key}' must be a non-empty string")
    return value


def _int(data: dict[str, Any], key: str, lo: int, *, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Fail(400, f"Invalid request: '{key}' must be an integer")
    if not lo <= value <= I64_MAX:
        raise Fail(400, f"Invalid request: '{key}' must be between {lo} and {I64_MAX}")
    return value


def _id(data: dict[str, Any], key: str = "id") -> str:
    value = _str(data, key)
    if "\0" in value:
        raise Fail(400, "Promise ID must not contain null bytes")
    if len(value) > MAX_ID_CHARS:
        raise Fail(400, f"Invalid request: '{key}' is longer than {MAX_ID_CHARS} characters")
    return value


def _value(raw: Any, key: str) -> dict[str, Any]:
    """Normalize a ``{headers?, data?}`` value object (absent/null -> ``{}``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Fail(400, f"Invalid request: '{key}' must be an object")
    out: dict[str, Any] = {}
    headers = raw.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise Fail(400, f"Invalid request: '{key}.headers' must map strings to strings")
        out["headers"] = headers
    data = raw.get("data")
    if data is not None:
        if not isinstance(data, str):
            raise Fail(400, f"Invalid request: '{key}.data' must be a string")
        out["data"] = data
    return out


def _tags(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise Fail(400, "Invalid request: 'tags' must map strings to strings")
    return dict(raw)


def _data(raw: Any, what: str = "data") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise Fail(400, f"Invalid '{what}' field — must be an object")
    return raw


@dataclass(frozen=True, slots=True)
class _Create:
    id: str
    timeout_at: int
    param: dict[str, Any]
    tags: dict[str, str]


def _validate_create(data: dict[str, Any]) -> _Create:
    """Validate a promise-create payload as the official server does."""
    pid = _id(data)
    if "timeoutAt" not in data:
        raise Fail(400, "Invalid request: missing field 'timeoutAt'")
    timeout_at = _int(data, "timeoutAt", 0)
    param = _value(data.get("param"), "param")
    tags = _tags(data.get("tags"))
    problems: list[str] = []
    origin = tags.get("resonate:origin")
    if origin is not None:
        if ":" in origin:
            problems.append("resonate:origin must not contain ':'")
        elif pid != origin and not pid.startswith(origin + ":"):
            problems.append("Promise ID must be prefixed by resonate:origin")
    for tag in ("resonate:branch", "resonate:parent"):
        ancestor = tags.get(tag)
        if ancestor is not None:
            sep = "." if ":" in ancestor else ":"
            if pid != ancestor and not pid.startswith(ancestor + sep):
                problems.append(f"Promise ID must be prefixed by {tag}")
    if "." in tags.get("resonate:prefix", ""):
        problems.append("resonate:prefix must not contain '.'")
    delay = tags.get("resonate:delay")
    if delay is not None:
        if not delay.isdigit():
            problems.append("resonate:delay must be a non-negative integer")
        elif int(delay) >= timeout_at:
            problems.append("resonate:delay must be less than timeoutAt")
        if "resonate:target" not in tags:
            problems.append("resonate:delay requires a resonate:target tag")
    target = tags.get("resonate:target")
    if target is not None and not is_routable(target):
        problems.append("Invalid resonate:target address")
    if problems:
        raise Fail(400, "; ".join(problems))
    return _Create(pid, timeout_at, param, tags)


@dataclass
class ServerState:
    """Promises, tasks, callbacks, listeners and schedules, with their indexes."""

    retry_ms: int = DEFAULT_RETRY_MS
    promises: dict[str, Promise] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: awaited promise id -> ids of tasks waiting on it.
    callbacks: dict[str, set[str]] = field(default_factory=dict)
    #: task id -> promise ids it waits on (the reverse of ``callbacks``).
    awaiting: dict[str, set[str]] = field(default_factory=dict)
    #: promise id -> addresses to send an ``unblock`` to when it settles.
    listeners: dict[str, set[str]] = field(default_factory=dict)
    #: ``resonate:branch`` tag -> ids of promises on that branch (for preload).
    branches: dict[str, SortedSet] = field(default_factory=dict)
    promise_ids: SortedSet = field(default_factory=SortedSet)
    promises_by_state: dict[str, SortedSet] = field(
        default_factory=lambda: {s: SortedSet() for s in PROMISE_STATES}
    )
    task_ids: SortedSet = field(default_factory=SortedSet)
    tasks_by_state: dict[str, SortedSet] = field(
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
    #: Optional server URL stamped on execute messages (``head.serverUrl``).
    server_url: str = ""

    # ------------------------------------------------------------------ entry

    def handle(self, now: int, envelope: Any, gate: Gate | None = None) -> dict[str, Any]:
        """Apply one decoded request envelope and return the reply envelope.

        ``gate`` (auth) runs after the envelope checks and before the kind is
        looked up, where the official server runs its auth check: a malformed
        envelope is 400 whatever the token, an unknown kind is 401/403 first.
        """
        kind, corr = "unknown", "0"
        if isinstance(envelope, dict):
            raw_kind = envelope.get("kind")
            if isinstance(raw_kind, str):
                kind = raw_kind
            head = envelope.get("head")
            if isinstance(head, dict) and isinstance(head.get("corrId"), str):
                corr = head["corrId"]
        try:
            if not isinstance(envelope, dict):
                raise Fail(400, "Invalid request envelope: expected a JSON object")
            head = envelope.get("head")
            if not isinstance(head, dict) or not isinstance(head.get("corrId"), str):
                raise Fail(400, "Invalid request envelope: missing 'head.corrId'")
            if not isinstance(head.get("version"), str):
                raise Fail(400, "Invalid request envelope: missing 'head.version'")
            if head.get("auth") is not None and not isinstance(head["auth"], str):
                raise Fail(400, "Invalid request envelope: 'head.auth' must be a string")
            if not isinstance(envelope.get("kind"), str) or envelope["kind"] == "":
                raise Fail(400, "Missing or invalid 'kind' field — must be a non-empty string")
            data = _data(envelope.get("data"))
            if head["version"] != PROTOCOL_VERSION:
                raise Fail(
                    400,
                    f"Unsupported protocol version '{head['version']}', "
                    f'supported versions: ["{PROTOCOL_VERSION}"]',
                )
            if gate is not None:
                refused = gate(kind, head, data)
                if refused is not None:
                    raise Fail(*refused)
            op = _OPS.get(kind)
            if op is None:
                raise Fail(400, f"Unknown operation: {kind}")
            status, out = op(self, now, data, corr)
        except Fail as exc:
            return reply(kind, corr, exc.status, exc.message)
        return reply(kind, corr, status, out)

    # ------------------------------------------------------------- promises

    def _store_promise(self, p: Promise) -> None:
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
        self.dirty_promises.add(p.id)

    def _store_task(self, t: Task) -> None:
        self.tasks[t.id] = t
        self.task_ids.add(t.id)
        self.tasks_by_state[t.state].add(t.id)
        self.dirty_tasks.add(t.id)

    def _set_task_state(self, t: Task, state: str) -> None:
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
        self.outbox.append(
            Outgoing(
                p.target,
                {
                    "kind": "execute",
                    "head": {"serverUrl": self.server_url},
                    "data": {"task": {"id": task.id, "version": task.version}},
                },
            )
        )

    def _to_pending(self, now: int, t: Task, *, dispatch: bool = True) -> None:
        """Put a task back in the queue (version unchanged) and dispatch it again."""
        self._release_lease(t)
        self._set_task_state(t, "pending")
        t.retry_at = now + self.retry_ms
        self._timer(t.retry_at, t.id)
        if dispatch:
            self._send_execute(t)

    def _acquire(self, now: int, t: Task, pid: str, ttl: int) -> None:
        self._set_task_state(t, "acquired")
        t.version += 1
        t.pid, t.ttl = pid, ttl
        t.lease_until = min(now + ttl, I64_MAX)
        t.retry_at = None
        t.resumes = 0
        self.leases.setdefault(pid, set()).add(t.id)
        self._timer(t.lease_until, t.id)

    def _fulfill_task(self, t: Task) -> None:
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

    def _create_promise(
        self, now: int, c: _Create, *, acquire: tuple[str, int] | None = None
    ) -> tuple[Promise, Task | None]:
        """Create a promise (and its task if it has a target). Returns the new rows."""
        target = c.tags.get("resonate:target")
        if now >= c.timeout_at:
            p = Promise(
                c.id,
                _timeout_state(c.tags),
                c.param,
                {},
                c.tags,
                c.timeout_at,
                c.timeout_at,
                c.timeout_at,
            )
            self._store_promise(p)
            task = None
            if target is not None:
                task = Task(c.id, "fulfilled", 0)
                self._store_task(task)
            return p, task
        p = Promise(c.id, "pending", c.param, {}, c.tags, c.timeout_at, now)
        self._store_promise(p)
        if target is None:
            return p, None
        task = Task(c.id, "pending", 0)
        self._store_task(task)
        if acquire is not None:
            self._acquire(now, task, *acquire)
            return p, task
        delay = c.tags.get("resonate:delay")
        if delay is not None and now < int(delay):
            task.retry_at = int(delay)
            self._timer(task.retry_at, task.id)
        else:
            task.retry_at = now + self.retry_ms
            self._timer(task.retry_at, task.id)
            self._send_execute(task)
        return p, task

    def _settle(
        self, now: int, p: Promise, state: str, value: dict[str, Any], settled_at: int
    ) -> None:
        """Settle ``p`` and run the chain: its task, awaiting tasks, listeners."""
        self.promises_by_state[p.state].discard(p.id)
        p.state, p.value, p.settled_at = state, value, settled_at
        self.promises_by_state[state].add(p.id)
        self.dirty_promises.add(p.id)
        own = self.tasks.get(p.id)
        if own is not None and own.state != "fulfilled":
            self._fulfill_task(own)
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
                t.resumes = 1
                self._to_pending(now, t)
            elif t.state in ("pending", "acquired", "halted"):
                t.resumes += 1
                self.dirty_tasks.add(t.id)
        for address in sorted(self.listeners.pop(p.id, set())):
            self.outbox.append(
                Outgoing(address, {"kind": "unblock", "head": {}, "data": {"promise": p.record()}})
            )

    def try_timeout(self, now: int, promise_id: str) -> None:
        """Settle a pending promise whose deadline has passed (lazily, on access)."""
        p = self.promises.get(promise_id)
        if p is not None and p.state == "pending" and now >= p.timeout_at:
            self._settle(now, p, _timeout_state(p.tags), {}, p.timeout_at)

    def preload(self, promise_id: str) -> list[dict[str, Any]]:
        """Records on the same ``resonate:branch`` as ``promise_id`` (itself excluded)."""
        p = self.promises.get(promise_id)
        branch = p.tags.get("resonate:branch") if p is not None else None
        if branch is None:
            return []
        ids = self.branches.get(branch, ())
        return [self.promises[i].record() for i in ids if i != promise_id]

    def _promise(self, promise_id: str, message: str = "Promise not found") -> Promise:
        p = self.promises.get(promise_id)
        if p is None:
            raise Fail(404, message)
        return p

    def _task(self, task_id: str) -> Task:
        t = self.tasks.get(task_id)
        if t is None:
            raise Fail(404, "Task not found")
        return t

    # --------------------------------------------------------- clock and links

    def tick(self, now: int) -> None:
        """Expire due promise deadlines and task leases, and resend pending tasks."""
        while self._promise_timeouts and self._promise_timeouts[0][0] <= now:
            when, pid = heapq.heappop(self._promise_timeouts)
            p = self.promises.get(pid)
            if p is not None and p.state == "pending" and p.timeout_at == when:
                self._settle(now, p, _timeout_state(p.tags), {}, p.timeout_at)
        while self._task_timers and self._task_timers[0][0] <= now:
            when, tid = heapq.heappop(self._task_timers)
            t = self.tasks.get(tid)
            if t is None:
                continue
            if t.state == "acquired" and t.lease_until is not None and t.lease_until <= now:
                self._to_pending(now, t)
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
            self._to_pending(now, self.tasks[tid], dispatch=dispatch)
        return released

    def still_unacquired(self, task_id: str, version: int) -> bool:
        """Whether an ``execute`` sent for ``task_id`` at ``version`` still awaits an acquire."""
        t = self.tasks.get(task_id)
        return t is not None and t.state == "pending" and t.version == version

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
        out, self.outbox = self.outbox, []
        return out

    # ------------------------------------------------------------ snapshots

    def promise_row(self, promise_id: str) -> dict[str, Any] | None:
        """A promise with its callbacks and listeners, as stored on disk."""
        p = self.promises.get(promise_id)
        if p is None:
            return None
        row = p.record()
        row["callbacks"] = sorted(self.callbacks.get(promise_id, ()))
        row["listeners"] = sorted(self.listeners.get(promise_id, ()))
        return row

    def task_row(self, task_id: str) -> dict[str, Any] | None:
        t = self.tasks.get(task_id)
        if t is None:
            return None
        return {
            "id": t.id,
            "state": t.state,
            "version": t.version,
            "pid": t.pid,
            "ttl": t.ttl,
            "leaseUntil": t.lease_until,
            "retryAt": t.retry_at,
            "resumes": t.resumes,
        }

    def load(
        self,
        promises: list[dict[str, Any]],
        tasks: list[dict[str, Any]],
        schedules: list[dict[str, Any]],
    ) -> None:
        """Rebuild the state and its indexes from stored rows."""
        for row in promises:
            p = Promise(
                row["id"],
                row["state"],
                row["param"],
                row["value"],
                row["tags"],
                row["timeoutAt"],
                row["createdAt"],
                row.get("settledAt"),
            )
            self._store_promise(p)
            for awaiter in row.get("callbacks", []):
                self.callbacks.setdefault(p.id, set()).add(awaiter)
                self.awaiting.setdefault(awaiter, set()).add(p.id)
            for address in row.get("listeners", []):
                self.listeners.setdefault(p.id, set()).add(address)
        for row in tasks:
            t = Task(
                row["id"],
                row["state"],
                row["version"],
                row.get("pid"),
                row.get("ttl"),
                row.get("leaseUntil"),
                row.get("retryAt"),
                row.get("resumes", 0),
            )
            self._store_task(t)
            if t.state == "acquired" and t.pid is not None:
                self.leases.setdefault(t.pid, set()).add(t.id)
            for when in (t.lease_until, t.retry_at):
                if when is not None:
                    self._timer(when, t.id)
        for row in schedules:
            self.schedules[row["id"]] = row
        self.dirty_promises.clear()
        self.dirty_tasks.clear()
        self.dirty_schedules.clear()


def _timeout_state(tags: dict[str, str]) -> str:
    return "resolved" if tags.get("resonate:timer") == "true" else "rejected_timedout"


def reply(kind: str, corr: str, status: int, data: Any) -> dict[str, Any]:
    """A response envelope; ``data`` is the payload, or the message for an error."""
    return {
        "kind": kind,
        "head": {"corrId": corr, "status": status, "version": PROTOCOL_VERSION},
        "data": data,
    }


# ---------------------------------------------------------------- operations
# Each takes (state, now, data, corrId) and returns (status, reply data).

type _Result = tuple[int, Any]


def _promise_get(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    pid = _id(d)
    s.try_timeout(now, pid)
    return 200, {"promise": s._promise(pid).record()}


def _promise_create(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    c = _validate_create(d)
    s.try_timeout(now, c.id)
    existing = s.promises.get(c.id)
    if existing is not None:
        return 200, {"promise": existing.record()}
    p, _ = s._create_promise(now, c)
    return 200, {"promise": p.record()}


def _settle_request(s: ServerState, now: int, d: dict[str, Any]) -> Promise:
    pid = _id(d)
    state = d.get("state")
    if state not in SETTLE_REQUEST_STATES:
        raise Fail(
            400,
            f"Invalid request: 'state' must be one of {', '.join(SETTLE_REQUEST_STATES)}, "
            f"got {state!r}",
        )
    value = _value(d.get("value"), "value")
    s.try_timeout(now, pid)
    p = s._promise(pid)
    if p.state == "pending":
        s._settle(now, p, state, value, now)
    return p


def _promise_settle(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    return 200, {"promise": _settle_request(s, now, d).record()}


def _promise_register_listener(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    awaited = _id(d, "awaited")
    address = _str(d, "address")
    if not is_routable(address):
        raise Fail(400, "Invalid listener address")
    s.try_timeout(now, awaited)
    p = s._promise(awaited, "Awaited promise not found")
    if p.state == "pending":
        s.listeners.setdefault(awaited, set()).add(address)
        s.dirty_promises.add(awaited)
    return 200, {"promise": p.record()}


def _promise_register_callback(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    awaited, awaiter = _id(d, "awaited"), _id(d, "awaiter")
    if awaited == awaiter:
        raise Fail(400, "Awaited and awaiter must be different promises")
    if origin_of(awaited) != origin_of(awaiter):
        raise Fail(400, "Awaiter and awaited must belong to the same origin")
    s.try_timeout(now, awaited)
    s.try_timeout(now, awaiter)
    p = s._promise(awaited, "Awaited promise not found")
    waiter = s.promises.get(awaiter)
    if waiter is None:
        raise Fail(422, "Awaiter promise not found")
    if waiter.target is None:
        raise Fail(422, "Awaiter promise has no resonate:target tag")
    task = s.tasks.get(awaiter)
    if p.state == "pending" and waiter.state == "pending":
        s.callbacks.setdefault(awaited, set()).add(awaiter)
        s.awaiting.setdefault(awaiter, set()).add(awaited)
        s.dirty_promises.add(awaited)
    elif p.state != "pending" and task is not None and task.state == "suspended":
        task.resumes = 1
        s._to_pending(now, task)
    return 200, {"promise": p.record()}


def _search_page(ids: SortedSet, d: dict[str, Any], keep: Any, render: Any, key: str) -> _Result:
    limit = d.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise Fail(400, "Limit must be a positive integer")
    if limit > MAX_LIMIT:
        raise Fail(400, f"Invalid 'limit' — must be between 1 and {MAX_LIMIT}")
    cursor = d.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise Fail(400, "Invalid request: 'cursor' must be a string")
    start = ids.bisect_right(cursor) if cursor else 0
    page: list[Any] = []
    more = False
    for i in ids.islice(start):
        if not keep(i):
            continue
        if len(page) == limit:
            more = True
            break
        page.append(i)
    out: dict[str, Any] = {key: [render(i) for i in page]}
    if more:
        out["cursor"] = page[-1]
    return 200, out


def _promise_search(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    state = d.get("state")
    if state is not None and state not in PROMISE_STATES:
        raise Fail(400, f"Invalid request: unknown promise state {state!r}")
    tags = _tags(d.get("tags"))
    ids = s.promises_by_state[state] if state is not None else s.promise_ids

    def keep(i: str) -> bool:
        ptags = s.promises[i].tags
        return all(ptags.get(k) == v for k, v in tags.items())

    return _search_page(ids, d, keep, lambda i: s.promises[i].record(), "promises")


def _task_search(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    state = d.get("state")
    if state is not None and state not in TASK_STATES:
        raise Fail(400, f"Invalid request: unknown task state {state!r}")
    ids = s.tasks_by_state[state] if state is not None else s.task_ids
    return _search_page(ids, d, lambda i: True, lambda i: s.tasks[i].record(), "tasks")


def _task_get(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    tid = _id(d)
    s.try_timeout(now, tid)
    return 200, {"task": s._task(tid).record()}


def _task_create(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    pid = _str(d, "pid")
    ttl = _int(d, "ttl", 1)
    action = _data(d.get("action"), "action")
    c = _validate_create(_data(action.get("data"), "action.data"))
    if "resonate:target" not in c.tags:
        raise Fail(400, "Action must have a resonate:target tag")
    if "resonate:delay" in c.tags:
        raise Fail(400, "Action must not have a resonate:delay tag")
    s.try_timeout(now, c.id)
    existing = s.promises.get(c.id)
    if existing is None:
        p, task = s._create_promise(now, c, acquire=(pid, ttl))
        assert task is not None
        preload = [] if task.state == "fulfilled" else s.preload(p.id)
        return 200, {"task": task.record(), "promise": p.record(), "preload": preload}
    t = s.tasks.get(c.id)
    if t is None:
        raise Fail(422, "The promise does not have a resonate:target tag")
    if t.state == "fulfilled":
        return 200, {"task": t.record(), "promise": existing.record(), "preload": []}
    if t.state == "pending":
        s._acquire(now, t, pid, ttl)
        return 200, {"task": t.record(), "promise": existing.record(), "preload": s.preload(t.id)}
    raise Fail(409, "Already exists")


def _task_acquire(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    tid = _id(d)
    version = _int(d, "version", 0)
    pid = _str(d, "pid")
    ttl = _int(d, "ttl", 1)
    s.try_timeout(now, tid)
    t = s._task(tid)
    if t.state != "pending":
        raise Fail(409, "Task is not pending")
    if t.version != version:
        raise Fail(409, "Version mismatch")
    s._acquire(now, t, pid, ttl)
    p = s.promises[tid]
    return 200, {"task": t.record(), "promise": p.record(), "preload": s.preload(tid)}


def _held(s: ServerState, now: int, d: dict[str, Any], message: str) -> Task:
    tid = _id(d)
    version = _int(d, "version", 0)
    s.try_timeout(now, tid)
    t = s._task(tid)
    if t.state != "acquired" or t.version != version:
        raise Fail(409, message)
    return t


def _task_release(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    t = _held(s, now, d, "Task version mismatch or invalid state")
    s._to_pending(now, t)
    return 200, {}


def _task_fulfill(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    action = _data(_data(d.get("action"), "action").get("data"), "action.data")
    if action.get("id") != d.get("id"):
        raise Fail(400, "Action ID must match the task ID")
    t = _held(s, now, d, "Task version mismatch or invalid state")
    p = _settle_request(s, now, action)
    if t.state != "fulfilled":
        s._fulfill_task(t)
    return 200, {"promise": p.record()}


def _task_suspend(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    tid = _id(d)
    actions = d.get("actions")
    if not isinstance(actions, list) or not actions:
        raise Fail(400, "Actions array cannot be empty")
    awaited_ids: list[str] = []
    for action in actions:
        ad = _data(_data(action, "actions[]").get("data"), "actions[].data")
        awaited, awaiter = _id(ad, "awaited"), _id(ad, "awaiter")
        if awaiter != tid:
            raise Fail(400, "All action awaiter IDs must match the task ID")
        if awaited == tid:
            raise Fail(400, "Action awaited promise must not equal the task ID")
        if origin_of(awaited) != origin_of(tid):
            raise Fail(400, "Awaited promise must belong to the same origin as the task")
        awaited_ids.append(awaited)
    t = _held(s, now, d, "Task is not acquired or version mismatch")
    for awaited in awaited_ids:
        s.try_timeout(now, awaited)
    if any(a not in s.promises for a in awaited_ids):
        raise Fail(422, "Awaited promise not found")
    if t.resumes or any(s.promises[a].state != "pending" for a in awaited_ids):
        t.resumes = 0
        s.dirty_tasks.add(t.id)
        return 300, {"preload": s.preload(tid)}
    for awaited in awaited_ids:
        s.callbacks.setdefault(awaited, set()).add(tid)
        s.awaiting.setdefault(tid, set()).add(awaited)
        s.dirty_promises.add(awaited)
    s._release_lease(t)
    s._set_task_state(t, "suspended")
    return 200, {}


def _task_fence(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    tid = _id(d)
    version = _int(d, "version", 0)
    action = _data(d.get("action"), "action")
    sub_kind = action.get("kind")
    if sub_kind not in ("promise.create", "promise.settle"):
        raise Fail(400, "Invalid fence action kind")
    ad = _data(action.get("data"), "action.data")
    if ad.get("id") == tid:
        raise Fail(400, "Action ID must not equal the task ID")
    created = _validate_create(ad) if sub_kind == "promise.create" else None
    s.try_timeout(now, tid)
    t = s._task(tid)
    if t.state != "acquired" or t.version != version:
        raise Fail(409, "Version mismatch")
    inner: tuple[int, Any]
    if created is not None:
        inner = _promise_create(s, now, ad, corr)
    else:
        try:
            inner = _promise_settle(s, now, ad, corr)
        except Fail as exc:
            inner = (exc.status, exc.message)
    # The official server also resends the whole branch here; the SDK already
    # holds it from the acquire, so this server sends only what changed.
    return 200, {"action": reply(sub_kind, corr, *inner), "preload": []}


def _task_heartbeat(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    """Extend the leases ``pid`` still holds; a liveness signal, never an error per task.

    As on the official server from PR #1119 on (``src/types.rs``
    ``validate_task_heartbeat_data``): an empty list is 400 ``Tasks array must
    not be empty`` and tasks of more than one origin are 400 ``All tasks must
    belong to the same origin``; either way no lease is extended. Tasks that
    are unknown, not acquired, held by another process or at another version
    are skipped silently.
    """
    pid = _str(d, "pid")
    tasks = d.get("tasks")
    if not isinstance(tasks, list):
        raise Fail(400, "Invalid request: 'tasks' must be an array")
    refs: list[tuple[str, Any]] = []
    for ref in tasks:
        ref = _data(ref, "tasks[]")
        refs.append((_id(ref), ref.get("version")))
    if not refs:
        raise Fail(400, "Tasks array must not be empty")
    if len({origin_of(tid) for tid, _ in refs}) > 1:
        raise Fail(400, HEARTBEAT_ORIGIN_MESSAGE)
    for tid, version in refs:
        t = s.tasks.get(tid)
        if (
            t is not None
            and t.state == "acquired"
            and t.pid == pid
            and (version is None or version == t.version)
            and t.ttl is not None
        ):
            t.lease_until = min(now + t.ttl, I64_MAX)
            s._timer(t.lease_until, t.id)
            s.dirty_tasks.add(t.id)
    return 200, {}


def _task_halt(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    t = s._task(_id(d))
    if t.state == "fulfilled":
        raise Fail(409, "Task is fulfilled")
    if t.state != "halted":
        s._release_lease(t)
        t.retry_at = None
        s._set_task_state(t, "halted")
    return 200, {}


def _task_continue(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    t = s._task(_id(d))
    if t.state != "halted":
        raise Fail(409, "Task is not halted")
    s._to_pending(now, t)
    return 200, {}


def _schedule_create(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    sid = _id(d)
    if ":" in sid:
        raise Fail(400, "Schedule ID must not contain ':'")
    cron = _str(d, "cron")
    if len(cron.split()) not in (5, 6):
        raise Fail(400, "Invalid cron expression")
    promise_id = _str(d, "promiseId")
    timeout = _int(d, "promiseTimeout", 0)
    tags = _tags(d.get("promiseTags"))
    target = tags.get("resonate:target")
    if target is None:
        raise Fail(400, "promiseTags must include a resonate:target tag")
    if not is_routable(target):
        raise Fail(400, "Invalid resonate:target address")
    existing = s.schedules.get(sid)
    if existing is not None:
        return 200, {"schedule": existing}
    schedule = {
        "id": sid,
        "cron": cron,
        "promiseId": promise_id,
        "promiseTimeout": timeout,
        "promiseParam": _value(d.get("promiseParam"), "promiseParam"),
        "promiseTags": tags,
        "createdAt": now,
        "nextRunAt": now,
    }
    s.schedules[sid] = schedule
    s.dirty_schedules.add(sid)
    return 200, {"schedule": schedule}


def _schedule_get(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    schedule = s.schedules.get(_id(d))
    if schedule is None:
        raise Fail(404, "Schedule not found")
    return 200, {"schedule": schedule}


def _schedule_delete(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    sid = _id(d)
    if s.schedules.pop(sid, None) is None:
        raise Fail(404, "Schedule not found")
    s.dirty_schedules.add(sid)
    return 200, {}


def _schedule_search(s: ServerState, now: int, d: dict[str, Any], corr: str) -> _Result:
    tags = _tags(d.get("tags"))
    ids = SortedSet(s.schedules)
    d = {"limit": 10, **d}

    def keep(i: str) -> bool:
        stags = s.schedules[i]["promiseTags"]
        return all(stags.get(k) == v for k, v in tags.items())

    return _search_page(ids, d, keep, lambda i: s.schedules[i], "schedules")


_OPS: dict[str, Any] = {
    "promise.get": _promise_get,
    "promise.create": _promise_create,
    "promise.settle": _promise_settle,
    "promise.register_listener": _promise_register_listener,
    "promise.register_callback": _promise_register_callback,
    "promise.search": _promise_search,
    "task.get": _task_get,
    "task.create": _task_create,
    "task.acquire": _task_acquire,
    "task.release": _task_release,
    "task.fulfill": _task_fulfill,
    "task.suspend": _task_suspend,
    "task.fence": _task_fence,
    "task.heartbeat": _task_heartbeat,
    "task.halt": _task_halt,
    "task.continue": _task_continue,
    "task.search": _task_search,
    "schedule.create": _schedule_create,
    "schedule.get": _schedule_get,
    "schedule.delete": _schedule_delete,
    "schedule.search": _schedule_search,
}

#: Every request kind this server answers.
KINDS = tuple(_OPS)
