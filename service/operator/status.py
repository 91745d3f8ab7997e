"""The WorkerAutoscaler status written after every poll (pure: no I/O).

Conditions follow the Kubernetes convention: ``type``, ``status``
(``"True"``/``"False"``/``"Unknown"``), ``reason``, ``message`` and a
``lastTransitionTime`` that changes only when ``status`` does.

* ``Ready``: the backlog was read and the target exists;
* ``BacklogReadable``: the server answers the searches the backlog needs.
  ``False`` with reason ``Unsupported`` (it does not know the request kind),
  ``Unauthorized`` (it refused the token) or ``Forbidden`` (the token may not
  search), the message naming the request and the server's answer. A
  transient read failure leaves it as it was: it says whether the server
  *can* be read, not whether the last poll did;
* ``Active``: the backlog is at or above ``activationTasks``;
* ``Fallback``: reads failed ``failureThreshold`` times in a row (or once,
  when the server refused the search);
* ``Paused``: the autoscaler is paused (spec or annotation).

:func:`readable_change` compares two statuses' ``BacklogReadable``
conditions, so the loop posts one Event per change instead of one per poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.operator.autoscaler import StepResult

CONDITION_TYPES = ("Ready", "BacklogReadable", "Active", "Fallback", "Paused")
READABLE = "BacklogReadable"
#: Annotation that pauses an autoscaler (as does spec.paused: true).
PAUSE_ANNOTATION = "resonate-patterns.io/paused"


def is_paused(spec: dict[str, Any], annotations: dict[str, str] | None) -> bool:
    """Paused by ``spec.paused`` or the ``resonate-patterns.io/paused: "true"`` annotation."""
    flag = (annotations or {}).get(PAUSE_ANNOTATION, "")
    return bool(spec.get("paused")) or flag.strip().lower() in ("true", "1", "yes")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: list[dict[str, Any]], kind: str, ok: bool, reason: str, message: str, at: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = at
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        since = str(before["lastTransitionTime"])
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def step_status(
    result: StepResult,
    previous: dict[str, Any] | None,
    generation: int | None,
    *,
    activation_tasks: int,
) -> dict[str, Any]:
    """The status after one autoscaling step."""
    prev = previous or {}
    conditions_before = [c for c in prev.get("conditions", []) if isinstance(c, dict)]
    at = iso(result.at)
    d = result.decision
    backlog = result.backlog
    status: dict[str, Any] = {
        "desiredReplicas": d.desired,
        "currentReplicas": result.current,
        "consecutiveFailures": d.state.consecutive_failures,
        "observedGeneration": generation,
        "policy": d.state.to_status(),
        "lastPollTime": at,
        "lastScaleTime": prev.get("lastScaleTime"),
        "lastScaleReason": prev.get("lastScaleReason"),
    }
    if backlog is not None:
        status["observedPending"] = backlog.pending
        status["observedInFlight"] = backlog.acquired
    if result.scaled:
        status["lastScaleTime"] = at
        status["lastScaleReason"] = d.reason
    ready = result.read_error is None
    if ready:
        ready_reason = "BacklogRead"
    elif result.refused is not None:
        ready_reason = result.refused.reason
    else:
        ready_reason = "BacklogUnreadable"
    status["conditions"] = [
        _condition(
            conditions_before,
            "Ready",
            ready,
            ready_reason,
            d.reason if ready else f"{result.read_error} ({d.reason})",
            at,
        ),
        _readable_condition(conditions_before, result, at),
        _condition(
            conditions_before,
            "Active",
            d.active,
            "BacklogAboveActivation" if d.active else "BacklogBelowActivation",
            f"backlog {backlog.total if backlog else 'unknown'}, activation {activation_tasks}",
            at,
        ),
        _condition(
            conditions_before,
            "Fallback",
            d.fallback,
            "ReadFailures" if d.fallback else "Reading",
            f"{d.state.consecutive_failures} consecutive failed reads",
            at,
        ),
        _condition(
            conditions_before,
            "Paused",
            result.paused,
            "Paused" if result.paused else "Managing",
            "the Deployment is left alone" if result.paused else "replicas follow the backlog",
            at,
        ),
    ]
    return status


def _readable_condition(
    previous: list[dict[str, Any]], result: StepResult, at: str
) -> dict[str, Any]:
    if result.refused is not None:
        return _condition(previous, READABLE, False, result.refused.reason, str(result.refused), at)
    if result.read_error is None:
        return _condition(
            previous,
            READABLE,
            True,
            "SearchesAnswered",
            "promise.search and task.search answered",
            at,
        )
    before = next((c for c in previous if c.get("type") == READABLE), None)
    if before is not None:
        return dict(before)  # a transient failure says nothing about what the server can do
    return {
        "type": READABLE,
        "status": "Unknown",
        "reason": "NotYetRead",
        "message": "no read has reached the server yet",
        "lastTransitionTime": at,
    }


@dataclass(frozen=True)
class ReadableChange:
    """``BacklogReadable`` changed between two statuses: what to tell the user."""

    #: False: the server refuses (a Warning); True: it answers again after refusing.
    readable: bool
    reason: str
    message: str


def readable_change(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> ReadableChange | None:
    """The change of the ``BacklogReadable`` condition from ``before`` to ``after``, if any.

    A refusal is a change when the condition was not ``False`` before or its
    message (request kind, status, server answer) differs; a recovery when it
    goes from ``False`` to ``True``. ``Unknown`` to ``True`` is no news.
    """
    old = _find(before, READABLE)
    new = _find(after, READABLE)
    if new is None:
        return None
    old_status = old.get("status") if old else None
    if new.get("status") == "False":
        if old_status == "False" and old is not None and old.get("message") == new.get("message"):
            return None
        return ReadableChange(False, str(new.get("reason", "")), str(new.get("message", "")))
    if new.get("status") == "True" and old_status == "False":
        return ReadableChange(
            True, "BacklogReadable", "the server answers the backlog searches again"
        )
    return None


def _find(status: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    conditions = (status or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == kind), None)


def error_status(
    previous: dict[str, Any] | None, generation: int | None, reason: str, message: str, at: float
) -> dict[str, Any]:
    """Status when the autoscaler cannot run at all (bad spec, missing target)."""
    prev = previous or {}
    conditions_before = [c for c in prev.get("conditions", []) if isinstance(c, dict)]
    when = iso(at)
    return {
        "observedGeneration": generation,
        "lastPollTime": when,
        "conditions": [
            _condition(conditions_before, "Ready", False, reason, message, when),
            *[c for c in conditions_before if c.get("type") != "Ready"],
        ],
    }
