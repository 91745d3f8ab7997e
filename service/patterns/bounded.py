"""Bounded fan-out: at most ``k`` children in flight, in chunks of ``k``.

``process_bounded(items, k)`` starts ``process_one`` for the first ``k``
items, awaits all of them, then starts the next ``k``. A chunk is spawned
only after the previous one settled, so no more than ``k`` children ever run
at once, on first execution and on replay alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resonate.retry import Never

from service.patterns.deps import PatternDeps
from service.patterns.steps import spawn_local
from service.patterns.validation import ITEM_MAX, ITEM_MIN, require_int, require_items
from service.telemetry.instrument import Telemetry, instrumented

if TYPE_CHECKING:
    from resonate.context import Context


def process_value(item: int) -> int:
    """The result of processing one item (pure): its square."""
    return item * item


@instrumented("process_one")
async def process_one(ctx: Context, item: object) -> int:
    """Process one integer item."""
    deps = ctx.get_dependency(PatternDeps)
    value = require_int("process_one", "item", item, ITEM_MIN, ITEM_MAX)
    await deps.simulated_io()
    return process_value(value)


@instrumented("process_bounded")
async def process_bounded(ctx: Context, items: object, k: object) -> list[int]:
    """Process every item with at most ``k`` process_one children in flight."""
    deps = ctx.get_dependency(PatternDeps)
    batch = require_items("process_bounded", items, deps.settings.max_fanout)
    width = require_int("process_bounded", "k", k, 1, deps.settings.max_fanout)
    ctx.get_dependency(Telemetry).metrics.fanout("process_bounded", len(batch))
    results: list[int] = []
    for start in range(0, len(batch), width):
        chunk = [
            spawn_local(ctx, process_one, item, retry_policy=Never())
            for item in batch[start : start + width]
        ]
        results.extend([await child for child in chunk])
    return results
