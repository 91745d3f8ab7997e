"""Cache hit/miss and depth metrics, read from the registry a worker serves."""

from __future__ import annotations

from typing import Any

from service.client import invoke
from service.patterns.registry import pattern
from service.telemetry.metrics import DEPTH_BUCKETS, metrics_table, operator_metrics_table
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


async def test_local_children__executed_misses_then_replayed_hits(embedded: Any) -> None:
    runtime = await embedded()
    child = {"function": "process_one", "kind": "child"}
    await invoke(runtime, pattern("process_bounded"), ([1, 2, 3, 4], 2))
    assert (_value(runtime, MISSES, **child), _value(runtime, HITS, **child)) == (4, 0)


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
    assert _value(runtime, "resonate_patterns_root_max_depth_sum", function="factorial") == n + 1


async def test_fanout_width__recorded_per_fanout(embedded: Any) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("enrich_batch"), (list(range(30)),))
    assert _value(runtime, "resonate_patterns_fanout_width_count", function="enrich_batch") == 1
    assert _value(runtime, "resonate_patterns_fanout_width_sum", function="enrich_batch") == 30


def test_docs__metrics_tables_match_definitions() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert metrics_table() in docs
    assert operator_metrics_table() in docs


def test_labels__bounded_sets_only() -> None:
    from service.telemetry.metrics import metric_docs

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
    for doc in metric_docs():
        assert set(doc.labels) <= allowed, doc.name
        assert doc.name.startswith("resonate_patterns_")
