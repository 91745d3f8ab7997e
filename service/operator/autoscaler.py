"""One autoscaling step, shared by the Kubernetes operator and ``up --autoscale``.

:func:`autoscale_step` reads the group's backlog, asks the pure policy for a
replica count, and (unless paused) applies it to a :class:`ScaleTarget`: a
Deployment's ``/scale`` subresource in Kubernetes, the supervised worker
processes locally. It returns a :class:`StepResult` the caller turns into a
status patch, an Event and log lines; metrics are recorded here so both
callers export the same series.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.operator.backlog import (
    Backlog,
    BacklogCapabilityError,
    BacklogReadError,
    BacklogSource,
)
from service.operator.policy import Decision, PolicySpec, PolicyState, decide

if TYPE_CHECKING:
    from service.telemetry.metrics import OperatorMetrics


class ScaleTarget(Protocol):
    """Something with a replica count: a Deployment's /scale, or local processes."""

    async def get_replicas(self) -> int: ...

    async def set_replicas(self, replicas: int) -> None: ...


@dataclass(frozen=True)
class Identity:
    """Which autoscaler this is (metric labels and log context)."""

    namespace: str
    name: str
    group: str


@dataclass(frozen=True)
class StepResult:
    """What one step saw and did."""

    backlog: Backlog | None
    read_error: str | None
    current_before: int
    current: int
    decision: Decision
    scaled: bool
    paused: bool
    at: float
    #: Set when the server refused the search (a capability problem, not a transient failure).
    refused: BacklogCapabilityError | None = None

    @property
    def direction(self) -> str | None:
        if not self.scaled:
            return None
        return "up" if self.current > self.current_before else "down"


async def autoscale_step(
    who: Identity,
    spec: PolicySpec,
    state: PolicyState,
    reader: BacklogSource,
    target: ScaleTarget,
    metrics: OperatorMetrics,
    *,
    paused: bool = False,
    now: float | None = None,
) -> StepResult:
    """Read, decide, and (unless ``paused``) scale. Raises only if the target fails.

    A refused search (:class:`BacklogCapabilityError`) counts as a failed read
    and, by its reason, as a capability error; the policy then holds or falls
    back at once instead of waiting for ``failureThreshold``.
    """
    at = time.time() if now is None else now
    metrics.ensure(who.namespace, who.name, who.group)
    backlog: Backlog | None = None
    read_error: str | None = None
    refused: BacklogCapabilityError | None = None
    try:
        backlog = await reader.read(who.group)
    except BacklogReadError as exc:
        read_error = str(exc)
        metrics.read_failed(who.namespace, who.name, who.group)
        if isinstance(exc, BacklogCapabilityError):
            refused = exc
            metrics.capability_error(who.namespace, who.name, who.group, reason=exc.reason)
    current = await target.get_replicas()
    decision = decide(
        spec, state, at, current, backlog.total if backlog else None, permanent=refused is not None
    )
    if backlog is not None:
        metrics.observed(
            who.namespace,
            who.name,
            who.group,
            pending=backlog.pending,
            acquired=backlog.acquired,
        )
    scaled = False
    new_current = current
    if not paused and decision.desired != current:
        await target.set_replicas(decision.desired)
        scaled = True
        new_current = decision.desired
        metrics.scaled(who.namespace, who.name, who.group, up=decision.desired > current)
    metrics.replicas(
        who.namespace, who.name, who.group, desired=decision.desired, current=new_current
    )
    return StepResult(
        backlog, read_error, current, new_current, decision, scaled, paused, at, refused
    )
