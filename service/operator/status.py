"""The WorkerAutoscaler status written after every poll (pure: no I/O).

Conditions follow the Kubernetes convention: ``type``, ``status``
(``"True"``/``"False"``/``"Unknown"``), ``reason``, ``message`` and a
``lastTransitionTime`` that changes only when ``status`` does.

* ``Ready``: the backlog was read and the target exists;
* ``Active``: the backlog is at or above ``activationTasks``;
* ``Fallback``: reads failed ``failureThreshold`` times in a row;
* ``Paused``: the autoscaler is paused (spec or annotation).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.operator.autoscaler import StepResult

CONDITION_TYPES = ("Ready", "Active", "Fallback", "Paused")
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
    status["conditions"] = [
        _condition(
            conditions_before,
            "Ready",
            ready,
            "BacklogRead" if ready else "BacklogUnreadable",
            d.reason if ready else f"{result.read_error} ({d.reason})",
            at,
        ),
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
