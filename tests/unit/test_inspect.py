"""service.inspect: descriptions, listings and progress read back from an embedded store,
checked against the store's own rows; and the pure renderers."""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import pytest

from service.client import invoke
from service.inspect import (
    LS_HEADER,
    Children,
    call_text,
    describe,
    describe_lines,
    error_of,
    format_ms,
    invocation_line,
    list_invocations,
    poll_interval,
    progress,
    progress_text,
    root_of,
    shorten,
    summarize,
    summary_lines,
)
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern

if TYPE_CHECKING:
    from service.runtime import Runtime

SETTLED = {"resolved", "rejected", "rejected_canceled", "rejected_timedout"}


def _truth(runtime: Runtime, promise_id: str) -> dict[str, int]:
    """Children counts straight from the embedded engine's rows (the independent truth)."""
    assert runtime.embedded is not None
    prefix = promise_id + ("." if ":" in promise_id else ":")
    rows = [p for i, p in runtime.embedded.engine.state.promises.items() if i.startswith(prefix)]
    settled = sum(p.state in SETTLED for p in rows)
    return {"created": len(rows), "settled": settled, "pending": len(rows) - settled}


def _row(runtime: Runtime, promise_id: str) -> Any:
    assert runtime.embedded is not None
    return runtime.embedded.engine.state.promises[promise_id]


# ---------------------------------------------------------------------------- describe


async def test_describe__resolved_fanout__every_field_exact(embedded: Any) -> None:
    runtime = await embedded()
    ids = list(range(25))
    done = await invoke(runtime, pattern("enrich_batch"), (ids,))
    row = _row(runtime, done.id)

    found = await describe(runtime, done.id)

    assert found == {
        "id": done.id,
        "root": done.id,
        "kind": "invocation",
        "state": "resolved",
        "pattern": "enrich_batch",
        "args": shorten(json.dumps([ids]), 120),
        "value": [enrich_record(i) for i in ids],
        "error": None,
        "created_at": row.created_at,
        "settled_at": row.settled_at,
        "timeout_at": row.timeout_at,
        "duration_ms": row.settled_at - row.created_at,
        "children": {"created": 25, "settled": 25, "pending": 0},
    }


async def test_describe__factorial__children_counted_at_every_depth_as_stored(
    embedded: Any,
) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (6,))

    root = await describe(runtime, "factorial-6")
    # The rpc child is each level's only durable call (the cache lookup and
    # publish are inline), so it is child 1.
    child = await describe(runtime, "factorial-6:1")

    assert root is not None
    assert child is not None
    assert root["value"] == math.factorial(6)
    assert root["children"] == _truth(runtime, "factorial-6")
    assert root["children"]["created"] == 6, "every level adds its rpc child under the root"
    assert child["kind"] == "child"
    assert child["root"] == "factorial-6"
    assert child["pattern"] == "factorial"
    assert child["args"] == "[5]"
    assert child["value"] == math.factorial(5)
    assert child["children"] == _truth(runtime, "factorial-6:1")
    assert child["children"]["created"] == 5


async def test_describe__published_cache_entry__kind_cache_no_children(embedded: Any) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (5,))

    found = await describe(runtime, "factorial-3")

    assert found is not None
    assert (found["kind"], found["pattern"], found["args"], found["value"]) == (
        "cache",
        "factorial",
        None,
        6,
    )
    assert found["children"] == {"created": 0, "settled": 0, "pending": 0}


async def test_describe__rejected__error_message_not_value(embedded: Any) -> None:
    runtime = await embedded()
    with pytest.raises(Exception, match="missing-2"):
        await invoke(runtime, pattern("enrich_batch"), ([1, "missing-2"],))
    pid = pattern("enrich_batch").keyed_id(([1, "missing-2"],))

    found = await describe(runtime, pid)
    local_child = await describe(runtime, f"{pid}:2")

    assert found is not None
    assert local_child is not None
    assert found["state"] == "rejected"
    assert found["value"] is None
    assert found["error"] == "cannot enrich 'missing-2': no such record"
    assert found["children"] == {"created": 2, "settled": 2, "pending": 0}
    assert local_child["kind"] == "child"
    assert local_child["pattern"] is None, "ctx.run children do not record their function"
    assert local_child["error"] == "cannot enrich 'missing-2': no such record"


async def test_describe__unknown_id__none(embedded: Any) -> None:
    runtime = await embedded()
    assert await describe(runtime, "no-such-call") is None


# ---------------------------------------------------------------------------- progress


