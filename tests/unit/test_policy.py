"""The scaling policy: table-driven cases and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.operator.policy import Decision, PolicySpec, PolicyState, decide, recommend


def run(spec: PolicySpec, steps: list[tuple[float, int | None]], current: int) -> list[Decision]:
    """Apply decide() over (time, backlog) steps, feeding desired back as current."""
    state = PolicyState()
    out = []
    for now, backlog in steps:
        d = decide(spec, state, now, current, backlog)
        out.append(d)
        state, current = d.state, d.desired
    return out


@pytest.mark.parametrize(
    ("backlog", "expected"),
    [(0, 1), (1, 1), (10, 1), (11, 2), (95, 10), (1000, 10)],
)
def test_recommend__ceil_and_clamp(backlog: int, expected: int) -> None:
    assert recommend(PolicySpec(min_replicas=1, max_replicas=10), backlog) == expected


def test_scale_up__immediate_but_step_limited() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=20, max_step=3)
    d = decide(spec, PolicyState(), 0, current=2, backlog=200)
    assert (d.desired, d.recommendation) == (5, 20)
    assert "step limited to 5" in d.reason


def test_scale_up__percent_limit() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=100, max_step=50, max_percent=50)
    assert decide(spec, PolicyState(), 0, current=10, backlog=1000).desired == 15
    assert decide(spec, PolicyState(), 0, current=1, backlog=1000).desired == 2


def test_activation__from_zero_only_at_threshold() -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=5, activation_tasks=3)
    assert decide(spec, PolicyState(), 0, current=0, backlog=2).desired == 0
    d = decide(spec, PolicyState(), 0, current=0, backlog=3)
    assert d.desired == 1
    assert "activates" in d.reason


def test_scale_down__waits_for_window_then_follows_backlog() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=10, stabilization_seconds=60)
    steps = [(0, 100), (10, 5), (30, 5), (59, 5), (61, 5), (75, 5)]
    desired = [d.desired for d in run(spec, steps, current=1)]
    assert desired == [10, 10, 10, 10, 1, 1]


def test_zero__only_after_cooldown_below_activation() -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=4, stabilization_seconds=0, cooldown_seconds=30)
    # Active at t=0; idle from t=5; zero once 30 s have passed since t=0.
    steps = [(0, 20), (5, 0), (20, 0), (29, 0), (31, 0)]
    desired = [d.desired for d in run(spec, steps, current=0)]
    assert desired == [2, 1, 1, 1, 0]


def test_failures__hold_then_fallback_never_zero() -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=8, fallback_replicas=3, failure_threshold=2)
    d1 = decide(spec, PolicyState(), 0, current=5, backlog=None)
    assert (d1.desired, d1.fallback, d1.state.consecutive_failures) == (5, False, 1)
    d2 = decide(spec, d1.state, 5, current=5, backlog=None)
    assert (d2.desired, d2.fallback) == (3, True)
    recovered = decide(spec, d2.state, 10, current=3, backlog=40)
    assert recovered.state.consecutive_failures == 0
    assert recovered.desired == 4


def test_failures__without_fallback_hold_even_at_threshold() -> None:
    spec = PolicySpec(min_replicas=0, max_replicas=8, failure_threshold=1)
    d = decide(spec, PolicyState(), 0, current=4, backlog=None)
    assert (d.desired, d.fallback) == (4, True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 5, "max_replicas": 2}, "minReplicas (5) must not exceed maxReplicas (2)"),
        ({"target_tasks_per_replica": 0}, "targetTasksPerReplica must be >= 1"),
        ({"fallback_replicas": 0}, "fallbackReplicas must be at least 1"),
        ({"max_replicas": 0, "min_replicas": 0}, "maxReplicas must be >= 1"),
    ],
)
def test_spec__invalid__readable_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicySpec(**kwargs)


def test_state__round_trips_through_status() -> None:
    state = PolicyState(((1.5, 3), (2.0, 4)), 7.0, 2)
    assert PolicyState.from_status(state.to_status()) == state
    assert PolicyState.from_status("garbage") == PolicyState()


specs = st.builds(
    lambda lo, span, target, act, win, cool, step, fb, thr: PolicySpec(
        min_replicas=lo,
        max_replicas=lo + span,
        target_tasks_per_replica=target,
        activation_tasks=act,
        stabilization_seconds=win,
        cooldown_seconds=cool,
        max_step=step,
        fallback_replicas=None if fb is None else max(1, lo) + fb % (lo + span - max(1, lo) + 1),
        failure_threshold=thr,
    ),
    st.integers(0, 5),
    st.integers(1, 10),
    st.integers(1, 50),
    st.integers(0, 20),
    st.integers(0, 120),
    st.integers(0, 300),
    st.integers(1, 10),
    st.none() | st.integers(0, 100),
    st.integers(1, 5),
)
backlogs = st.lists(st.none() | st.integers(0, 2000), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(spec=specs, series=backlogs, start=st.integers(0, 20), dt=st.integers(1, 30))
def test_property__always_within_min_max(
    spec: PolicySpec, series: list[int | None], start: int, dt: int
) -> None:
    steps = [(float(i * dt), b) for i, b in enumerate(series)]
    for d in run(spec, steps, current=start):
        assert spec.min_replicas <= d.desired <= spec.max_replicas


@settings(max_examples=300, deadline=None)
@given(spec=specs, series=backlogs, start=st.integers(1, 20), dt=st.integers(1, 30))
def test_property__zero_only_after_cooldown_below_activation(
    spec: PolicySpec, series: list[int | None], start: int, dt: int
) -> None:
    steps = [(float(i * dt), b) for i, b in enumerate(series)]
    state, current = PolicyState(), start
    last_active = 0.0
    for now, backlog in steps:
        d = decide(spec, state, now, current, backlog)
        if backlog is not None and backlog > 0 and backlog >= spec.activation_tasks:
            last_active = now
        if d.desired == 0 and current > 0:
            assert backlog is not None, "a failed read never scales to zero"
            assert backlog < spec.activation_tasks or backlog == 0
            assert now - last_active >= spec.cooldown_seconds
        state, current = d.state, d.desired


@settings(max_examples=300, deadline=None)
@given(spec=specs, series=backlogs, start=st.integers(0, 20), dt=st.integers(1, 30))
def test_property__never_below_window_high_while_stabilizing(
    spec: PolicySpec, series: list[int | None], start: int, dt: int
) -> None:
    steps = [(float(i * dt), b) for i, b in enumerate(series)]
    state, current = PolicyState(), start
    for now, backlog in steps:
        d = decide(spec, state, now, current, backlog)
        if backlog is not None and d.desired < current:
            window = [
                r
                for t, r in d.state.recommendations
                if t > now - spec.stabilization_seconds or t == now
            ]
            assert d.desired >= min(max(window), current)
        state, current = d.state, d.desired


@settings(max_examples=200, deadline=None)
@given(spec=specs, backlog=st.integers(0, 2000), start=st.integers(0, 20))
def test_property__steady_backlog__settles_and_never_oscillates(
    spec: PolicySpec, backlog: int, start: int
) -> None:
    horizon = int(spec.stabilization_seconds + spec.cooldown_seconds) + 200
    steps = [(float(t), backlog) for t in range(0, horizon, 5)]
    desired = [d.desired for d in run(spec, steps, current=start)]
    changes = [i for i in range(1, len(desired)) if desired[i] != desired[i - 1]]
    # Monotone: it may move toward its target in steps, but never turns back.
    direction = {(desired[i] > desired[i - 1]) for i in changes}
    assert len(direction) <= 1, desired
    assert desired[-1] == desired[-2], "settled by the end"


@settings(max_examples=300, deadline=None)
@given(spec=specs, failures=st.integers(1, 12), start=st.integers(0, 20))
def test_property__fallback_never_zero(spec: PolicySpec, failures: int, start: int) -> None:
    state, current = PolicyState(), start
    for i in range(failures):
        d = decide(spec, state, float(i), current, None)
        if d.fallback and spec.fallback_replicas is not None:
            assert d.desired >= 1
        if current > 0:
            assert d.desired > 0, "a failed read never scales to zero"
        state, current = d.state, d.desired
