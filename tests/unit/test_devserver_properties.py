"""The local server's state, driven directly (no sockets) by random request sequences.

A hypothesis state machine applies creates, settles, acquires, fences,
suspends, fulfills, releases, heartbeats and clock ticks to one
:class:`ServerState` and checks after every step what must always hold:

* a settled promise never changes again;
* a task's version never goes down;
* a promise read back right after it was created is what the create returned;
* search pages hold each matching item exactly once, in id order;
* the indexes (by state, leases, callbacks and their reverse) agree with the rows;
* the state written as rows and read back (a server restart) is the same state.

The differential test against the SDK's own simulation, over HTTP, is
``tests/integration/test_conformance.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from resonate_base import PROTOCOL_VERSION

from service.devserver import rows
from service.devserver.protocol import PROMISE_STATES, TASK_STATES
from service.devserver.state import ServerState

TARGET = "poll://any@workers"
ROOTS = ["r0", "r1"]
#: Children of each root: the SDK's ids (``root:1``, ``root:1.2``).
CHILDREN = [f"{r}:{i}" for r in ROOTS for i in (1, 2)]
IDS = ROOTS + CHILDREN
PIDS = ["w1", "w2"]
FAR = 1 << 60


def env(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "head": {"corrId": "p", "version": PROTOCOL_VERSION}, "data": data}


def root_of(promise_id: str) -> str:
    return promise_id.split(":", 1)[0]


class ServerStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ServerState(retry_ms=1_000)
        self.now = 1_000
        #: id -> record of every promise seen settled.
        self.settled: dict[str, dict[str, Any]] = {}
        #: id -> highest version seen for each task.
        self.versions: dict[str, int] = {}

    def send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        out = self.state.handle(self.now, env(kind, data))
        assert out["kind"] == kind
        assert out["head"]["corrId"] == "p"
        assert out["head"]["status"] in (200, 300, 400, 404, 409, 422), out
        self.state.take_outbox()
        return out

    def version(self, task_id: str) -> int:
        task = self.state.tasks.get(task_id)
        return task.version if task is not None else 0

    # ------------------------------------------------------------------- rules

    @initialize()
    def roots(self) -> None:
        """Start from the roots' pending tasks, as after ``resonate-patterns call``."""
        for root in ROOTS:
            data = {"id": root, "timeoutAt": FAR, "tags": {"resonate:target": TARGET}}
            assert self.send("promise.create", data)["head"]["status"] == 200

    @rule(
        promise_id=st.sampled_from(IDS),
        routed=st.booleans(),
        timeout=st.sampled_from([FAR, 500, 3_000]),
    )
    def create(self, promise_id: str, routed: bool, timeout: int) -> None:
        tags = {"resonate:target": TARGET} if routed else {}
        if ":" in promise_id:
            tags["resonate:branch"] = root_of(promise_id)
        before = self.state.promises.get(promise_id)
        data = {"id": promise_id, "timeoutAt": self.now + timeout, "tags": tags}
        out = self.send("promise.create", data)
        assert out["head"]["status"] == 200, out
        created = out["data"]["promise"]
        if before is None:
            assert created["id"] == promise_id
            assert created["tags"] == tags
            assert created["timeoutAt"] == self.now + timeout
            assert created["state"] == "pending"
        got = self.send("promise.get", {"id": promise_id})
        assert got["data"]["promise"] == created

    @rule(
        promise_id=st.sampled_from(IDS),
        state=st.sampled_from(["resolved", "rejected", "rejected_canceled"]),
        data=st.sampled_from(["MQ==", "Mg=="]),
    )
    def settle(self, promise_id: str, state: str, data: str) -> None:
        before = self.state.promises.get(promise_id)
        out = self.send(
            "promise.settle", {"id": promise_id, "state": state, "value": {"data": data}}
        )
        if before is None:
            assert (out["head"]["status"], out["data"]) == (404, "Promise not found")
            return
        assert out["head"]["status"] == 200
        if promise_id not in self.settled and out["data"]["promise"]["state"] == state:
            assert out["data"]["promise"]["value"] == {"data": data}

    @rule(task_id=st.sampled_from(ROOTS), pid=st.sampled_from(PIDS), stale=st.booleans())
    def acquire(self, task_id: str, pid: str, stale: bool) -> None:
        version = self.version(task_id) + (1 if stale else 0)
        out = self.send(
            "task.acquire", {"id": task_id, "version": version, "pid": pid, "ttl": 2_000}
        )
        if out["head"]["status"] == 200:
            assert not stale
            assert out["data"]["task"]["version"] == version + 1
            assert out["data"]["task"]["pid"] == pid
            assert task_id not in [p["id"] for p in out["data"]["preload"]]

    @rule(task_id=st.sampled_from(ROOTS), pid=st.sampled_from(PIDS))
    def task_create(self, task_id: str, pid: str) -> None:
        action = {
            "kind": "promise.create",
            "data": {"id": task_id, "timeoutAt": FAR, "tags": {"resonate:target": TARGET}},
        }
        out = self.send("task.create", {"pid": pid, "ttl": 2_000, "action": action})
        assert out["head"]["status"] in (200, 409, 422), out

    @rule(
        task_id=st.sampled_from(ROOTS),
        child=st.sampled_from([1, 2]),
        create=st.booleans(),
        routed=st.booleans(),
    )
    def fence(self, task_id: str, child: int, create: bool, routed: bool) -> None:
        child_id = f"{task_id}:{child}"
        tags = {"resonate:branch": task_id, "resonate:parent": task_id}
        if routed:
            tags["resonate:target"] = TARGET
        data: dict[str, Any] = (
            {"id": child_id, "timeoutAt": FAR, "tags": tags}
            if create
            else {"id": child_id, "state": "resolved", "value": {"data": "Mw=="}}
        )
        kind = "promise.create" if create else "promise.settle"
        version = self.version(task_id)
        out = self.send(
            "task.fence",
            {"id": task_id, "version": version, "action": {"kind": kind, "data": data}},
        )
        if out["head"]["status"] == 200:
            inner = out["data"]["action"]
            assert inner["kind"] == kind
            assert inner["head"]["status"] in (200, 404)
            assert out["data"]["preload"] == []

    @rule(task_id=st.sampled_from(ROOTS), children=st.sets(st.sampled_from([1, 2]), min_size=1))
    def suspend(self, task_id: str, children: set[int]) -> None:
        actions = [
            {
                "kind": "promise.register_callback",
                "data": {"awaited": f"{task_id}:{c}", "awaiter": task_id},
            }
            for c in sorted(children)
        ]
        out = self.send(
            "task.suspend", {"id": task_id, "version": self.version(task_id), "actions": actions}
        )
        if out["head"]["status"] == 200:
            assert self.state.tasks[task_id].state == "suspended"
        elif out["head"]["status"] == 300:
            assert self.state.tasks[task_id].resumes == 0

    @rule(task_id=st.sampled_from(ROOTS))
    def fulfill(self, task_id: str) -> None:
        action = {
            "kind": "promise.settle",
            "data": {"id": task_id, "state": "resolved", "value": {"data": "NA=="}},
        }
        out = self.send(
            "task.fulfill", {"id": task_id, "version": self.version(task_id), "action": action}
        )
        if out["head"]["status"] == 200:
            assert self.state.tasks[task_id].state == "fulfilled"
            assert out["data"]["promise"]["state"] != "pending"

    @rule(task_id=st.sampled_from(ROOTS))
    def release(self, task_id: str) -> None:
        out = self.send("task.release", {"id": task_id, "version": self.version(task_id)})
        if out["head"]["status"] == 200:
            assert self.state.tasks[task_id].state == "pending"

    @rule(pid=st.sampled_from(PIDS), task_ids=st.sets(st.sampled_from(ROOTS), min_size=1))
    def heartbeat(self, pid: str, task_ids: set[str]) -> None:
        refs = [{"id": t, "version": self.version(t)} for t in sorted(task_ids)]
        out = self.send("task.heartbeat", {"pid": pid, "tasks": refs})
        expected = 200 if len({root_of(t) for t in task_ids}) == 1 else 400
        assert out["head"]["status"] == expected

    @rule(task_id=st.sampled_from(IDS), halt=st.booleans())
    def halt_or_continue(self, task_id: str, halt: bool) -> None:
        self.send("task.halt" if halt else "task.continue", {"id": task_id})

    @rule(pid=st.sampled_from(PIDS))
    def worker_gone(self, pid: str) -> None:
        released = self.state.release_pid(self.now, pid)
        assert all(self.state.tasks[t].state == "pending" for t in released)
        self.state.take_outbox()

    @rule(ms=st.sampled_from([1, 600, 1_500, 2_500]))
    def tick(self, ms: int) -> None:
        self.now += ms
        self.state.tick(self.now)
        self.state.take_outbox()

    @rule()
    def restart_from_rows(self) -> None:
        """Write every row as the store does, read them into a new state, and go on with it."""
        s = self.state
        docs = (
            [msgspec.json.encode(rows.promise_row(s, i)).decode() for i in s.promises],
            [msgspec.json.encode(rows.task_row(s, i)).decode() for i in s.tasks],
            [msgspec.json.encode(rows.schedule_row(s, i)).decode() for i in s.schedules],
        )
        loaded = ServerState(retry_ms=s.retry_ms)
        rows.load(loaded, *docs)
        assert {i: p.record() for i, p in loaded.promises.items()} == {
            i: p.record() for i, p in s.promises.items()
        }
        assert loaded.tasks == s.tasks
        assert (loaded.callbacks, loaded.awaiting) == (s.callbacks, s.awaiting)
        assert (loaded.listeners, loaded.leases) == (s.listeners, s.leases)
        assert (loaded.dirty_promises, loaded.dirty_tasks, loaded.dirty_schedules) == (
            set(),
            set(),
            set(),
        )
        self.state = loaded

    @precondition(lambda self: bool(self.state.promises))
    @rule(
        kind=st.sampled_from(["promise.search", "task.search"]),
        limit=st.integers(min_value=1, max_value=4),
        by_state=st.booleans(),
    )
    def search_pages_each_item_once(self, kind: str, limit: int, by_state: bool) -> None:
        is_promise = kind == "promise.search"
        key = "promises" if is_promise else "tasks"
        rows = self.state.promises if is_promise else self.state.tasks
        wanted_state = None
        if by_state and rows:
            wanted_state = sorted(r.state for r in rows.values())[0]
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(len(IDS) + 2):
            data: dict[str, Any] = {"limit": limit}
            if wanted_state is not None:
                data["state"] = wanted_state
            if cursor is not None:
                data["cursor"] = cursor
            out = self.send(kind, data)
            assert out["head"]["status"] == 200
            page = [item["id"] for item in out["data"][key]]
            assert len(page) <= limit
            seen += page
            cursor = out["data"].get("cursor")
            if cursor is None:
                break
            assert cursor == page[-1]
        expected = sorted(i for i, r in rows.items() if wanted_state in (None, r.state))
        assert seen == expected

    # -------------------------------------------------------------- invariants

    @invariant()
    def settled_promises_never_change(self) -> None:
        for promise_id, record in self.settled.items():
            assert self.state.promises[promise_id].record() == record
        for promise_id, p in self.state.promises.items():
            if p.state != "pending" and promise_id not in self.settled:
                self.settled[promise_id] = p.record()

    @invariant()
    def task_versions_only_grow(self) -> None:
        for task_id, task in self.state.tasks.items():
            assert task.version >= self.versions.get(task_id, 0)
            self.versions[task_id] = task.version

    @invariant()
    def indexes_agree_with_rows(self) -> None:
        s = self.state
        for state in PROMISE_STATES:
            assert set(s.promises_by_state[state]) == {
                i for i, p in s.promises.items() if p.state == state
            }
        for state in TASK_STATES:
            assert set(s.tasks_by_state[state]) == {
                i for i, t in s.tasks.items() if t.state == state
            }
        assert set(s.promise_ids) == set(s.promises)
        assert set(s.task_ids) == set(s.tasks)
        leased = {(t.pid, i) for i, t in s.tasks.items() if t.state == "acquired"}
        assert {(pid, i) for pid, ids in s.leases.items() for i in ids} == leased
        assert all(ids for ids in s.leases.values())
        pairs = {(a, w) for a, ws in s.callbacks.items() for w in ws}
        assert pairs == {(a, w) for w, as_ in s.awaiting.items() for a in as_}
        for awaited, awaiter in pairs:
            assert s.promises[awaited].state == "pending"
            assert s.tasks[awaiter].state != "fulfilled"
        for task_id, task in s.tasks.items():
            if task.state == "acquired":
                assert task.pid is not None
                assert task.lease_until is not None
            else:
                assert task.pid is None
                assert task.lease_until is None
            if task.state == "fulfilled":
                assert s.promises[task_id].state != "pending"


ServerStateMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_server_state__random_request_sequences__invariants_hold = ServerStateMachine.TestCase