async def test_progress__running_fanout__grows_to_all_settled(embedded: Any) -> None:
    runtime = await embedded(RESONATE_PATTERNS_STEP_DELAY_MS="300")
    ids = list(range(30))
    target = pattern("process_bounded")
    pid = target.keyed_id((ids, 5))
    call = asyncio.create_task(invoke(runtime, target, (ids, 5)))
    seen: list[tuple[int, int]] = []
    while not call.done():
        seen.append(await progress(runtime, pid))
        await asyncio.sleep(0.1)
    await call
    final = await progress(runtime, pid)

    truth = _truth(runtime, pid)
    assert final == (truth["settled"], truth["created"])
    assert final[0] == final[1] > 0
    assert all(0 <= s <= c for s, c in seen)
    assert [c for _, c in seen] == sorted(c for _, c in seen), "created never goes down"
    assert [s for s, _ in seen] == sorted(s for s, _ in seen), "settled never goes down"
    assert any(0 < s < final[0] for s, _ in seen), f"no partial progress seen: {seen}"


async def test_progress__unknown_root__zero(embedded: Any) -> None:
    runtime = await embedded()
    assert await progress(runtime, "nothing-here") == (0, 0)


# --------------------------------------------------------------------------- ls


async def test_list_invocations__newest_first_roots_only_filters_and_limit(embedded: Any) -> None:
    runtime = await embedded()
    await invoke(runtime, pattern("factorial"), (4,))
    await asyncio.sleep(0.005)
    await invoke(runtime, pattern("enrich_batch"), ([1, 2],))
    await asyncio.sleep(0.005)
    await invoke(runtime, pattern("process_bounded"), ([3], 1))
    batch_id = pattern("enrich_batch").keyed_id(([1, 2],))
    bounded_id = pattern("process_bounded").keyed_id(([3], 1))

    everything = await list_invocations(runtime, pending_only=False, pattern=None, limit=20)
    only_batch = await list_invocations(
        runtime, pending_only=False, pattern="enrich_batch", limit=20
    )
    first = await list_invocations(runtime, pending_only=False, pattern=None, limit=1)
    pending = await list_invocations(runtime, pending_only=True, pattern=None, limit=20)

    # factorial-0..3 were published by the cache: stored, but not invocations.
    assert [e["id"] for e in everything] == [bounded_id, batch_id, "factorial-4"]
    row = _row(runtime, "factorial-4")
    assert everything[2] == {
        "id": "factorial-4",
        "state": "resolved",
        "pattern": "factorial",
        "args": "[4]",
        "created_at": row.created_at,
        "settled_at": row.settled_at,
        "duration_ms": row.settled_at - row.created_at,
    }
    assert [e["id"] for e in only_batch] == [batch_id]
    assert [e["id"] for e in first] == [bounded_id]
    assert pending == []


async def test_list_invocations__pending_only__the_running_call(embedded: Any) -> None:
    runtime = await embedded(RESONATE_PATTERNS_STEP_DELAY_MS="400")
    await invoke(runtime, pattern("factorial"), (2,))
    call = asyncio.create_task(invoke(runtime, pattern("enrich_batch"), ([7, 8],)))
    await asyncio.sleep(0.15)

    pending = await list_invocations(runtime, pending_only=True, pattern=None, limit=20)
    await call

    assert [(e["id"], e["state"], e["settled_at"], e["duration_ms"]) for e in pending] == [
        (pattern("enrich_batch").keyed_id(([7, 8],)), "pending", None, None)
    ]


# --------------------------------------------------------------------------- renderers


def test_children__pending_is_created_minus_settled() -> None:
    assert Children(7, 5).as_dict() == {"created": 7, "settled": 5, "pending": 2}


def test_root_of__lineage_ids() -> None:
    assert [root_of(i) for i in ("a", "a:1", "a:1.2.3")] == ["a", "a", "a"]


@pytest.mark.parametrize(
    ("state", "value", "expected"),
    [
        ("resolved", 5, None),
        ("pending", None, None),
        ("rejected", {"__type": "error", "message": "boom", "__py_pickle": "x"}, "boom"),
        ("rejected_timedout", None, "timed out before it settled"),
        ("rejected_canceled", None, "canceled"),
        ("rejected", None, "rejected"),
        ("rejected", [1, 2], "[1, 2]"),
    ],
)
def test_error_of__message_only_never_the_pickle(state: str, value: Any, expected: Any) -> None:
    assert error_of(state, value) == expected


