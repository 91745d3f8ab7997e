"""The factorial cache contract, counted from the execution log (not timing)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from resonate.error import ServerError
from resonate_base.error import ConnectorError

from service.client import invoke
from service.patterns.deps import PatternDeps
from service.patterns.registry import pattern

HITS = "resonate_patterns_promise_cache_hits_total"
MISSES = "resonate_patterns_promise_cache_misses_total"
EXECUTIONS = "resonate_patterns_executions_total"


def _levels(executions: Any) -> set[int]:
    return {int(e["args"]) for e in executions.started("factorial")}


async def test_cache__factorial_20_then_20_and_12__zero_bodies_and_cached(
    embedded: Any, executions: Any
) -> None:
    runtime = await embedded()
    first = await invoke(runtime, pattern("factorial"), (20,))
    assert first.result == math.factorial(20)
    assert not first.cached
    assert _levels(executions) == set(range(21))

    executions.clear()
    again = await invoke(runtime, pattern("factorial"), (20,))
    smaller = await invoke(runtime, pattern("factorial"), (12,))
    zero = await invoke(runtime, pattern("factorial"), (0,))
    assert executions.started("factorial") == []
    assert (again.result, again.cached) == (math.factorial(20), True)
    assert (smaller.result, smaller.cached) == (math.factorial(12), True)
    assert (zero.result, zero.cached) == (1, True)


async def test_cache__factorial_25_after_20__executes_only_new_levels(
    embedded: Any, executions: Any
) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (20,))
    executions.clear()
    bigger = await invoke(runtime, pattern("factorial"), (25,))
    assert bigger.result == math.factorial(25)
    assert not bigger.cached
    assert _levels(executions) == {21, 22, 23, 24, 25}


async def test_cache__concurrent_overlapping_runs__all_correct_and_cached_after(
    embedded: Any, executions: Any
) -> None:
    import asyncio

    runtime = await embedded()
    ns = [30, 18, 25, 30, 7, 22]
    results = await asyncio.gather(*(invoke(runtime, pattern("factorial"), (n,)) for n in ns))
    assert [r.result for r in results] == [math.factorial(n) for n in ns]
    executions.clear()
    for n in range(31):
        again = await invoke(runtime, pattern("factorial"), (n,))
        assert (again.result, again.cached) == (math.factorial(n), True)
    assert executions.started("factorial") == []


async def test_cache__custom_id__still_publishes_keyed_results(
    embedded: Any, executions: Any
) -> None:
    runtime = await embedded()
    run = await invoke(runtime, pattern("factorial"), (9,), promise_id="my-run")
    assert (run.id, run.result) == ("my-run", math.factorial(9))
    executions.clear()
    keyed = await invoke(runtime, pattern("factorial"), (9,))
    assert (keyed.id, keyed.cached) == ("factorial-9", True)
    assert executions.started("factorial") == []


async def test_depth__factorial_n__executions_run_at_lineage_depth(
    embedded: Any, executions: Any
) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (6,))
    by_n = {int(e["args"]): e["depth"] for e in executions.started("factorial")}
    assert by_n == {6 - d: d for d in range(7)}


class FlakyPromises:
    """The runtime's promises client, failing chosen calls once with a connector error."""

    def __init__(self, inner: Any, fail: set[tuple[str, str]]) -> None:
        self.inner = inner
        #: (method, promise id) pairs still to fail once each.
        self.fail = set(fail)
        self.failed: list[tuple[str, str]] = []

    def _maybe_fail(self, method: str, promise_id: str) -> None:
        if (method, promise_id) in self.fail:
            self.fail.discard((method, promise_id))
            self.failed.append((method, promise_id))
            raise ConnectorError(OSError("connection reset by peer"))

    async def get(self, promise_id: str) -> Any:
        self._maybe_fail("get", promise_id)
        return await self.inner.get(promise_id)

    async def create(self, promise_id: str, *args: Any) -> Any:
        self._maybe_fail("create", promise_id)
        return await self.inner.create(promise_id, *args)

    async def resolve(self, promise_id: str, value: Any) -> Any:
        self._maybe_fail("resolve", promise_id)
        return await self.inner.resolve(promise_id, value)


def _flaky(runtime: Any, fail: set[tuple[str, str]]) -> FlakyPromises:
    promises = FlakyPromises(runtime.resonate.promises, fail)
    runtime.resonate.with_dependency(
        PatternDeps(settings=runtime.settings, promises=promises, links=runtime.links)
    )
    return promises


def _counted(runtime: Any, name: str, **labels: str) -> float:
    value = runtime.telemetry.metrics.registry.get_sample_value(
        name, {"group": "workers", **labels}
    )
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("failing", "lookup_misses"),
    [
        # Level 3's first run cannot read factorial-2: its lease is released and
        # the re-delivered run (task version 2) looks up again, uncounted.
        (("get", "factorial-2"), 4),
        # Level 2 (below the root) cannot write factorial-2 when it resumes:
        # released, re-delivered, published by the next run.
        (("create", "factorial-2"), 5),
        (("resolve", "factorial-2"), 5),
    ],
)
async def test_cache__connector_failure_in_lookup_or_publish__task_retried_never_rejected(
    embedded: Any, executions: Any, failing: tuple[str, str], lookup_misses: int
) -> None:
    runtime = await embedded()
    flaky = _flaky(runtime, {failing})
    run = await invoke(runtime, pattern("factorial"), (5,))
    assert (run.result, run.cached) == (math.factorial(5), False)
    assert flaky.failed == [failing]
    # The failing run ended as a platform failure ("retried"), nothing rejected.
    outcomes = {
        o: _counted(runtime, EXECUTIONS, function="factorial", outcome=o)
        for o in ("resolved", "suspended", "retried", "rejected")
    }
    assert outcomes == {"resolved": 6, "suspended": 5, "retried": 1, "rejected": 0}
    assert _counted(runtime, MISSES, function="factorial", kind="lookup") == lookup_misses
    assert _counted(runtime, HITS, function="factorial", kind="lookup") == 0
    # The cache holds every level below the root, factorial-2 included.
    executions.clear()
    for k in range(5):
        again = await invoke(runtime, pattern("factorial"), (k,))
        assert (again.result, again.cached) == (math.factorial(k), True)
    assert executions.started("factorial") == []


async def test_cache__resume_finds_the_value_its_child_published__no_second_rpc(
    embedded: Any,
) -> None:
    # Every rpc level's resume reads the cache again and, the child having
    # published first, takes the value from it instead of replaying the rpc:
    # a replay whose lookup answers differently from the first run's.
    runtime = await embedded()
    promises = _flaky(runtime, set())
    seen: list[tuple[str, str]] = []
    get = promises.get

    async def recording_get(promise_id: str) -> Any:
        record = await get(promise_id)
        seen.append((promise_id, record.state))
        return record

    async def missing_get(promise_id: str) -> Any:
        try:
            return await recording_get(promise_id)
        except ServerError:
            seen.append((promise_id, "missing"))
            raise

    promises.get = missing_get  # type: ignore[method-assign]
    run = await invoke(runtime, pattern("factorial"), (3,))
    assert run.result == 6
    # Levels 3, 2, 1 miss 2, 1, 0 on their first runs, then hit on their resumes.
    assert sorted(seen) == sorted(
        [(f"factorial-{k}", s) for k in (2, 1, 0) for s in ("missing", "resolved")]
    )
    assert _counted(runtime, MISSES, function="factorial", kind="lookup") == 3
    assert _counted(runtime, HITS, function="factorial", kind="lookup") == 0
