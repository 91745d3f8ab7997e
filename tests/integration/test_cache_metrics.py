"""Cache hit/miss counters against ground truth: real workers, the store and the execution log.

The semantics under test (docs/metrics.md): a durable call is an invocation,
a child (``ctx.run`` or ``ctx.rpc``) or a factorial cache lookup. A hit was
answered by a promise already settled before the call asked; a miss needed a
body to run. Each call is counted once, in the process that invoked it
(invocations) or in the worker that ran it (children, lookups); a replay of a
call already made counts nothing.

For a cold ``factorial(n)`` (nothing stored, n >= 1):

* 1 invocation miss (in the invoking process);
* every level k = n..1 looks up ``factorial-{k-1}`` inline (n lookup misses)
  and calls ``factorial(k-1)`` by rpc (n ``factorial`` child misses);
* every level below the root (k = n-1..0) publishes ``factorial-{k}`` inline
  (a store write, not a durable call: not counted);
* 0 hits on every series; n child promises (the rpc children) and n cache
  entries in the store; the body runs 2n + 1 times for ``factorial`` (each
  level that waits on its rpc child runs again when it resumes; that replay
  reads the cache again and counts nothing), and nothing else executes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from service.client import invoke
from service.connector.envelopes import request_envelope
from service.patterns.factorial import CACHE_TAG, factorial_id
from service.patterns.registry import pattern
from tests.integration.conftest import log_events, scrape, worker_url

if TYPE_CHECKING:
    from service.local.supervisor import Stack
    from service.runtime import Runtime

pytestmark = pytest.mark.slow

HITS = "resonate_patterns_promise_cache_hits_total"
MISSES = "resonate_patterns_promise_cache_misses_total"
EXECUTIONS = "resonate_patterns_executions_total"

#: (hit or miss, kind, function) -> count, nonzero entries only.
type Counts = Counter[tuple[str, str, str]]


def _labels(key: str) -> dict[str, str]:
    inner = key.partition("{")[2].rstrip("}")
    pairs = (item.split("=", 1) for item in inner.split(",") if "=" in item)
    return {k: v.strip('"') for k, v in pairs}


def cache_counts(samples: list[dict[str, float]]) -> Counts:
    """Hit/miss counts summed over processes (scraped /metrics)."""
    out: Counts = Counter()
    for sample in samples:
        for key, value in sample.items():
            name = key.partition("{")[0]
            if name in (HITS, MISSES) and value:
                labels = _labels(key)
                what = "hit" if name == HITS else "miss"
                out[(what, labels["kind"], labels["function"])] += int(value)
    return out


def client_counts(*runtimes: Runtime) -> Counts:
    """Hit/miss counts of in-process runtimes (the clients that invoked)."""
    out: Counts = Counter()
    for runtime in runtimes:
        for family in runtime.telemetry.metrics.registry.collect():
            for s in family.samples:
                if s.name in (HITS, MISSES) and s.value:
                    what = "hit" if s.name == HITS else "miss"
                    out[(what, s.labels["kind"], s.labels["function"])] += int(s.value)
    return out


async def worker_counts(stack: Stack) -> tuple[Counts, Counter[str]]:
    """Hit/miss counts and executions per function, summed over the workers."""
    samples = [await scrape(worker_url(stack, i)) for i in range(len(stack.workers))]
    executions: Counter[str] = Counter()
    for sample in samples:
        for key, value in sample.items():
            if key.partition("{")[0] == EXECUTIONS and value:
                executions[_labels(key)["function"]] += int(value)
    return cache_counts(samples), executions


def logged(stack: Stack, after: list[int] | None = None) -> list[dict[str, Any]]:
    """The ``execution_started`` lines of the workers (past ``after[i]`` lines of worker i)."""
    out: list[dict[str, Any]] = []
    for i, w in enumerate(stack.workers):
        lines = [e for e in log_events(w.log_path) if e.get("event") == "execution_started"]
        out += lines[after[i] :] if after is not None else lines
    return out


def log_sizes(stack: Stack) -> list[int]:
    return [
        sum(e.get("event") == "execution_started" for e in log_events(w.log_path))
        for w in stack.workers
    ]


async def stored(url: str) -> list[dict[str, Any]]:
    """Every promise in the server's store (``promise.search`` over HTTP, following the cursor)."""
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            data: dict[str, Any] = {"limit": 1000}
            if cursor is not None:
                data["cursor"] = cursor
            envelope = request_envelope("promise.search", data, origin="test")
            async with session.post(f"{url}/", json=envelope) as resp:
                reply = await resp.json()
            assert reply["head"]["status"] == 200, reply
            records += reply["data"]["promises"]
            cursor = reply["data"].get("cursor")
            if not cursor:
                return records