@pytest.mark.parametrize(
    ("ms", "text"), [(0, "0 ms"), (12.4, "12 ms"), (2300, "2.3 s"), (245_000, "4m05s")]
)
def test_format_ms(ms: float, text: str) -> None:
    assert format_ms(ms) == text


def test_call_text__whole_and_cut_argument_lists() -> None:
    assert call_text("factorial", "[20]") == "factorial(20)"
    assert call_text("enrich_batch", "[[1, 2, 3…") == "enrich_batch([1, 2, 3…)"
    assert call_text(None, None) == "-"
    assert call_text("factorial", None) == "factorial"


def test_poll_interval__floor_or_nine_times_the_cost() -> None:
    assert poll_interval(0.01) == 0.5
    assert poll_interval(0.2) == pytest.approx(1.8)


def test_progress_text() -> None:
    assert progress_text("x-1", 3, 10, 1.25) == "x-1: 3/10 children settled · 1.2 s"


def test_summarize__list_counts_first_items_and_ok_flags() -> None:
    outcomes = [{"id": i, "ok": i % 3 != 0} for i in range(10)]
    assert summarize(list(range(5000))) == {"type": "list", "count": 5000, "first": [0, 1, 2]}
    assert summarize(outcomes) == {
        "type": "list",
        "count": 10,
        "first": outcomes[:3],
        "ok": 6,
        "failed": 4,
    }


def test_summarize__object_keys_summarized_one_level_down() -> None:
    crawl = {"url": "u", "depth": 2, "visited": 40, "pages": ["p"] * 40, "x": 1}
    assert summarize(crawl) == {
        "type": "object",
        "keys": 5,
        "first": {"url": "u", "depth": 2, "visited": 40, "pages": "list of 40 items"},
    }
    assert summarize(7) == {"type": "int", "value": 7}
    assert summarize("a" * 500)["length"] == 500


def test_summary_lines__small_value_whole_large_list_head_and_rest() -> None:
    assert summary_lines([1, 2, 3]) == ["[1, 2, 3]"]
    lines = summary_lines([{"id": i, "name": f"record-{i}"} for i in range(50)])
    assert lines == [
        "list of 50 items; first 3:",
        '  {"id": 0, "name": "record-0"}',
        '  {"id": 1, "name": "record-1"}',
        '  {"id": 2, "name": "record-2"}',
        "  ... 47 more",
    ]


def _description(**over: Any) -> dict[str, Any]:
    base = {
        "id": "enrich_batch-1",
        "root": "enrich_batch-1",
        "kind": "invocation",
        "state": "resolved",
        "pattern": "enrich_batch",
        "args": "[[1, 2]]",
        "value": [1, 2],
        "error": None,
        "created_at": 1_700_000_000_000,
        "settled_at": 1_700_000_002_500,
        "timeout_at": 1_700_086_400_000,
        "duration_ms": 2500,
        "children": {"created": 2, "settled": 2, "pending": 0},
    }
    return {**base, **over}


def test_describe_lines__resolved_and_pending() -> None:
    done = describe_lines(_description())
    running = describe_lines(
        _description(state="pending", value=None, settled_at=None, duration_ms=None),
        now_ms=1_700_000_004_000,
    )
    assert done[0] == "enrich_batch-1  resolved"
    assert "  pattern   enrich_batch([1, 2])" in done
    assert "  value     [1, 2]" in done
    assert done[-2].startswith("  settled   ")
    assert done[-2].endswith("(took 2.5 s)")
    assert done[-1] == "  children  2 created, 2 settled, 0 pending"
    assert "  running   for 4.0 s" in running
    assert not any(line.startswith("  value") for line in running)


def test_describe_lines__large_value_summarized_with_the_way_to_the_full_one() -> None:
    lines = describe_lines(_description(value=list(range(1000))))
    assert "  value     list of 1000 items; first 3:" in lines
    assert "            (full result: resonate-patterns get enrich_batch-1 --json)" in lines


def test_invocation_line__one_line_under_the_header() -> None:
    entry = {k: _description()[k] for k in ("id", "state", "pattern", "args", "created_at")}
    entry |= {"settled_at": 1_700_000_002_500, "duration_ms": 2500}
    line = invocation_line(entry)
    assert "\n" not in line
    assert line.split()[:2] == ["enrich_batch-1", "resolved"]
    assert line.endswith("2.5 s  enrich_batch([1, 2])")
    assert LS_HEADER.split() == ["ID", "STATE", "CREATED", "TOOK", "CALL"]
