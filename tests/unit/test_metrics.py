"""Cache hit/miss and depth metrics, read from the registry a worker serves (embedded)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.client import RejectedError, invoke
from service.patterns.registry import CHILD_FUNCTIONS, LOOKUP_FUNCTIONS, pattern
from service.telemetry.metrics import BacklogMetrics, OperatorMetrics, WorkerMetrics
from service.telemetry.names import (
    BACKLOG_METRICS,
    DEPTH_BUCKETS,
    OPERATOR_METRICS,
    WORKER_METRICS,
    Metric,
    backlog_metrics_table,
    metrics_table,
    operator_metrics_table,
)
from tests.conftest import ROOT


def _value(runtime: Any, name: str, **labels: str) -> float:
    labels.setdefault("group", "workers")
    value = runtime.telemetry.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _executions(runtime: Any, function: str) -> float:
    return sum(
        _value(runtime, "resonate_patterns_executions_total", function=function, outcome=o)
        for o in ("resolved", "rejected", "suspended", "retried")
    )


HITS = "resonate_patterns_promise_cache_hits_total"
MISSES = "resonate_patterns_promise_cache_misses_total"


async def test_invocations__first_miss_repeat_hit_smaller_hit_without_executions(
    embedded: Any,
) -> None:
    runtime = await embedded()
    inv = {"function": "factorial", "kind": "invocation"}
    await invoke(runtime, pattern("factorial"), (20,))
    assert (_value(runtime, MISSES, **inv), _value(runtime, HITS, **inv)) == (1, 0)
    await invoke(runtime, pattern("factorial"), (20,))
    assert (_value(runtime, MISSES, **inv), _value(runtime, HITS, **inv)) == (1, 1)
    executed = _executions(runtime, "factorial")
    await invoke(runtime, pattern("factorial"), (12,))
    assert (_value(runtime, MISSES, **inv), _value(runtime, HITS, **inv)) == (1, 2)
    assert _executions(runtime, "factorial") == executed, "a cache hit executes nothing"


async def test_lookups__misses_while_computing_then_hit_at_the_cached_level(embedded: Any) -> None:
    runtime = await embedded()
    lookup = {"function": "factorial", "kind": "lookup"}
    await invoke(runtime, pattern("factorial"), (20,))
    assert (_value(runtime, MISSES, **lookup), _value(runtime, HITS, **lookup)) == (20, 0)
    await invoke(runtime, pattern("factorial"), (25,))
    # Levels 25..22 look up 24..21 (misses); level 21 finds factorial-20.
    assert (_value(runtime, MISSES, **lookup), _value(runtime, HITS, **lookup)) == (24, 1)


async def test_local_children__one_miss_each__repeat_counts_only_the_invocation(
    embedded: Any,
) -> None:
    runtime = await embedded()
    child = {"function": "process_one", "kind": "child"}
    await invoke(runtime, pattern("process_bounded"), ([1, 2, 3, 4], 2))
    assert (_value(runtime, MISSES, **child), _value(runtime, HITS, **child)) == (4, 0)
    await invoke(runtime, pattern("process_bounded"), ([1, 2, 3, 4], 2))
    assert (_value(runtime, MISSES, **child), _value(runtime, HITS, **child)) == (4, 0)
    inv = {"function": "process_bounded", "kind": "invocation"}
    assert (_value(runtime, MISSES, **inv), _value(runtime, HITS, **inv)) == (1, 1)


def _cache_counts(runtime: Any) -> dict[tuple[str, str, str], float]:
    """Nonzero hit/miss series as {(hit|miss, kind, function): value}."""
    out: dict[tuple[str, str, str], float] = {}
    for family in runtime.telemetry.metrics.registry.collect():
        for s in family.samples:
            if s.name in (HITS, MISSES) and s.value:
                what = "hit" if s.name == HITS else "miss"
                out[(what, s.labels["kind"], s.labels["function"])] = s.value
    return out


@pytest.mark.parametrize("n", [1, 2, 9])
async def test_factorial_cold__per_level__n_lookups_n_rpc_children_no_hit(
    embedded: Any, n: int
) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (n,))
    # Levels n..1 each look up k-1 and call factorial(k-1); the publishes of
    # levels n-1..0 are inline writes, not durable calls, and count nothing.
    # Each rpc level's resume looks up again (a hit) and counts nothing.
    assert _cache_counts(runtime) == {
        ("miss", "invocation", "factorial"): 1,
        ("miss", "lookup", "factorial"): n,
        ("miss", "child", "factorial"): n,
    }


async def test_factorial_0__no_children_at_all(embedded: Any) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (0,))
    assert _cache_counts(runtime) == {("miss", "invocation", "factorial"): 1}


async def test_worked_example__factorial_5_then_3_then_7__every_counter(embedded: Any) -> None:
    runtime = await embedded()
    results = [await invoke(runtime, pattern("factorial"), (n,)) for n in (5, 3, 7)]
    assert [r.cached for r in results] == [False, True, False]
    assert _cache_counts(runtime) == {
        ("miss", "invocation", "factorial"): 2,
        ("hit", "invocation", "factorial"): 1,
        ("miss", "lookup", "factorial"): 6,
        ("hit", "lookup", "factorial"): 1,
        ("miss", "child", "factorial"): 6,
    }


async def test_rejected_invocation__repeat_is_a_hit_on_the_stored_failure(embedded: Any) -> None:
    runtime = await embedded()
    inv = {"function": "enrich_batch", "kind": "invocation"}
    for _ in range(2):
        with pytest.raises(RejectedError, match="no such record"):
            await invoke(runtime, pattern("enrich_batch"), ([1, "missing-2"],))
    assert (_value(runtime, MISSES, **inv), _value(runtime, HITS, **inv)) == (1, 1)
    child = {"function": "enrich_one", "kind": "child"}
    assert _value(runtime, MISSES, **child) == 2


async def test_child_functions__every_child_any_pattern_calls_is_declared(embedded: Any) -> None:
    runtime = await embedded()
    for name, args in (
        ("factorial", (3,)),
        ("enrich_batch", ([1, 2],)),
        ("parallel_enrich", ([1, 2],)),
        ("enrich_tolerant", ([1, "missing-1"],)),
        ("process_bounded", ([1, 2, 3], 2)),
        ("crawl", ({"url": "https://synthetic.local/p/0", "depth": 2},)),
    ):
        await invoke(runtime, pattern(name), args)
    counted = {f for (_, kind, f) in _cache_counts(runtime) if kind == "child"}
    assert counted == set(CHILD_FUNCTIONS)
    looked_up = {f for (_, kind, f) in _cache_counts(runtime) if kind == "lookup"}
    assert looked_up == set(LOOKUP_FUNCTIONS)


def test_series__declared_at_zero_before_any_call(settings: Any) -> None:
    from service.runtime import build_runtime

    runtime = build_runtime(settings, role="client")
    for name in CHILD_FUNCTIONS:
        assert (
            runtime.telemetry.metrics.registry.get_sample_value(
                MISSES, {"function": name, "group": "workers", "kind": "child"}
            )
            == 0
        )
    assert (
        runtime.telemetry.metrics.registry.get_sample_value(
            HITS, {"function": "factorial", "group": "workers", "kind": "invocation"}
        )
        == 0
    )


async def test_depth_histogram__factorial_n__buckets_match_real_depths(embedded: Any) -> None:
    runtime = await embedded()
    n = 6
    await invoke(runtime, pattern("factorial"), (n,))
    # Each level above 0 runs twice (dispatch and suspend, then replay after its
    # child resolves); factorial(0), at depth n, runs once.
    runs_at = {d: 2 for d in range(n)} | {n: 1}
    for le in DEPTH_BUCKETS:
        expected = sum(c for d, c in runs_at.items() if d <= le)
        got = _value(
            runtime,
            "resonate_patterns_execution_depth_bucket",
            function="factorial",
            le=f"{le:.1f}",
        )
        assert got == expected, f"le={le}"
    assert _value(runtime, "resonate_patterns_execution_depth_max", function="factorial") == n
    assert _value(runtime, "resonate_patterns_root_max_depth_count", function="factorial") == 1
    # The deepest execution under the root is factorial(0) at depth n (its
    # cache publish is an inline write, not a ctx.run leaf one level deeper).
    assert _value(runtime, "resonate_patterns_root_max_depth_sum", function="factorial") == n


async def test_fanout_width__recorded_per_fanout(embedded: Any) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("enrich_batch"), (list(range(30)),))
    assert _value(runtime, "resonate_patterns_fanout_width_count", function="enrich_batch") == 1
    assert _value(runtime, "resonate_patterns_fanout_width_sum", function="enrich_batch") == 30


def test_docs__metrics_tables_match_definitions() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert metrics_table() in docs
    assert operator_metrics_table() in docs
    assert backlog_metrics_table() in docs


def test_labels__bounded_sets_only() -> None:
    allowed = {
        "function",
        "group",
        "kind",
        "outcome",
        "version",
        "pid",
        "os_pid",
        "cause",
        "reason",
    }
    for metric in WORKER_METRICS:
        assert set(metric.labels) <= allowed, metric.name
        assert metric.name.startswith("resonate_patterns_")


def _exported(registry: CollectorRegistry) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name as served, type, labels, help) of every family, in exposition order."""
    suffix = {"counter": "_total", "info": "_info"}
    out = []
    for family in registry.collect():
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        ordered = tuple(sorted(labels))
        out.append(
            (family.name + suffix.get(family.type, ""), family.type, ordered, family.documentation)
        )
    return out


