"""The local server's request decoding: typed structs, and refusals worded as the official server's.

Every refusal is pinned by its exact status and message, and does not
depend on the order the keys arrive in (the first bad field in declaration
order is named, as the hand-written checks always did).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resonate_base import PROTOCOL_VERSION

from service.devserver.decoding import Fail, decode
from service.devserver.protocol import (
    MAX_ID_CHARS,
    PromiseCreate,
    PromiseSearch,
    ScheduleSearch,
    TaskSuspend,
    Value,
    decode_envelope,
)
from service.devserver.state import ServerState

TARGET = {"resonate:target": "poll://any@workers"}
I64 = "9223372036854775807"


def answer(kind: str, data: Any, **head: Any) -> tuple[int, Any]:
    envelope = {
        "kind": kind,
        "head": {"corrId": "c", "version": PROTOCOL_VERSION, **head},
        "data": data,
    }
    out = ServerState().handle(1_000, envelope)
    return out["head"]["status"], out["data"]


REFUSALS: list[tuple[str, Any, str]] = [
    ("promise.get", {}, "Invalid request: 'id' must be a non-empty string"),
    ("promise.get", {"id": ""}, "Invalid request: 'id' must be a non-empty string"),
    ("promise.get", {"id": 7}, "Invalid request: 'id' must be a non-empty string"),
    ("promise.get", {"id": "a\0b"}, "Promise ID must not contain null bytes"),
    (
        "promise.get",
        {"id": "x" * (MAX_ID_CHARS + 1)},
        f"Invalid request: 'id' is longer than {MAX_ID_CHARS} characters",
    ),
    # NUL is named before the length, as the hand-written check did.
    ("promise.get", {"id": "\0" * (MAX_ID_CHARS + 1)}, "Promise ID must not contain null bytes"),
    ("promise.create", {"id": "p"}, "Invalid request: missing field 'timeoutAt'"),
    (
        "promise.create",
        {"id": "p", "timeoutAt": None},
        "Invalid request: 'timeoutAt' must be an integer",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": True},
        "Invalid request: 'timeoutAt' must be an integer",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": 1.5},
        "Invalid request: 'timeoutAt' must be an integer",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": -1},
        f"Invalid request: 'timeoutAt' must be between 0 and {I64}",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": 9, "param": []},
        "Invalid request: 'param' must be an object",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": 9, "param": {"headers": {"a": 1}}},
        "Invalid request: 'param.headers' must map strings to strings",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": 9, "param": {"data": 1}},
        "Invalid request: 'param.data' must be a string",
    ),
    (
        "promise.create",
        {"id": "p", "timeoutAt": 9, "tags": {"a": 1}},
        "Invalid request: 'tags' must map strings to strings",
    ),
    (
        "promise.create",
        {"id": "p:1", "timeoutAt": 9, "tags": {"resonate:origin": "q"}},
        "Promise ID must be prefixed by resonate:origin",
    ),
    (
        "promise.settle",
        {"id": "p", "state": "pending"},
        "Invalid request: 'state' must be one of resolved, rejected, rejected_canceled, "
        "got 'pending'",
    ),
    (
        "promise.settle",
        {"id": "p"},
        "Invalid request: 'state' must be one of resolved, rejected, rejected_canceled, got None",
    ),
    ("promise.search", {"state": "x"}, "Invalid request: unknown promise state 'x'"),
    ("promise.search", {"limit": 0}, "Limit must be a positive integer"),
    ("promise.search", {"limit": None}, "Limit must be a positive integer"),
    ("promise.search", {"limit": 1001}, "Invalid 'limit' — must be between 1 and 1000"),
    ("promise.search", {"cursor": 3}, "Invalid request: 'cursor' must be a string"),
    ("task.search", {"state": "done"}, "Invalid request: unknown task state 'done'"),
    ("task.create", {"pid": "w", "ttl": 0}, "Invalid request: 'ttl' must be between 1 and " + I64),
    ("task.create", {"pid": "w", "ttl": 5}, "Invalid 'action' field — must be an object"),
    (
        "task.create",
        {"pid": "w", "ttl": 5, "action": {"data": 3}},
        "Invalid 'action.data' field — must be an object",
    ),
    (
        "task.create",
        {"pid": "w", "ttl": 5, "action": {"data": {"id": "p", "timeoutAt": 9}}},
        "Action must have a resonate:target tag",
    ),
    (
        "task.fulfill",
        {"id": "t", "version": 1, "action": {"data": {"id": "u"}}},
        "Action ID must match the task ID",
    ),
    # The ids are compared before the task id itself is checked.
    (
        "task.fulfill",
        {"version": 1, "action": {"data": {"id": "u"}}},
        "Action ID must match the task ID",
    ),
    ("task.suspend", {"id": "t", "version": 1, "actions": []}, "Actions array cannot be empty"),
    ("task.suspend", {"id": "t", "version": 1, "actions": {}}, "Actions array cannot be empty"),
    (
        "task.suspend",
        {"id": "t", "version": 1, "actions": [{"data": {"awaited": "t:1", "awaiter": "t"}}, 5]},
        "Invalid 'actions[]' field — must be an object",
    ),
    (
        "task.suspend",
        {"id": "t", "version": 1, "actions": [{"data": []}]},
        "Invalid 'actions[].data' field — must be an object",
    ),
    (
        "task.suspend",
        {"id": "t", "version": 1, "actions": [{"data": {"awaited": "t:1", "awaiter": "u"}}]},
        "All action awaiter IDs must match the task ID",
    ),
    (
        "task.fence",
        {"id": "t", "version": 1, "action": {"kind": "task.get", "data": {}}},
        "Invalid fence action kind",
    ),
    (
        "task.fence",
        {"id": "t", "version": 1, "action": {"kind": "promise.settle", "data": {"id": "t"}}},
        "Action ID must not equal the task ID",
    ),
    ("task.heartbeat", {"pid": "w", "tasks": {}}, "Invalid request: 'tasks' must be an array"),
    ("task.heartbeat", {"pid": "w", "tasks": [1]}, "Invalid 'tasks[]' field — must be an object"),
    ("task.heartbeat", {"pid": "w", "tasks": []}, "Tasks array must not be empty"),
    (
        "task.heartbeat",
        {"pid": "w", "tasks": [{"id": "a"}, {"id": "b"}]},
        "All tasks must belong to the same origin",
    ),
    ("schedule.create", {"id": "s:1"}, "Schedule ID must not contain ':'"),
    ("schedule.create", {"id": "s", "cron": "* *"}, "Invalid cron expression"),
    (
        "schedule.create",
        {"id": "s", "cron": "* * * * *", "promiseId": "p", "promiseTimeout": 1},
        "promiseTags must include a resonate:target tag",
    ),
    (
        "schedule.create",
        {"id": "s", "cron": "* * * * *", "promiseId": "p", "promiseTimeout": 1, "promiseTags": 3},
        "Invalid request: 'tags' must map strings to strings",
    ),
    ("schedule.search", {"limit": "10"}, "Limit must be a positive integer"),
]


@pytest.mark.parametrize(("kind", "data", "message"), REFUSALS)
def test_refusal__bad_data__400_with_the_official_message(
    kind: str, data: Any, message: str
) -> None:
    assert answer(kind, data) == (400, message)


@pytest.mark.parametrize(("kind", "data", "message"), REFUSALS)
def test_refusal__keys_in_reverse_order__same_message(kind: str, data: Any, message: str) -> None:
    if not isinstance(data, dict):
        return
    assert answer(kind, dict(reversed(data.items()))) == (400, message)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ([], "Invalid request envelope: expected a JSON object"),
        ({"kind": "promise.get"}, "Invalid request envelope: missing 'head.corrId'"),
        ({"head": [], "kind": "x"}, "Invalid request envelope: missing 'head.corrId'"),
        ({"head": {"corrId": "c"}}, "Invalid request envelope: missing 'head.version'"),
        (
            {"head": {"corrId": "c", "version": "v", "auth": 1}},
            "Invalid request envelope: 'head.auth' must be a string",
        ),
        (
            {"head": {"corrId": "c", "version": "v"}, "kind": ""},
            "Missing or invalid 'kind' field — must be a non-empty string",
        ),
        (
            {"head": {"corrId": "c", "version": "v"}, "kind": "k", "data": []},
            "Invalid 'data' field — must be an object",
        ),
        (
            {"head": {"corrId": "c", "version": "v"}, "kind": "k", "data": {}},
            f"Unsupported protocol version 'v', supported versions: [\"{PROTOCOL_VERSION}\"]",
        ),
    ],
)
def test_envelope__malformed__400_naming_the_first_problem(envelope: Any, message: str) -> None:
    with pytest.raises(Fail) as refused:
        decode_envelope(envelope)
    assert (refused.value.status, refused.value.message) == (400, message)


def test_unknown_kind__400_after_the_envelope_checks() -> None:
    assert answer("promise.nope", {}) == (400, "Unknown operation: promise.nope")


def test_decode__good_payload__typed_fields_and_defaults() -> None:
    created = decode(
        {"id": "p", "timeoutAt": 9, "param": {"data": "eQ==", "extra": 1}, "tags": TARGET},
        PromiseCreate,
    )
    assert created == PromiseCreate("p", 9, Value(None, "eQ=="), TARGET)
    assert decode({}, PromiseSearch) == PromiseSearch(None, None, 100, None)
    assert decode({}, ScheduleSearch).limit == 10
    suspend = decode(
        {"id": "t", "version": 2, "actions": [{"data": {"awaited": "t:1", "awaiter": "t"}}]},
        TaskSuspend,
    )
    assert (suspend.version, suspend.actions[0].data.awaited) == (2, "t:1")


@given(
    st.dictionaries(
        st.sampled_from(["id", "timeoutAt", "param", "tags"]),
        st.none()
        | st.integers()
        | st.text(max_size=3)
        | st.dictionaries(st.text(max_size=2), st.integers()),
        max_size=4,
    )
)
def test_decode__any_promise_create__typed_or_one_400_whatever_the_key_order(
    data: dict[str, Any],
) -> None:
    outcomes = set()
    for ordered in (data, dict(reversed(data.items()))):
        try:
            outcomes.add((200, repr(decode(ordered, PromiseCreate))))
        except Fail as exc:
            outcomes.add((exc.status, exc.message))
    [(status, _)] = outcomes
    assert status in (200, 400)
