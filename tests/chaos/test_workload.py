"""The chaos checks themselves, on scripted observations: each fault is caught, and only it."""

from __future__ import annotations

import math
from typing import Any

from service.patterns.enrich import enrich_record
from tests.chaos.workload import (
    CallOutcome,
    CallSpec,
    Kill,
    StoreView,
    held_at,
    make_calls,
    matches,
    oracle,
    summarize,
    synthetic_crawl,
)

T0 = 1_000_000.0


def ev(
    kind: str, pid: str, ts: float, function: str = "enrich_one", root: str = "r"
) -> dict[str, Any]:
    return {
        "event": f"execution_{kind}",
        "promise_id": pid,
        "function": function,
        "root_id": root,
        "ts": ts,
    }


def done(spec: CallSpec, result: Any, at: float = T0 + 1) -> CallOutcome:
    return CallOutcome(spec, T0, finished=at, result=result)


FACT = CallSpec("r", "factorial", (5,))


def test_make_calls__same_seed__same_calls_and_unique_ids() -> None:
    first, again = make_calls(7, 0, 50), make_calls(7, 0, 50)
    assert first == again
    assert len({c.id for c in first}) == 50
    assert make_calls(8, 0, 50) != first
    assert {c.pattern for c in make_calls(1, 0, 200)} == {
        "factorial",
        "parallel_enrich",
        "enrich_batch",
        "enrich_tolerant",
        "process_bounded",
        "crawl",
    }


def test_oracle__factorial_enrich_and_tolerant() -> None:
    assert oracle(FACT) == math.factorial(5)
    spec = CallSpec("t", "enrich_tolerant", ([1, "missing-x"],))
    good = {"id": 1, "ok": True, "value": enrich_record(1)}
    assert matches(spec, [good, {"id": "missing-x", "ok": False, "error": "no such record"}])
    assert not matches(spec, [good, {"id": "missing-x", "ok": True, "value": {}}])
    assert not matches(spec, [good])


def test_synthetic_crawl__depth_0__root_page_only() -> None:
    out = synthetic_crawl("https://synthetic.local/p/3", 0)
    assert out["visited"] == 1
    assert out["pages"][0]["depth"] == 0


def test_summarize__clean_run__all_zero() -> None:
    view = StoreView()
    view.observe([{"id": "r", "state": "resolved", "settledAt": (T0 + 1) * 1000}])
    events = [ev("started", "r", T0 + 0.1, "factorial"), ev("finished", "r", T0 + 0.9, "factorial")]
    summary = summarize([done(FACT, 120)], events, view, [], [], T0 + 2)
    assert summary.line() == (
        "kills=0 calls=1 promises=1 lost=0 wrong=0 re_executed_resolved=0 "
        "recovery_max=0.00s stalls_over_5s=0"
    )


def test_summarize__error_wrong_value_and_unfinished__counted() -> None:
    failed = CallOutcome(CallSpec("a", "factorial", (3,)), T0, error="RejectedError: x")
    unfinished = CallOutcome(CallSpec("b", "factorial", (3,)), T0)
    summary = summarize(
        [failed, unfinished, done(FACT, 121)], [], StoreView(), [], [(T0, T0 + 99)], T0 + 2
    )
    assert (summary.lost, summary.wrong) == (2, 1)


def test_store_view__settled_back_to_pending_or_vanished__lost() -> None:
    view = StoreView()
    view.observe(
        [{"id": "p", "state": "resolved", "settledAt": 1}, {"id": "q", "state": "pending"}]
    )
    view.observe([{"id": "p", "state": "pending"}])
    assert view.regressions == {"p"}
    assert view.vanished == {"q"}
    assert summarize([], [], view, [], [], T0).lost == 2


def test_summarize__leaf_started_after_settle__re_executed() -> None:
    view = StoreView()
    view.observe([{"id": "r:1", "state": "resolved", "settledAt": (T0 + 1) * 1000}])
    events = [ev("started", "r:1", T0 + 0.5), ev("started", "r:1", T0 + 1.5)]
    assert summarize([], events, view, [], [], T0 + 3).re_executed_resolved == 1
    # A re-run while the promise was still pending is at-least-once, allowed.
    assert summarize([], events[:1] * 2, view, [], [], T0 + 3).re_executed_resolved == 0


def test_summarize__kill__recovery_is_next_start_of_held_work() -> None:
    victim = (ev("started", "r:1", T0), ev("started", "r:2", T0), ev("finished", "r:2", T0 + 0.5))
    assert held_at(victim, T0 + 1) == {"r:1"}
    kill = Kill(T0 + 1, "SIGKILL", "worker-1", victim)
    events = [*victim, ev("started", "r:1", T0 + 3.5)]
    summary = summarize([], events, StoreView(), [kill], [], T0 + 10)
    assert summary.recovery_max == 2.5
    assert (
        summary.recovery_line() == "recovery: p50=2.50s max=2.50s over 1 kills with work in flight"
    )
    assert summary.stalls_over_5s == 0
    slow = [*victim, ev("started", "r:1", T0 + 7.5)]
    assert summarize([], slow, StoreView(), [kill], [], T0 + 10).stalls_over_5s == 1


def test_summarize__call_silent_over_5s__stall_unless_server_was_down() -> None:
    events = [ev("started", "r", T0 + 0.1, "factorial"), ev("finished", "r", T0 + 8, "factorial")]
    outcome = done(FACT, 120, at=T0 + 8.1)
    assert summarize([outcome], events, StoreView(), [], [], T0 + 9).stalls_over_5s == 1
    outage = [(T0 + 1, T0 + 4)]
    assert summarize([outcome], events, StoreView(), [], outage, T0 + 9).stalls_over_5s == 0


def test_summarize__draining_worker_finishes_held_work__that_is_its_recovery() -> None:
    victim = (ev("started", "r:1", T0), ev("finished", "r:1", T0 + 1.25))
    kill = Kill(T0 + 1, "SIGTERM", "worker-1", victim)
    events = [dict(e) for e in victim]  # parsed again from the whole log
    assert summarize([], events, StoreView(), [kill], [], T0 + 10).recovery_max == 0.25


def test_summarize__held_step_settled_before_kill__not_held() -> None:
    # The finish line was lost with the process; the store says it settled.
    victim = (ev("started", "r:1", T0),)
    kill = Kill(T0 + 1, "SIGKILL", "worker-1", victim)
    view = StoreView()
    view.observe([{"id": "r:1", "state": "resolved", "settledAt": (T0 + 0.5) * 1000}])
    summary = summarize([], list(victim), view, [kill], [], T0 + 100)
    assert (summary.recovery_max, summary.stalls_over_5s) == (0.0, 0)
    view.settled_at["r:1"] = T0 + 1.5  # settled after the kill: that is its progress
    assert summarize([], list(victim), view, [kill], [], T0 + 100).recovery_max == 0.5