def children(records: list[dict[str, Any]], root: str | None = None) -> list[dict[str, Any]]:
    """Promises made by a durable call inside an execution (lineage ids), under ``root``."""
    return [
        r for r in records if ":" in r["id"] and (root is None or r["id"].startswith(root + ":"))
    ]


def decoded(value: dict[str, Any]) -> Any:
    """A stored value's data (base64 of JSON on the wire)."""
    data = value.get("data")
    return json.loads(base64.b64decode(data)) if data else None


def cache_entries(records: list[dict[str, Any]]) -> dict[str, int]:
    """The resolved entries the factorial cache published: id -> value."""
    out: dict[str, int] = {}
    for r in records:
        if CACHE_TAG in r["tags"]:
            assert r["state"] == "resolved", r
            out[r["id"]] = decoded(r["value"])
    return out


def _n(promise_id: str) -> int:
    return int(promise_id.rpartition("-")[2])


def cold_factorial(n: int) -> Counts:
    """What the workers count for a cold ``factorial(n)`` (module docstring)."""
    return Counter(
        {
            ("miss", "lookup", "factorial"): n,
            ("miss", "child", "factorial"): n,
        }
    )


async def api_call(stack: Stack, n: int) -> dict[str, Any]:
    """``POST /v1/patterns/factorial`` on the first worker's HTTP API."""
    url = worker_url(stack, 0).replace("/metrics", "/v1/patterns/factorial")
    async with aiohttp.ClientSession() as session, session.post(url, json={"args": [n]}) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def settle_logs() -> None:
    # Workers write the log lines of one loop iteration at its end.
    await asyncio.sleep(0.3)


