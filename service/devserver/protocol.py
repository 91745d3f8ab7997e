"""The local server's requests as typed structs, decoded and validated by msgspec.

One struct per request kind's ``data`` (mapped to kinds in
:mod:`service.devserver.dispatch`) and one for the envelope around it.
msgspec does every shape check (types, required fields, string lengths,
integer ranges); rules that relate fields to each other (id prefixes,
same-origin, address syntax) stay with the operations that apply them.

The replies to a bad request are those the official server gives (and this
server gave when it validated by hand): each struct lists its fields in the
order they are checked, with the rule that words each one's refusal
(:mod:`service.devserver.decoding`).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from msgspec import Meta, Struct

from service.connector.sdk import PROTOCOL_VERSION, origin_of
from service.devserver.decoding import ABSENT, Fail, Request, Rule, decode

#: A JSON object as replies and push messages carry it.
type JsonObject = dict[str, object]
#: A promise's ``param`` or ``value``: ``{headers?, data?}``.
type ValueRecord = dict[str, str | dict[str, str]]

PromiseState = Literal["pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout"]
SettleState = Literal["resolved", "rejected", "rejected_canceled"]
TaskState = Literal["pending", "acquired", "suspended", "halted", "fulfilled"]
PROMISE_STATES: tuple[PromiseState, ...] = get_args(PromiseState)
SETTLE_REQUEST_STATES: tuple[SettleState, ...] = get_args(SettleState)
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)

#: Search page size when none is asked for, and the largest allowed.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: ``schedule.search`` page size when none is asked for.
DEFAULT_SCHEDULE_LIMIT = 10
#: Longest promise id accepted (the official server has no limit; this keeps
#: one request from pinning unbounded memory in a development server).
MAX_ID_CHARS = 8192
I64_MAX = (1 << 63) - 1

NonEmpty = Annotated[str, Meta(min_length=1)]
#: A promise, task or schedule id: non-empty, no NUL byte, at most MAX_ID_CHARS.
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern="^[^\x00]*$")]
#: A schedule id: an :data:`Id` without ``:`` (the official server's rule, #1126).
ScheduleId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern="^[^\x00:]*$")]
#: A cron expression: five or six fields (not parsed further; schedules never fire).
Cron = Annotated[str, Meta(min_length=1, pattern=r"^\s*\S+(\s+\S+){4,5}\s*$")]
Natural = Annotated[int, Meta(ge=0, le=I64_MAX)]
Positive = Annotated[int, Meta(ge=1, le=I64_MAX)]
Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]


# ------------------------------------------------------------------ refusals
# Each rule words the refusal of one field from its raw value (ABSENT when
# the key is missing), as the official server words it.


def _string(key: str) -> Rule:
    return lambda _: f"Invalid request: '{key}' must be a non-empty string"


def _id(key: str) -> Rule:
    def rule(raw: object) -> str:
        if not isinstance(raw, str) or raw == "":
            return f"Invalid request: '{key}' must be a non-empty string"
        if "\0" in raw:
            return "Promise ID must not contain null bytes"
        return f"Invalid request: '{key}' is longer than {MAX_ID_CHARS} characters"

    return rule


def _schedule_id(raw: object) -> str:
    if isinstance(raw, str) and raw and "\0" not in raw and ":" in raw:
        return "Schedule ID must not contain ':'"
    return _id("id")(raw)


def _cron(raw: object) -> str:
    if not isinstance(raw, str) or raw == "":
        return "Invalid request: 'cron' must be a non-empty string"
    return "Invalid cron expression"


def _integer(key: str, lo: int, *, missing: str | None = None) -> Rule:
    def rule(raw: object) -> str:
        if raw is ABSENT and missing is not None:
            return missing
        if isinstance(raw, bool) or not isinstance(raw, int):
            return f"Invalid request: '{key}' must be an integer"
        return f"Invalid request: '{key}' must be between {lo} and {I64_MAX}"

    return rule


def _value(key: str) -> Rule:
    def rule(raw: object) -> str:
        if not isinstance(raw, dict):
            return f"Invalid request: '{key}' must be an object"
        headers = raw.get("headers")
        if headers is not None and not _is_str_map(headers):
            return f"Invalid request: '{key}.headers' must map strings to strings"
        return f"Invalid request: '{key}.data' must be a string"

    return rule


def _tags(_: object) -> str:
    return "Invalid request: 'tags' must map strings to strings"


def _limit(raw: object) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        return "Limit must be a positive integer"
    return f"Invalid 'limit' — must be between 1 and {MAX_LIMIT}"


def _is_str_map(raw: object) -> bool:
    return isinstance(raw, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    )


def _fixed(message: str) -> Rule:
    return lambda _: message


# ------------------------------------------------------------------ values


class Value(Struct):
    """A promise's ``param`` or ``value``: ``{headers?, data?}`` (unknown keys ignored).

    Not a :class:`Request`: a bad value is refused by its field's rule, which
    names the field it sits in (``'param.data' must be a string``).
    """

    headers: dict[str, str] | None = None
    data: str | None = None

    def record(self) -> ValueRecord:
        out: ValueRecord = {}
        if self.headers is not None:
            out["headers"] = self.headers
        if self.data is not None:
            out["data"] = self.data
        return out


def value_record(value: Value | None) -> ValueRecord:
    """The stored form of an optional value (absent or null: ``{}``)."""
    return {} if value is None else value.record()


# ---------------------------------------------------------------- promises


class PromiseGet(Request):
    id: Id
    RULES = {"id": _id("id")}


class PromiseCreate(Request):
    id: Id
    timeout_at: Natural
    param: Value | None = None
    tags: dict[str, str] | None = None
    RULES = {
        "id": _id("id"),
        "timeout_at": _integer(
            "timeoutAt", 0, missing="Invalid request: missing field 'timeoutAt'"
        ),
        "param": _value("param"),
        "tags": _tags,
    }


def _settle_state(raw: object) -> str:
    got = None if raw is ABSENT else raw
    return (
        f"Invalid request: 'state' must be one of {', '.join(SETTLE_REQUEST_STATES)}, got {got!r}"
    )


class PromiseSettle(Request):
    id: Id
    state: SettleState
    value: Value | None = None
    RULES = {"id": _id("id"), "state": _settle_state, "value": _value("value")}


class PromiseRegisterListener(Request):
    awaited: Id
    address: NonEmpty
    RULES = {"awaited": _id("awaited"), "address": _string("address")}


class PromiseRegisterCallback(Request):
    awaited: Id
    awaiter: Id
    RULES = {"awaited": _id("awaited"), "awaiter": _id("awaiter")}


def _state_rule(what: str) -> Rule:
    return lambda raw: f"Invalid request: unknown {what} state {raw!r}"


_CURSOR = "Invalid request: 'cursor' must be a string"


class PromiseSearch(Request):
    state: PromiseState | None = None
    tags: dict[str, str] | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: str | None = None
    RULES = {
        "state": _state_rule("promise"),
        "tags": _tags,
        "limit": _limit,
        "cursor": _fixed(_CURSOR),
    }


# ------------------------------------------------------------------- tasks


class TaskRef(Request):
    """``task.get``, ``task.halt``, ``task.continue``: a task by id."""

    id: Id
    RULES = {"id": _id("id")}


class TaskCreateAction(Request):
    data: PromiseCreate


class TaskCreate(Request):
    pid: NonEmpty
    ttl: Positive
    action: TaskCreateAction
    RULES = {"pid": _string("pid"), "ttl": _integer("ttl", 1)}


class TaskAcquire(Request):
    id: Id
    version: Natural
    pid: NonEmpty
    ttl: Positive
    RULES = {
        "id": _id("id"),
        "version": _integer("version", 0),
        "pid": _string("pid"),
        "ttl": _integer("ttl", 1),
    }


class TaskRelease(Request):
    id: Id
    version: Natural
    RULES = {"id": _id("id"), "version": _integer("version", 0)}


class RawAction(Request):
    """An action whose ``data`` is validated later, where the official server does."""

    data: dict[str, object]


def _fulfill_ids_match(raw: dict[str, object]) -> str | None:
    action = raw.get("action")
    data = action.get("data") if isinstance(action, dict) else None
    if isinstance(data, dict) and data.get("id") != raw.get("id"):
        return "Action ID must match the task ID"
    return None


class TaskFulfill(Request):
    """``task.fulfill``: its ``action.data`` is a ``promise.settle`` payload."""

    action: RawAction
    id: Id
    version: Natural
    RULES = {"id": _id("id"), "version": _integer("version", 0)}
    BEFORE = {"id": _fulfill_ids_match}


class SuspendCallback(Request):
    awaited: Id
    awaiter: Id
    RULES = {"awaited": _id("awaited"), "awaiter": _id("awaiter")}


class SuspendAction(Request):
    data: SuspendCallback


_NO_ACTIONS = "Actions array cannot be empty"


def suspend_problem(task_id: str, awaited: str, awaiter: str) -> str | None:
    """Why one ``task.suspend`` callback is refused (400), or None if it is fine."""
    if awaiter != task_id:
        return "All action awaiter IDs must match the task ID"
    if awaited == task_id:
        return "Action awaited promise must not equal the task ID"
    if origin_of(awaited) != origin_of(task_id):
        return "Awaited promise must belong to the same origin as the task"
    return None


def _actions_before_version(raw: dict[str, object]) -> str | None:
    # Reached only once ``id`` and ``actions`` decoded, so their shapes hold.
    actions = raw["actions"]
    assert isinstance(actions, list)
    for action in actions:
        problem = suspend_problem(
            str(raw["id"]), action["data"]["awaited"], action["data"]["awaiter"]
        )
        if problem is not None:
            return problem
    return None


class TaskSuspend(Request):
    id: Id
    actions: Annotated[list[SuspendAction], Meta(min_length=1)]
    version: Natural
    RULES = {"id": _id("id"), "actions": _fixed(_NO_ACTIONS), "version": _integer("version", 0)}
    # Each callback's rules come before the version check, as on the official server.
    BEFORE = {"version": _actions_before_version}


class FenceAction(Request):
    kind: Literal["promise.create", "promise.settle"]
    data: dict[str, object]
    RULES = {"kind": _fixed("Invalid fence action kind")}


class TaskFence(Request):
    id: Id
    version: Natural
    action: FenceAction
    RULES = {"id": _id("id"), "version": _integer("version", 0)}


class HeartbeatRef(Request):
    id: Id
    #: Matched against the task's version when given; the protocol leaves it
    #: untyped here, and a value that is not the task's version only skips it.
    version: object = None
    RULES = {"id": _id("id")}


class TaskHeartbeat(Request):
    pid: NonEmpty
    tasks: list[HeartbeatRef]
    RULES = {"pid": _string("pid"), "tasks": _fixed("Invalid request: 'tasks' must be an array")}


class TaskSearch(Request):
    state: TaskState | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: str | None = None
    RULES = {"state": _state_rule("task"), "limit": _limit, "cursor": _fixed(_CURSOR)}


# --------------------------------------------------------------- schedules


class ScheduleCreate(Request):
    id: ScheduleId
    cron: Cron
    promise_id: NonEmpty
    promise_timeout: Natural
    promise_tags: dict[str, str] | None = None
    promise_param: Value | None = None
    RULES = {
        "id": _schedule_id,
        "cron": _cron,
        "promise_id": _string("promiseId"),
        "promise_timeout": _integer("promiseTimeout", 0),
        "promise_tags": _tags,
        "promise_param": _value("promiseParam"),
    }


class ScheduleRef(Request):
    """``schedule.get``, ``schedule.delete``: a schedule by id."""

    id: Id
    RULES = {"id": _id("id")}


class ScheduleSearch(Request):
    tags: dict[str, str] | None = None
    limit: Limit = DEFAULT_SCHEDULE_LIMIT
    cursor: str | None = None
    RULES = {"tags": _tags, "limit": _limit, "cursor": _fixed(_CURSOR)}


# ---------------------------------------------------------------- envelope


class Head(Request):
    corr_id: str
    version: str
    auth: str | None = None
    RULES = {
        "corr_id": _fixed("Invalid request envelope: missing 'head.corrId'"),
        "version": _fixed("Invalid request envelope: missing 'head.version'"),
        "auth": _fixed("Invalid request envelope: 'head.auth' must be a string"),
    }


class Envelope(Request):
    """A request envelope; ``data`` is decoded by kind once the kind is known."""

    head: Head
    kind: NonEmpty
    data: dict[str, object]
    RULES = {
        # A head that is not an object is refused as its first field would be.
        "head": Head.RULES["corr_id"],
        "kind": _fixed("Missing or invalid 'kind' field — must be a non-empty string"),
    }


def decode_envelope(raw: object) -> Envelope:
    """A request envelope, or :class:`Fail` (400) naming its first problem."""
    if not isinstance(raw, dict):
        raise Fail(400, "Invalid request envelope: expected a JSON object")
    envelope = decode(raw, Envelope, "")
    if envelope.head.version != PROTOCOL_VERSION:
        raise Fail(
            400,
            f"Unsupported protocol version '{envelope.head.version}', "
            f'supported versions: ["{PROTOCOL_VERSION}"]',
        )
    return envelope


def reply(kind: str, corr: str, status: int, data: JsonObject | str) -> JsonObject:
    """A response envelope; ``data`` is the payload, or the message for an error."""
    return {
        "kind": kind,
        "head": {"corrId": corr, "status": status, "version": PROTOCOL_VERSION},
        "data": data,
    }


def reply_address(raw: object) -> tuple[str, str]:
    """(kind, corrId) to answer a request with, as far as they can be read from it."""
    kind, corr = "unknown", "0"
    if isinstance(raw, dict):
        raw_kind = raw.get("kind")
        if isinstance(raw_kind, str):
            kind = raw_kind
        head = raw.get("head")
        if isinstance(head, dict) and isinstance(head.get("corrId"), str):
            corr = head["corrId"]
    return kind, corr
