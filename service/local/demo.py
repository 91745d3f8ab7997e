"""A short tour of every pattern: what the README's first command runs.

It computes ``factorial(20)``, asks for ``factorial(20)`` and ``factorial(12)``
again (both answered from the store: the cache), runs a tolerant fan-out with
one missing record, a bounded fan-out and a crawl of the synthetic graph,
and prints each result with whether it was cached and how long it took.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

from service.client import CallResult, invoke
from service.local.supervisor import Stack, plan_stack
from service.patterns.bounded import PROCESS_BOUNDED
from service.patterns.crawl import CRAWL
from service.patterns.enrich import ENRICH_TOLERANT
from service.patterns.factorial import FACTORIAL
from service.patterns.links import SyntheticGraph
from service.patterns.registry import pattern
from service.runtime import build_runtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.config import Settings

#: Worker processes the demo's local stack runs.
DEMO_WORKERS = 3

#: The tour: (pattern, arguments). Chosen to show computed vs cached results.
STEPS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (FACTORIAL, (20,)),
    (FACTORIAL, (20,)),
    (FACTORIAL, (12,)),
    (ENRICH_TOLERANT, ([1, 2, "missing-3", 4],)),
    (PROCESS_BOUNDED, ([1, 2, 3, 4, 5, 6, 7, 8], 3)),
    (CRAWL, ({"url": SyntheticGraph.url(0), "depth": 2},)),
)


def describe(result: CallResult) -> str:
    """One line per step: id, a short form of the result, cached or computed, time."""
    value = result.result
    if result.pattern == CRAWL:
        short = f"{value['visited']} pages visited down to depth {value['depth']}"
    elif result.pattern == ENRICH_TOLERANT:
        ok = sum(1 for r in value if r["ok"])
        errors = "; ".join(r["error"] for r in value if not r["ok"])
        short = f"{ok} enriched, {len(value) - ok} failed ({errors})"
    else:
        short = str(value)
    how = "cached  " if result.cached else "computed"
    return f"{how} {result.elapsed_ms:8.1f} ms  {result.pattern:<16} {short}"


async def run_steps(settings: Settings, out: Callable[[str], None]) -> None:
    """Invoke every step against ``settings`` (a server URL, or embedded)."""
    runtime = build_runtime(settings, role="client")
    runtime.start()
    try:
        for name, args in STEPS:
            result = await invoke(runtime, pattern(name), args)
            out(describe(result))
    finally:
        await runtime.stop()


async def run_demo(settings: Settings, out: Callable[[str], None]) -> int:
    """Run :data:`STEPS` on a fresh local stack, or on RESONATE_URL if it is set.

    With no server configured, the demo starts the local stack (a server with
    a throwaway store and three worker processes), so the first line always
    shows a computed factorial and the next two the cache.
    """
    if settings.resonate_url is not None:
        out(f"resonate-patterns demo: group {settings.group!r} on {settings.resonate_url}")
        await run_steps(settings, out)
        return 0
    with tempfile.TemporaryDirectory(prefix="resonate-patterns-demo-") as tmp:
        demo_settings = settings.replace(data_dir=tmp)
        plan = plan_stack(demo_settings, workers=DEMO_WORKERS, port=0, data=None, group=None)
        stack = Stack(plan, out=out)
        out(
            f"starting the local stack: 1 server and {DEMO_WORKERS} workers in group {plan.group!r}"
        )
        try:
            await stack.start()
        except BaseException:
            await stack.stop_quietly()
            raise
        for line in stack.describe()[:-1]:
            out(line)
        out("")
        try:
            await run_steps(settings.replace(resonate_url=stack.plan.url), out)
        finally:
            out("")
            await stack.stop()
    return 0
