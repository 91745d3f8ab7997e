"""Capability problems of the backlog read, without servers: classification, policy, status.

A search the server refuses (unknown request kind, refused token, a token that
may not search, no such route) is not a transient failure: these tests pin
which replies are which, what the error says, that the policy holds or falls
back at once (never to zero), and that the status and its Events change once
per change.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from service.operator.autoscaler import StepResult
from service.operator.backlog import (
    CAPABILITY_REASONS,
    Backlog,
    BacklogCapabilityError,
    BacklogReadError,
    CapabilityReason,
    classify,
)
from service.operator.policy import PolicySpec, PolicyState, decide
from service.operator.status import READABLE, readable_change, step_status
from service.telemetry.metrics import AUTOSCALER_CAPABILITY_REASONS, OperatorMetrics

URL = "http://resonate:8001"
CAPABILITY_ERRORS = "resonate_patterns_autoscaler_backlog_capability_errors_total"


# -- classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        # The official server's refusals (v0.9.8 src/server.rs, src/auth.rs).
        (400, "Unknown operation: task.search", "Unsupported"),
        (400, "Unknown operation: promise.search", "Unsupported"),
        (
            400,
            "Unsupported protocol version '2026-04-01', supported versions: [\"2027-01-01\"]",
            "Unsupported",
        ),
        (401, "Unauthorized", "Unauthorized"),
        (403, "Forbidden", "Forbidden"),
        (404, "404 page not found", "Unsupported"),
        (501, "Not Implemented", "Unsupported"),
        (401, "<html>401 Authorization Required</html>", "Unauthorized"),
        # Everything else is a read failure that may pass.
        (400, "Invalid request envelope: missing field `kind`", None),
        (400, "limit must be between 1 and 1000", None),
        (200, "", None),
        (409, "Conflict", None),
        (429, "Too Many Requests", None),
        (500, "database is locked", None),
        (502, "<html>Bad Gateway</html>", None),
        (503, "Service Unavailable", None),
        (504, "Gateway Timeout", None),
    ],
)
def test_classify__status_and_message__capability_or_transient(
    status: int, message: str, expected: CapabilityReason | None
) -> None:
    assert classify(status, message) == expected


def test_capability_reasons__match_the_metric_label_values() -> None:
    assert tuple(r.lower() for r in CAPABILITY_REASONS) == AUTOSCALER_CAPABILITY_REASONS


def _refused(
    reason: CapabilityReason, status: int, message: str, *, token: bool
) -> BacklogCapabilityError:
    return BacklogCapabilityError(
        url=URL,
        kind="task.search",
        status=status,
        server_message=message,
        reason=reason,
        token_sent=token,
    )


@pytest.mark.parametrize(
    ("reason", "status", "server", "token", "expected"),
    [
        (
            "Unsupported",
            400,
            "Unknown operation: task.search",
            False,
            "the server does not support task.search: task.search on http://resonate:8001 "
            "answered 400 'Unknown operation: task.search' "
            "(backlog-based scaling needs promise.search and task.search)",
        ),
        (
            "Unauthorized",
            401,
            "Unauthorized",
            True,
            "the server refused the token: task.search on http://resonate:8001 answered 401 "
            "'Unauthorized' (RESONATE_TOKEN is invalid, expired or not signed by the "
            "server's key)",
        ),
        (
            "Unauthorized",
            401,
            "Unauthorized",
            False,
            "the server requires a token: task.search on http://resonate:8001 answered 401 "
            "'Unauthorized' and RESONATE_TOKEN is not set",
        ),
        (
            "Forbidden",
            403,
            "Forbidden",
            True,
            "the server refused the token: task.search on http://resonate:8001 answered 403 "
            "'Forbidden' (searching needs a token with role 'admin' or an empty 'prefix' claim)",
        ),
        (
            "Forbidden",
            403,
            "Forbidden",
            False,
            "the server refused access: task.search on http://resonate:8001 answered 403 "
            "'Forbidden' and RESONATE_TOKEN is not set",
        ),
    ],
)
def test_capability_error__one_line_naming_the_cause(
    reason: CapabilityReason, status: int, server: str, token: bool, expected: str
) -> None:
    error = _refused(reason, status, server, token=token)
    assert str(error) == expected
    assert "\n" not in str(error)
    assert isinstance(error, BacklogReadError), "callers that only know read errors still hold"
    assert (error.kind, error.status, error.server_message, error.reason) == (
        "task.search",
        status,
        server,
        reason,
    )


# -- policy --------------------------------------------------------------------------


def test_decide__refused_with_fallback__fallback_at_once_not_after_threshold() -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=10, fallback_replicas=2, failure_threshold=5)
    d = decide(spec, PolicyState(), 100.0, 6, None, permanent=True)
    assert (d.desired, d.fallback, d.state.consecutive_failures) == (2, True, 1)
    assert d.reason == "backlog unreadable (the server refuses the search): fallback to 2"
    transient = decide(spec, PolicyState(), 100.0, 6, None)
    assert (transient.desired, transient.fallback) == (6, False)


@pytest.mark.parametrize("current", [0, 1, 4])
def test_decide__refused_without_fallback__holds_current_never_lower(current: int) -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=10, failure_threshold=3)
    state = PolicyState(recommendations=((90.0, 0),), last_active=0.0)
    d = decide(spec, state, 100.0, current, None, permanent=True)
    assert d.desired == current
    assert d.reason == f"backlog unreadable (the server refuses the search): holding {current}"


# -- status and events ----------------------------------------------------------------


def _step(refused: BacklogCapabilityError | None, *, error: str | None = None) -> StepResult:
    spec = PolicySpec(min_replicas=0, max_replicas=10)
    unreadable = refused is not None or error is not None
    d = decide(spec, PolicyState(), 100.0, 3, None if unreadable else 4, permanent=bool(refused))
    return StepResult(
        backlog=None if unreadable else Backlog(pending=4, acquired=0),
        read_error=str(refused) if refused else error,
        current_before=3,
        current=d.desired,
        decision=d,
        scaled=False,
        paused=False,
        at=100.0,
        refused=refused,
    )


def _status(step: StepResult, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return step_status(step, previous, 1, activation_tasks=1)


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_step_status__refused__backlog_readable_false_with_reason_and_ready_false() -> None:
    refused = _refused("Unsupported", 400, "Unknown operation: task.search", token=False)
    status = _status(_step(refused))
    readable = _cond(status, READABLE)
    assert (readable["status"], readable["reason"], readable["message"]) == (
        "False",
        "Unsupported",
        str(refused),
    )
    ready = _cond(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unsupported")
    assert status["currentReplicas"] == 3


def test_step_status__transient_failure__backlog_readable_unchanged() -> None:
    first = _status(_step(None, error="cannot read task.search: connection refused"))
    assert _cond(first, READABLE)["status"] == "Unknown"
    readable = _status(_step(None))
    after = _status(_step(None, error="cannot read task.search: timeout"), readable)
    assert _cond(after, READABLE) == _cond(readable, READABLE)
    assert _cond(after, "Ready")["reason"] == "BacklogUnreadable"
    refused = _status(_step(_refused("Forbidden", 403, "Forbidden", token=True)))
    still = _status(_step(None, error="timeout"), refused)
    assert _cond(still, READABLE) == _cond(refused, READABLE)


def test_readable_change__one_warning_per_change_and_one_recovery() -> None:
    unsupported = _refused("Unsupported", 400, "Unknown operation: task.search", token=False)
    unauthorized = _refused("Unauthorized", 401, "Unauthorized", token=True)
    ok = _status(_step(None))
    refused = _status(_step(unsupported), ok)
    again = _status(_step(unsupported), refused)
    other = _status(_step(unauthorized), again)
    transient = _status(_step(None, error="timeout"), other)
    back = _status(_step(None), transient)

    first = readable_change(None, refused)
    assert first is not None
    assert (first.readable, first.reason, first.message) == (False, "Unsupported", str(unsupported))
    assert readable_change(ok, refused) == first
    assert readable_change(refused, again) is None, "the same refusal again is no news"
    changed = readable_change(again, other)
    assert changed is not None
    assert (changed.readable, changed.reason) == (False, "Unauthorized")
    assert readable_change(other, transient) is None
    recovered = readable_change(transient, back)
    assert recovered is not None
    assert (recovered.readable, recovered.reason) == (True, "BacklogReadable")
    assert readable_change(None, ok) is None, "readable from the start is no news"
    assert readable_change(ok, _status(_step(None), ok)) is None


def test_step_status__refused_then_readable__transition_time_moves_once() -> None:
    refused = _status(_step(_refused("Unsupported", 404, "404 page not found", token=False)))
    later = replace(_step(None), at=160.0)
    back = _status(later, refused)
    assert _cond(refused, READABLE)["lastTransitionTime"] == "1970-01-01T00:01:40Z"
    assert _cond(back, READABLE)["lastTransitionTime"] == "1970-01-01T00:02:40Z"
    assert _cond(back, READABLE)["status"] == "True"


# -- metrics ---------------------------------------------------------------------------


def test_operator_metrics__capability_errors_by_reason__zero_until_counted() -> None:
    metrics = OperatorMetrics()
    labels = {"namespace": "ns", "autoscaler": "a", "group": "g"}
    metrics.ensure("ns", "a", "g")
    for reason in AUTOSCALER_CAPABILITY_REASONS:
        assert (
            metrics.registry.get_sample_value(CAPABILITY_ERRORS, {**labels, "reason": reason}) == 0
        )
    metrics.capability_error("ns", "a", "g", reason="Unauthorized")
    metrics.capability_error("ns", "a", "g", reason="Unauthorized")
    metrics.capability_error("ns", "a", "g", reason="Unsupported")
    get = metrics.registry.get_sample_value
    assert get(CAPABILITY_ERRORS, {**labels, "reason": "unauthorized"}) == 2
    assert get(CAPABILITY_ERRORS, {**labels, "reason": "unsupported"}) == 1
    assert get(CAPABILITY_ERRORS, {**labels, "reason": "forbidden"}) == 0
    with pytest.raises(ValueError, match="unknown capability error reason"):
        metrics.capability_error("ns", "a", "g", reason="Teapot")
    metrics.forget("ns", "a", "g")
    assert get(CAPABILITY_ERRORS, {**labels, "reason": "unauthorized"}) is None
