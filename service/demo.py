"""A short tour of every pattern: what the README's first command runs.

It computes ``factorial(20)``, asks for ``factorial(20)`` and ``factorial(12)``
again (both answered from the store: the cache), runs a tolerant fan-out with
one missing record, a bounded fan-out and a crawl of the synthetic graph,
and prints each result with whether it was cached and how long it took.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.client import CallResult, invoke
from service.patterns.links import SyntheticGraph
from service.patterns.registry import pattern
from service.runtime import build_runtime

if TYPE_CHECKING:
    from service.config import Settings

#: The tour: (pattern, arguments). Chosen to show computed vs cached results.
STEPS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("factorial", (20,)),
    ("factorial", (20,)),
    ("factorial", (12,)),
    ("enrich_tolerant", ([1, 2, "missing-3", 4],)),
    ("process_bounded", ([1, 2, 3, 4, 5, 6, 7, 8], 3)),
    ("crawl", ({"url": SyntheticGraph.url(0), "depth": 2},)),
)


def describe(result: CallResult) -> str:
    """One line per step: id, a short form of the result, cached or computed, time."""
    value = result.result
    if result.pattern == "crawl":
        short = f"{value['visited']} pages visited down to depth {value['depth']}"
    elif result.pattern == "enrich_tolerant":
        ok = sum(1 for r in value if r["ok"])
        errors = "; ".join(r["error"] for r in value if not r["ok"])
        short = f"{ok} enriched, {len(value) - ok} failed ({errors})"
    else:
        short = str(value)
    how = "cached  " if result.cached else "computed"
    return f"{how} {result.elapsed_ms:8.1f} ms  {result.pattern:<16} {short}"


async def run_demo(settings: Settings, out: Callable[[str], None]) -> int:
    """Run :data:`STEPS` against the configured server (embedded by default)."""
    where = settings.resonate_url or "embedded in-process server"
    out(f"resonate-patterns demo: group {settings.group!r} on {where}")
    runtime = build_runtime(settings, role="client")
    runtime.start()
    try:
        for name, args in STEPS:
            result = await invoke(runtime, pattern(name), args)
            out(describe(result))
    finally:
        await runtime.stop()
    return 0
