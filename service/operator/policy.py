"""The scaling policy: how many workers a group should have. Pure: no I/O.

:func:`decide` takes the autoscaler's spec, the state carried from the last
poll, the time, the current replica count and the backlog just read (or
``None`` if reading it failed) and returns the desired replica count with a
one-line reason and the state to carry forward.

The rules, in order:

1. **Read failure.** Count it. Below ``failureThreshold`` consecutive
   failures, hold the current count. From then on, go to
   ``fallbackReplicas`` if set, else keep holding. A *permanent* failure
   (the server refuses the search: unsupported request kind, refused
   token) will not heal by waiting, so it goes to ``fallbackReplicas`` at
   once. Never scale to zero on a failure.
2. **Recommendation.** ``ceil(backlog / targetTasksPerReplica)``, clamped to
   ``[minReplicas, maxReplicas]``.
3. **Activation (0 -> 1).** From zero replicas, scale up only when the
   backlog reaches ``activationTasks``.
4. **Scale up** at once, limited per step by ``scaleUp.maxStep`` and, if set,
   ``scaleUp.maxPercent`` of the current count (always at least +1).
5. **Scale down** only to the highest recommendation seen within
   ``scaleDown.stabilizationWindowSeconds`` (so a dip in the backlog does
   not remove busy workers, and a steady backlog never oscillates).
6. **Zero** only when ``minReplicas`` is 0, the backlog is below
   ``activationTasks``, and it has been inactive for
   ``scaleDown.cooldownSeconds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class PolicySpec:
    """The scaling knobs of one WorkerAutoscaler (validated)."""

    min_replicas: int = 1
    max_replicas: int = 10
    target_tasks_per_replica: int = 10
    activation_tasks: int = 1
    stabilization_seconds: float = 60
    cooldown_seconds: float = 300
    max_step: int = 10
    max_percent: int | None = None
    fallback_replicas: int | None = None
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 0:
            problems.append("minReplicas must be >= 0")
        if self.max_replicas < 1:
            problems.append("maxReplicas must be >= 1")
        if self.min_replicas > self.max_replicas:
            problems.append(
                f"minReplicas ({self.min_replicas}) must not exceed "
                f"maxReplicas ({self.max_replicas})"
            )
        if self.target_tasks_per_replica < 1:
            problems.append("targetTasksPerReplica must be >= 1")
        if self.activation_tasks < 0:
            problems.append("activationTasks must be >= 0")
        if self.max_step < 1:
            problems.append("scaleUp.maxStep must be >= 1")
        if self.max_percent is not None and self.max_percent < 1:
            problems.append("scaleUp.maxPercent must be >= 1")
        if self.failure_threshold < 1:
            problems.append("failureThreshold must be >= 1")
        if self.fallback_replicas is not None and not (
            max(self.min_replicas, 1) <= self.fallback_replicas <= self.max_replicas
        ):
            problems.append(
                "fallbackReplicas must be at least 1 and lie between minReplicas and maxReplicas"
            )
        if self.stabilization_seconds < 0 or self.cooldown_seconds < 0:
            problems.append("scaleDown windows must be >= 0 seconds")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_resource(cls, spec: dict[str, Any]) -> PolicySpec:
        """Build from a WorkerAutoscaler ``spec`` (CRD defaults applied here too)."""
        up = spec.get("scaleUp") or {}
        down = spec.get("scaleDown") or {}
        return cls(
            min_replicas=int(spec.get("minReplicas", 1)),
            max_replicas=int(spec.get("maxReplicas", 10)),
            target_tasks_per_replica=int(spec.get("targetTasksPerReplica", 10)),
            activation_tasks=int(spec.get("activationTasks", 1)),
            stabilization_seconds=float(down.get("stabilizationWindowSeconds", 60)),
            cooldown_seconds=float(down.get("cooldownSeconds", 300)),
            max_step=int(up.get("maxStep", 10)),
            max_percent=int(up["maxPercent"]) if up.get("maxPercent") is not None else None,
            fallback_replicas=(
                int(spec["fallbackReplicas"]) if spec.get("fallbackReplicas") is not None else None
            ),
            failure_threshold=int(spec.get("failureThreshold", 3)),
        )

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class PolicyState:
    """What one decision leaves for the next (kept in the resource's status)."""

    #: (time, recommendation) pairs inside the stabilization window, oldest first.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: Last time the backlog was at or above the activation threshold.
    last_active: float | None = None
    consecutive_failures: int = 0

    def to_status(self) -> dict[str, Any]:
        return {
            "recommendations": [[t, r] for t, r in self.recommendations],
            "lastActive": self.last_active,
            "consecutiveFailures": self.consecutive_failures,
        }

    @classmethod
    def from_status(cls, raw: Any) -> PolicyState:
        if not isinstance(raw, dict):
            return cls()
        recs = tuple(
            (float(t), int(r))
            for t, r in (raw.get("recommendations") or [])
            if isinstance(t, int | float) and isinstance(r, int)
        )
        last = raw.get("lastActive")
        failures = raw.get("consecutiveFailures")
        return cls(
            recommendations=recs,
            last_active=float(last) if isinstance(last, int | float) else None,
            consecutive_failures=failures if isinstance(failures, int) and failures >= 0 else 0,
        )


@dataclass(frozen=True)
class Decision:
    """The desired replica count, why, and the state to carry forward."""

    desired: int
    reason: str
    state: PolicyState
    fallback: bool = False
    active: bool = False
    #: The raw, unsmoothed recommendation (None after a failed read).
    recommendation: int | None = field(default=None)


def recommend(spec: PolicySpec, backlog: int) -> int:
    """``ceil(backlog / targetTasksPerReplica)`` clamped to the replica range."""
    return spec.clamp(math.ceil(backlog / spec.target_tasks_per_replica))


def _step_limit(spec: PolicySpec, current: int) -> int:
    step = spec.max_step
    if spec.max_percent is not None:
        step = min(step, max(1, math.ceil(current * spec.max_percent / 100)))
    return max(1, step)


def decide(
    spec: PolicySpec,
    state: PolicyState,
    now: float,
    current: int,
    backlog: int | None,
    *,
    permanent: bool = False,
) -> Decision:
    """Apply the rules in the module docstring.

    ``permanent`` (only meaningful with ``backlog=None``) marks a failure that
    retrying cannot fix: the fallback applies from the first one.
    """
    if backlog is None:
        failures = state.consecutive_failures + 1
        carried = replace(state, consecutive_failures=failures)
        threshold = 1 if permanent else spec.failure_threshold
        if failures >= threshold and spec.fallback_replicas is not None:
            why = (
                "backlog unreadable (the server refuses the search)"
                if permanent
                else f"backlog unreadable {failures} times in a row"
            )
            return Decision(
                spec.fallback_replicas,
                f"{why}: fallback to {spec.fallback_replicas}",
                carried,
                fallback=True,
            )
        why = (
            "backlog unreadable (the server refuses the search)"
            if permanent
            else f"backlog unreadable ({failures} in a row)"
        )
        return Decision(
            spec.clamp(current),
            f"{why}: holding {spec.clamp(current)}",
            carried,
            fallback=failures >= threshold,
        )

    active = backlog > 0 and backlog >= spec.activation_tasks
    # The cooldown clock starts at the first observation if nothing is known.
    last_active = now if active or state.last_active is None else state.last_active
    window_start = now - spec.stabilization_seconds
    raw = recommend(spec, backlog)
    if not active and spec.min_replicas == 0:
        raw = 0  # below activation: the group is idle (zero subject to cooldown)
    elif active and raw == 0:
        raw = 1
    recs = (*(r for r in state.recommendations if r[0] > window_start), (now, raw))
    carried = PolicyState(recs, last_active, 0)

    if raw > current:
        # Step-limited, but never left below minReplicas.
        desired = max(spec.min_replicas, min(raw, current + _step_limit(spec, current)))
        why = (
            f"backlog {backlog} activates the group"
            if current == 0
            else f"backlog {backlog} needs {raw} replicas"
        )
        if desired < raw:
            why += f" (step limited to {desired})"
        return Decision(desired, why, carried, active=active, recommendation=raw)

    highest = max(r for _, r in recs)
    desired = max(raw, min(highest, current))
    if desired == 0 and current > 0 and now - last_active < spec.cooldown_seconds:
        desired = 1  # idle, but not for the whole cooldown yet
    desired = spec.clamp(desired) if desired else 0
    if desired == current:
        why = f"backlog {backlog}: {current} replicas are right"
        if raw < current:
            why = f"backlog {backlog}: holding {current} (stabilizing, recommendation {raw})"
    elif desired == 0:
        why = f"backlog {backlog} idle for {spec.cooldown_seconds:g}s: scaling to zero"
    else:
        why = f"backlog {backlog} needs {desired} replicas"
    return Decision(desired, why, carried, active=active, recommendation=raw)
