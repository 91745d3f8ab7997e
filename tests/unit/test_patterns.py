"""Every pattern against a plain-Python oracle, on the embedded server."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.client import invoke
from service.patterns.enrich import enrich_record, record_exists
from service.patterns.links import SyntheticGraph
from service.patterns.registry import pattern

_FAST = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _call(runtime: Any, name: str, *args: Any) -> Any:
    return (await invoke(runtime, pattern(name), args)).result


def crawl_oracle(
    graph: SyntheticGraph, root: str, depth: int, max_pages: int
) -> list[dict[str, Any]]:
    """Breadth-first pages down to ``depth`` hops, each URL once, capped at ``max_pages``."""
    seen = {root}
    frontier = [root]
    pages: list[dict[str, Any]] = []
    level = 0
    while frontier:
        nxt: list[str] = []
        for url in frontier:
            links = graph.out_links(graph.page_of(url) or 0)
            pages.append({"url": url, "depth": level, "links": links})
            for link in links:
                if link not in seen and len(seen) < max_pages:
                    seen.add(link)
                    nxt.append(link)
        if level == depth:
            break
        frontier, level = nxt, level + 1
    return pages


async def test_factorial__small_inputs__match_math_factorial(embedded: Any) -> None:
    runtime = await embedded()
    for n in (0, 1, 2, 5, 13, 30):
        assert await _call(runtime, "factorial", n) == math.factorial(n)


@_FAST
@given(n=st.integers(min_value=0, max_value=60))
async def test_factorial__any_n__matches_oracle(embedded: Any, n: int) -> None:
    runtime = await embedded()
    assert await _call(runtime, "factorial", n) == math.factorial(n)


@_FAST
@given(ids=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
async def test_enrich_batch__existing_ids__enriched_in_input_order(
    embedded: Any, ids: list[int]
) -> None:
    runtime = await embedded()
    assert await _call(runtime, "enrich_batch", ids) == [enrich_record(i) for i in ids]


@_FAST
@given(ids=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
async def test_parallel_enrich__existing_ids__enriched_in_input_order(
    embedded: Any, ids: list[int]
) -> None:
    runtime = await embedded()
    assert await _call(runtime, "parallel_enrich", ids) == [enrich_record(i) for i in ids]


record_ids = st.one_of(
    st.integers(min_value=-50, max_value=50),
    st.text(alphabet="abcdefgimnosx-", min_size=1, max_size=12),
)


@_FAST
@given(ids=st.lists(record_ids, min_size=1, max_size=25))
async def test_enrich_tolerant__mixed_ids__every_success_and_error_in_input_order(
    embedded: Any, ids: list[int | str]
) -> None:
    runtime = await embedded()
    out = await _call(runtime, "enrich_tolerant", ids)
    assert [o["id"] for o in out] == ids
    for rid, outcome in zip(ids, out, strict=True):
        if record_exists(rid):
            assert outcome == {"id": rid, "ok": True, "value": enrich_record(rid)}
        else:
            assert outcome == {
                "id": rid,
                "ok": False,
                "error": f"cannot enrich {rid!r}: no such record",
            }


async def test_enrich_tolerant__explicit_failures__reported_where_they_occurred(
    embedded: Any,
) -> None:
    runtime = await embedded()
    out = await _call(runtime, "enrich_tolerant", [1, "missing-a", 2, -7, "x"])
    assert [o["ok"] for o in out] == [True, False, True, False, True]
    assert out[1]["error"] == "cannot enrich 'missing-a': no such record"
    assert out[3]["error"] == "cannot enrich -7: no such record"


async def test_enrich_batch__one_missing_record__whole_batch_rejected(embedded: Any) -> None:
    runtime = await embedded()
    with pytest.raises(Exception, match="cannot enrich 'missing-9': no such record"):
        await _call(runtime, "enrich_batch", [1, "missing-9", 3])


@_FAST
@given(
    items=st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=40),
    k=st.integers(min_value=1, max_value=10),
)
async def test_process_bounded__any_items__squares_in_order(
    embedded: Any, items: list[int], k: int
) -> None:
    runtime = await embedded()
    assert await _call(runtime, "process_bounded", items, k) == [x * x for x in items]


async def test_process_bounded__measured__never_more_than_k_in_flight(
    embedded: Any, executions: Any
) -> None:
    runtime = await embedded(RESONATE_PATTERNS_STEP_DELAY_MS="5")
    for k in (1, 2, 3, 5, 8):
        executions.clear()
        await _call(runtime, "process_bounded", list(range(20 + k)), k)
        assert len(executions.started("process_one")) == 20 + k
        assert executions.max_concurrent("process_one") == k


async def test_crawl__graph_with_cycles__each_url_once_and_depth_respected(embedded: Any) -> None:
    runtime = await embedded()
    graph = SyntheticGraph(100, 3)
    # The default graph has cycles: some page links back to a page already seen.
    edges = {graph.url(p): graph.out_links(p) for p in range(graph.pages)}
    assert any(graph.url(0) in edges[link] for link in edges[graph.url(0)]) or any(
        src in edges[dst] for src in edges for dst in edges[src]
    )
    for depth in (0, 1, 2, 4):
        root = graph.url(7)
        out = await _call(runtime, "crawl", {"url": root, "depth": depth})
        urls = [p["url"] for p in out["pages"]]
        assert len(urls) == len(set(urls)), "a URL was crawled twice"
        assert max(p["depth"] for p in out["pages"]) <= depth
        assert out["pages"] == crawl_oracle(graph, root, depth, 1000)
        assert out["visited"] == len(urls)


async def test_crawl__page_cap__stops_expanding(embedded: Any) -> None:
    runtime = await embedded(RESONATE_PATTERNS_MAX_CRAWL_PAGES="10")
    graph = SyntheticGraph(100, 3)
    out = await _call(runtime, "crawl", {"url": graph.url(1), "depth": 5})
    assert out["visited"] == 10
    assert out["pages"] == crawl_oracle(graph, graph.url(1), 5, 10)


async def test_fetch_links__synthetic_page__deterministic_links(embedded: Any) -> None:
    runtime = await embedded()
    graph = SyntheticGraph(100, 3)
    assert await _call(runtime, "fetch_links", graph.url(4)) == graph.out_links(4)


def test_synthetic_graph__same_everywhere__and_bfs_oracle_sane() -> None:
    a, b = SyntheticGraph(50, 4), SyntheticGraph(50, 4)
    assert [a.out_links(i) for i in range(50)] == [b.out_links(i) for i in range(50)]
    pages = crawl_oracle(a, a.url(0), 3, 1000)
    dist: dict[str, int] = {a.url(0): 0}
    queue = deque([a.url(0)])
    while queue:
        u = queue.popleft()
        for v in a.out_links(a.page_of(u) or 0):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    assert {p["url"]: p["depth"] for p in pages} == {u: d for u, d in dist.items() if d <= 3}
