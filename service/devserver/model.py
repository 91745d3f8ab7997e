"""The local server's rows: promises, tasks, schedules, and the push messages it sends.

Each row renders its protocol record (what a reply carries) with ``record()``;
how rows are written to and read from the store is :mod:`service.devserver.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.devserver.protocol import JsonObject, PromiseState, TaskState, ValueRecord


@dataclass(slots=True)
class Promise:
    id: str
    state: PromiseState
    param: ValueRecord
    value: ValueRecord
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None = None

    def record(self) -> JsonObject:
        """The promise as the protocol shows it (``settledAt`` only once settled)."""
        rec: JsonObject = {
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
        """Where its task's ``execute`` goes (``resonate:target``), if it has a task."""
        return self.tags.get("resonate:target")


@dataclass(slots=True)
class Task:
    id: str
    state: TaskState
    version: int
    pid: str | None = None
    ttl: int | None = None
    lease_until: int | None = None
    retry_at: int | None = None
    resumes: int = 0

    def record(self) -> JsonObject:
        """The task as the protocol shows it (``ttl``/``pid`` only while acquired)."""
        rec: JsonObject = {
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
class Schedule:
    id: str
    cron: str
    promise_id: str
    promise_timeout: int
    promise_param: ValueRecord
    promise_tags: dict[str, str]
    created_at: int
    next_run_at: int

    def record(self) -> JsonObject:
        """The schedule as the protocol shows it (also its stored row)."""
        return {
            "id": self.id,
            "cron": self.cron,
            "promiseId": self.promise_id,
            "promiseTimeout": self.promise_timeout,
            "promiseParam": self.promise_param,
            "promiseTags": self.promise_tags,
            "createdAt": self.created_at,
            "nextRunAt": self.next_run_at,
        }


@dataclass(slots=True)
class Outgoing:
    """A push message for ``address`` (delivered after the change is durable)."""

    address: str
    message: JsonObject


def execute_message(task: Task, server_url: str) -> JsonObject:
    """The ``execute`` message offering ``task`` at its current version."""
    return {
        "kind": "execute",
        "head": {"serverUrl": server_url},
        "data": {"task": {"id": task.id, "version": task.version}},
    }


def unblock_message(promise: Promise) -> JsonObject:
    """The ``unblock`` message telling a listener that ``promise`` settled."""
    return {"kind": "unblock", "head": {}, "data": {"promise": promise.record()}}


def timeout_state(tags: dict[str, str]) -> Literal["resolved", "rejected_timedout"]:
    """The state a promise takes at its deadline: timers resolve, the rest time out."""
    return "resolved" if tags.get("resonate:timer") == "true" else "rejected_timedout"