def _defined(metrics: tuple[Metric, ...]) -> list[tuple[str, str, tuple[str, ...], str]]:
    return [(m.name, m.type, tuple(sorted(m.labels)), m.help) for m in metrics]


def test_definitions__each_process_exports_exactly_its_defined_metrics() -> None:
    worker = WorkerMetrics("workers")
    worker.set_identity("1.2.3", "w-1")
    worker.execution_finished("factorial", 2, "resolved", 0.01)  # one series of each
    worker.in_flight_for("factorial")
    worker.fanout("enrich_batch", 3)
    worker.root_finished("factorial", 2)
    worker.declare_cache("factorial", "child")
    assert _exported(worker.registry) == _defined(WORKER_METRICS)
    operator = OperatorMetrics()
    operator.ensure("ns", "scaler", "workers")
    operator.observed("ns", "scaler", "workers", pending=1, acquired=2)
    operator.replicas("ns", "scaler", "workers", desired=3, current=1)
    assert _exported(operator.registry) == _defined(OPERATOR_METRICS)
    backlog = BacklogMetrics()
    backlog.scanned({"workers": (1, 2)}, 0.01)
    assert _exported(backlog.registry) == _defined(BACKLOG_METRICS)


def test_execution_series__each_created_at_its_first_update_only() -> None:
    worker = WorkerMetrics("workers")
    labels = {"function": "f", "group": "workers"}
    worker.execution_finished("f", 1, "resolved", 0.01)
    get = worker.registry.get_sample_value
    assert get("resonate_patterns_executions_in_flight", labels) is None
    assert get("resonate_patterns_execution_depth_count", labels) == 1
    assert get("resonate_patterns_executions_total", {**labels, "outcome": "resolved"}) == 1
    assert get("resonate_patterns_executions_total", {**labels, "outcome": "rejected"}) is None
    worker.in_flight_for("f").inc()
    assert get("resonate_patterns_executions_in_flight", labels) == 1
    worker.execution_finished("f", 0, "rejected", 0.02)
    assert get("resonate_patterns_execution_depth_max", labels) == 1
    assert get("resonate_patterns_execution_duration_seconds_count", labels) == 2
