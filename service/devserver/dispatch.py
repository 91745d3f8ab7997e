"""From a decoded request envelope to its reply: checks, the auth gate, the operation.

Every request kind maps to an :class:`Op`: the struct its ``data`` decodes
to (:mod:`service.devserver.protocol`) and the function that applies it,
one module per resource (:mod:`~service.devserver.promises`,
:mod:`~service.devserver.tasks`, :mod:`~service.devserver.schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.devserver import promises, schedules, tasks
from service.devserver.decoding import Fail, Request, decode
from service.devserver.protocol import (
    JsonObject,
    PromiseCreate,
    PromiseGet,
    PromiseRegisterCallback,
    PromiseRegisterListener,
    PromiseSearch,
    PromiseSettle,
    ScheduleCreate,
    ScheduleRef,
    ScheduleSearch,
    TaskAcquire,
    TaskCreate,
    TaskFence,
    TaskFulfill,
    TaskHeartbeat,
    TaskRef,
    TaskRelease,
    TaskSearch,
    TaskSuspend,
    decode_envelope,
    reply,
    reply_address,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.devserver.state import ServerState

#: An access check run on every valid envelope before it is applied: takes
#: (kind, head, data) and returns None to go on, or (status, message) to
#: refuse the request (the local server's JWT auth, :mod:`service.devserver.auth`).
type Gate = Callable[[str, dict[str, object], dict[str, object]], tuple[int, str] | None]
#: What an operation answers: (status, reply data).
type Result = tuple[int, JsonObject]


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply; ``data`` is the payload, or the message of an error."""

    kind: str
    corr_id: str
    status: int
    data: JsonObject | str

    def envelope(self) -> JsonObject:
        """The reply envelope as sent on the wire."""
        return reply(self.kind, self.corr_id, self.status, self.data)


@dataclass(frozen=True, slots=True)
class Op[R: Request]:
    """One request kind: the struct its ``data`` decodes to and what applies it."""

    request: type[R]
    run: Callable[[ServerState, int, R, str], Result]

    def __call__(self, state: ServerState, now: int, data: dict[str, object], corr: str) -> Result:
        return self.run(state, now, decode(data, self.request), corr)


#: Every request kind this server answers.
OPS: dict[str, Callable[[ServerState, int, dict[str, object], str], Result]] = {
    "promise.get": Op(PromiseGet, promises.get),
    "promise.create": Op(PromiseCreate, promises.create),
    "promise.settle": Op(PromiseSettle, promises.settle),
    "promise.register_listener": Op(PromiseRegisterListener, promises.register_listener),
    "promise.register_callback": Op(PromiseRegisterCallback, promises.register_callback),
    "promise.search": Op(PromiseSearch, promises.search),
    "task.get": Op(TaskRef, tasks.get),
    "task.create": Op(TaskCreate, tasks.create),
    "task.acquire": Op(TaskAcquire, tasks.acquire),
    "task.release": Op(TaskRelease, tasks.release),
    "task.fulfill": Op(TaskFulfill, tasks.fulfill),
    "task.suspend": Op(TaskSuspend, tasks.suspend),
    "task.fence": Op(TaskFence, tasks.fence),
    "task.heartbeat": Op(TaskHeartbeat, tasks.heartbeat),
    "task.halt": Op(TaskRef, tasks.halt),
    "task.continue": Op(TaskRef, tasks.resume),
    "task.search": Op(TaskSearch, tasks.search),
    "schedule.create": Op(ScheduleCreate, schedules.create),
    "schedule.get": Op(ScheduleRef, schedules.get),
    "schedule.delete": Op(ScheduleRef, schedules.delete),
    "schedule.search": Op(ScheduleSearch, schedules.search),
}
KINDS = tuple(OPS)


def apply(state: ServerState, now: int, raw: object, gate: Gate | None) -> Reply:
    """Check the envelope, run the gate, decode ``data`` by kind and apply it."""
    kind, corr = reply_address(raw)
    try:
        envelope = decode_envelope(raw)
        if gate is not None:
            assert isinstance(raw, dict)  # decode_envelope checked it
            refused = gate(kind, raw["head"], envelope.data)
            if refused is not None:
                raise Fail(*refused)
        op = OPS.get(kind)
        if op is None:
            raise Fail(400, f"Unknown operation: {kind}")
        status, out = op(state, now, envelope.data, corr)
    except Fail as exc:
        return Reply(kind, corr, exc.status, exc.message)
    return Reply(kind, corr, status, out)
