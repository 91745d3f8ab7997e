"""The factorial cache contract, counted from the execution log (not timing)."""

from __future__ import annotations

import math
from typing import Any

from service.client import invoke
from service.patterns.registry import pattern


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
