"""The factorial cache contract, counted from the execution log (not timing)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from resonate.error import ServerError
from resonate_base.error import ConnectorError

from service.client import invoke
from service.patterns.deps import FloorMemo, PatternDeps
from service.patterns.factorial import find_floor
from service.patterns.registry import pattern
from tests.conftest import make_settings

HITS = "resonate_patterns_promise_cache_hits_total"
MISSES = "resonate_patterns_promise_cache_misses_total"
EXECUTIONS = "resonate_patterns_executions_total"


def _levels(executions: Any) -> set[int]:
    return {int(e["args"]) for e in executions.started("factorial")}


async def _all_cached_no_body(runtime: Any, executions: Any, ns: range) -> None:
    """Every ``factorial(n)`` for n in ``ns`` answers from the cache, and no body runs."""
    executions.clear()
    for n in ns:
        again = await invoke(runtime, pattern("factorial"), (n,))
        assert (again.result, again.cached) == (math.factorial(n), True)
    assert executions.started("factorial") == []


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
    await _all_cached_no_body(runtime, executions, range(31))


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
        # The root's first run cannot read factorial-4 (its floor search): its
        # lease is released and the re-delivered run (task version 2) looks up
        # again, uncounted; level 4 then searches the floor itself.
        (("get", "factorial-4"), 4),
        # Level 3's resume cannot read factorial-2 (the value its child
        # published): released, re-delivered, read again. First runs all counted.
        (("get", "factorial-2"), 5),
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
    await _all_cached_no_body(runtime, executions, range(5))


async def test_cache__resume_finds_the_value_its_child_published__no_second_rpc(
    embedded: Any,
) -> None:
    # The root's first run finds the cache floor (reads factorial-2, then
    # bisects [0, 1]: factorial-0); levels 2 and 1 are above that floor and
    # read nothing on their first runs. Every rpc level's resume reads the
    # cache again and, the child having published first, takes the value from
    # it instead of replaying the rpc: a replay whose lookup answers
    # differently from the first run's.
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
    assert seen == [
        ("factorial-2", "missing"),
        ("factorial-0", "missing"),
        ("factorial-0", "resolved"),
        ("factorial-1", "resolved"),
        ("factorial-2", "resolved"),
    ]
    assert _counted(runtime, MISSES, function="factorial", kind="lookup") == 3
    assert _counted(runtime, HITS, function="factorial", kind="lookup") == 0


class _Store:
    """A fake promises client: ``get`` answers from ``resolved`` and counts its reads."""

    def __init__(self, resolved: set[int]) -> None:
        self.resolved = resolved
        self.reads: list[int] = []

    async def get(self, promise_id: str) -> Any:
        k = int(promise_id.removeprefix("factorial-"))
        self.reads.append(k)
        if k not in self.resolved:
            raise ServerError(404, "Promise not found")
        return SimpleNamespace(state="resolved", value=SimpleNamespace(data=math.factorial(k)))


def _deps(store: _Store) -> PatternDeps:
    return PatternDeps(settings=make_settings(), promises=store, links=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("top", "cached_up_to"),
    [(199, None), (199, 198), (199, 199), (199, 120), (199, 0), (1, None), (0, None), (0, 0)],
)
async def test_floor__bisects_a_downward_closed_cache__largest_resolved_and_its_value(
    top: int, cached_up_to: int | None
) -> None:
    resolved = set() if cached_up_to is None else set(range(cached_up_to + 1))
    store = _Store(resolved)
    floor, value = await find_floor(_deps(store), top)
    expected = -1 if cached_up_to is None else cached_up_to
    assert (floor, value) == (expected, None if expected < 0 else math.factorial(expected))
    # The top first (one read when it is cached), then a bisection of [0, top - 1].
    assert store.reads[0] == top
    if expected == top:
        assert store.reads == [top]
    else:
        assert len(store.reads) <= 1 + math.ceil(math.log2(top + 1))


async def test_floor__cold_200_level_chain__reads_halve_down_to_zero() -> None:
    store = _Store(set())
    assert await find_floor(_deps(store), 199) == (-1, None)
    assert store.reads == [199, 99, 49, 24, 11, 5, 2, 0]


async def test_floor__a_cache_with_holes__still_a_resolved_floor_with_its_own_value() -> None:
    # Not downward closed (values written by hand): the bisection may settle
    # below the highest cached value, never on an uncached one.
    store = _Store({0, 1, 2, 3, 60, 61})
    floor, value = await find_floor(_deps(store), 99)
    assert floor in store.resolved
    assert value == math.factorial(floor)


def test_floor_memo__forgets_the_oldest_root_past_its_limit() -> None:
    memo = FloorMemo(limit=2)
    memo.remember("a", 3)
    memo.remember("b", -1)
    memo.remember("a", 5)  # rewritten: now the newest
    memo.remember("c", 7)
    assert (memo.floor("a"), memo.floor("b"), memo.floor("c")) == (5, None, 7)


async def test_cache__stale_floor__levels_computed_again_never_a_wrong_value(
    embedded: Any, executions: Any
) -> None:
    # A floor remembered before another run filled the cache (here: forced)
    # makes the levels above it skip their reads: they are computed again,
    # with the same values, and nothing cached is overwritten.
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (12,))
    memo = FloorMemo()
    memo.remember("factorial-15", -1)
    runtime.resonate.with_dependency(
        PatternDeps(
            settings=runtime.settings,
            promises=runtime.resonate.promises,
            links=runtime.links,
            floors=memo,
        )
    )
    executions.clear()
    run = await invoke(runtime, pattern("factorial"), (15,))
    assert (run.result, run.cached) == (math.factorial(15), False)
    assert _levels(executions) == set(range(16))
    await _all_cached_no_body(runtime, executions, range(16))