async def test_factorial__cold_12_then_12_7_15__exact_counts_per_level_and_call(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(2)
    client = clients(stack.plan.url)
    fact = pattern("factorial")

    # Cold factorial(12), nothing stored.
    first = await invoke(client, fact, (12,))
    assert (first.result, first.cached) == (math.factorial(12), False)
    await settle_logs()
    counts, executions = await worker_counts(stack)
    assert counts == cold_factorial(12)
    assert not [k for k in counts if k[0] == "hit"], "a cold run hits nothing"
    assert client_counts(client) == {("miss", "invocation", "factorial"): 1}
    # The execution log agrees: every call ran its body, the rpc levels twice
    # (dispatch then resume), and each call was counted once.
    log = logged(stack)
    started = Counter(e["function"] for e in log)
    assert started == {"factorial": 2 * 12 + 1}
    assert executions == started
    rpc_children = {e["promise_id"] for e in log if e["function"] == "factorial" and e["depth"]}
    assert len(rpc_children) == counts[("miss", "child", "factorial")]
    # ... and the store: n child promises, all rpc children, and the n cache
    # entries factorial-0..11 the levels below the root published.
    records = await stored(stack.plan.url)
    made = children(records, "factorial-12")
    assert len(made) == counts[("miss", "child", "factorial")] == 12
    assert all(r["tags"]["resonate:scope"] == "global" for r in made)
    assert cache_entries(records) == {factorial_id(k): math.factorial(k) for k in range(12)}

    # Through a worker's HTTP API, so the long-lived worker counts the invocations:
    # factorial(12) again and factorial(7) (published by the first run) are one
    # invocation hit each, nothing else is counted, no body runs.
    again = await api_call(stack, 12)
    smaller = await api_call(stack, 7)
    assert (again["cached"], smaller["cached"]) == (True, True)
    assert smaller["result"] == math.factorial(7)
    await settle_logs()
    hits, still = await worker_counts(stack)
    assert hits - counts == {("hit", "invocation", "factorial"): 2}
    assert not counts - hits
    assert still == executions
    assert len(logged(stack)) == len(log), "a hit executes nothing"

    # factorial(15): levels 15 and 14 miss their lookups (14, 13) and recurse;
    # level 13 finds factorial-12 (the one lookup hit) and stops there.
    before = log_sizes(stack)
    bigger = await api_call(stack, 15)
    assert (bigger["result"], bigger["cached"]) == (math.factorial(15), False)
    await settle_logs()
    after, _ = await worker_counts(stack)
    assert after - hits == {
        ("miss", "invocation", "factorial"): 1,
        ("miss", "lookup", "factorial"): 2,
        ("hit", "lookup", "factorial"): 1,
        ("miss", "child", "factorial"): 2,
    }
    new = logged(stack, before)
    levels = Counter(int(e["args"]) for e in new if e["function"] == "factorial")
    # Levels 15 and 14 run twice (they wait on their rpc child), 13 once;
    # nothing else executes (lookups and publishes are inline).
    assert levels == {15: 2, 14: 2, 13: 1}
    assert len(new) == 5
    # Levels 14 and 13 (below the root) published their values; factorial-12
    # is the first call's own promise, no cache entry.
    assert cache_entries(await stored(stack.plan.url)) == {
        factorial_id(k): math.factorial(k) for k in range(15) if k != 12
    }
    assert client_counts(client) == {("miss", "invocation", "factorial"): 1}


async def test_factorial__concurrent_overlapping_clients__one_count_per_durable_call(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(3)
    runtimes = [clients(stack.plan.url) for _ in range(3)]
    ns = [20, 14, 17, 20, 9, 25, 17, 3]
    calls = [invoke(runtimes[i % 3], pattern("factorial"), (n,)) for i, n in enumerate(ns)]
    results = await asyncio.gather(*calls)
    assert [r.result for r in results] == [math.factorial(n) for n in ns]
    await settle_logs()

    invoked = client_counts(*runtimes)
    assert invoked[("hit", "invocation", "factorial")] + invoked[
        ("miss", "invocation", "factorial")
    ] == len(ns)
    counts, executions = await worker_counts(stack)
    # Every child promise in the store (all rpc children) is one durable call,
    # counted exactly once; with the invocations, that is every hit and miss
    # of the run but the lookups.
    records = await stored(stack.plan.url)
    made = children(records)
    assert all(r["tags"]["resonate:scope"] == "global" for r in made)
    assert counts[("miss", "child", "factorial")] == len(made)
    assert counts[("miss", "child", "factorial")] + sum(invoked.values()) == len(made) + len(ns)
    assert not [k for k in counts if k[0] == "hit" and k[1] == "child"]
    assert {k[2] for k in counts} == {"factorial"}
    # Replays happened (rpc levels run twice) and were not counted.
    log = logged(stack)
    bodies = [e["promise_id"] for e in log if e["function"] == "factorial" and e["depth"]]
    assert len(bodies) > len(set(bodies)) == counts[("miss", "child", "factorial")]
    # One lookup per level call that ran a body for k >= 1, on its first run.
    looking = {e["promise_id"] for e in log if e["function"] == "factorial" and int(e["args"])}
    assert (
        len(looking)
        == counts[("miss", "lookup", "factorial")] + counts[("hit", "lookup", "factorial")]
    )
    # Every level below a root published its value (a root's own promise is
    # its invocation's, settled by its task, and is no cache entry).
    entries = cache_entries(records)
    assert entries == {factorial_id(k): math.factorial(k) for k in map(_n, entries)}
    assert set(entries) | {factorial_id(n) for n in ns} == {factorial_id(k) for k in range(26)}
    assert executions["factorial"] == len(bodies) + sum(
        e["function"] == "factorial" and not e["depth"] for e in log
    )


async def test_enrich_batch__50_cold_then_again_then_half_shared__children_of_a_new_root_miss(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(2)
    client = clients(stack.plan.url)
    batch = pattern("enrich_batch")
    ids = list(range(50))

    cold = await invoke(client, batch, (ids,))
    assert not cold.cached
    counts, _ = await worker_counts(stack)
    assert counts == {("miss", "child", "enrich_one"): 50}
    assert client_counts(client) == {("miss", "invocation", "enrich_batch"): 1}

    again = await invoke(client, batch, (ids,))
    assert (again.cached, again.result) == (True, cold.result)
    assert (await worker_counts(stack))[0] == counts
    assert client_counts(client) == {
        ("miss", "invocation", "enrich_batch"): 1,
        ("hit", "invocation", "enrich_batch"): 1,
    }

    # Half the ids again, in a different batch: a different root, so its 50
    # children are new promises (lineage ids under the new root) and each one
    # runs: 50 more misses, no hit. The shared records are enriched again.
    shared = await invoke(client, batch, (list(range(25, 75)),))
    assert not shared.cached
    assert shared.result[:25] == cold.result[25:]
    after, executions = await worker_counts(stack)
    assert after == {("miss", "child", "enrich_one"): 100}
    assert executions["enrich_one"] == 100
    assert len(children(await stored(stack.plan.url), shared.id)) == 50
    assert client_counts(client) == {
        ("miss", "invocation", "enrich_batch"): 2,
        ("hit", "invocation", "enrich_batch"): 1,
    }


async def test_parallel_enrich__parent_resumes_with_children_pending__each_child_counted_once(
    stacks: Any, clients: Any
) -> None:
    # Slow leaves on two workers: the parent resumes while most of its rpc
    # children are still pending, and its replays re-create them (the create
    # comes back pending). Only the children's first runs count.
    stack = await stacks(2, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "30"})
    client = clients(stack.plan.url)
    out = await invoke(client, pattern("parallel_enrich"), (list(range(40)),))
    assert [r["id"] for r in out.result] == list(range(40))
    counts, executions = await worker_counts(stack)
    assert counts == {("miss", "child", "enrich_one"): 40}
    assert executions["enrich_one"] == 40
    assert executions["parallel_enrich"] >= 3, "the parent was replayed more than once"
