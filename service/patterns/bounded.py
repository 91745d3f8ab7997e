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

    from service.config import Settings

#: Registered name of :func:`process_bounded`.
PROCESS_BOUNDED = "process_bounded"
#: Registered name of :func:`process_one`, the leaf.
PROCESS_ONE = "process_one"


def process_value(item: int) -> int:
    """The result of processing one item (pure): its square."""
    return item * item


def check_process_one(_settings: Settings, item: object) -> int:
    """``item`` if ``process_one`` accepts it: a 64-bit integer (else InputError)."""
    return require_int(PROCESS_ONE, "item", item, ITEM_MIN, ITEM_MAX)


def check_process_bounded(settings: Settings, items: object, k: object) -> tuple[list[int], int]:
    """``(items, k)`` if ``process_bounded`` accepts them (else InputError).

    ``items``: a non-empty list of 64-bit integers, at most the fan-out limit;
    ``k``: an integer in ``[1, fan-out limit]``.
    """
    batch = require_items(PROCESS_BOUNDED, items, settings.max_fanout)
    return batch, require_int(PROCESS_BOUNDED, "k", k, 1, settings.max_fanout)


@instrumented(PROCESS_ONE)
async def process_one(ctx: Context, item: object) -> int:
    """Process one integer item."""
    deps = ctx.get_dependency(PatternDeps)
    value = check_process_one(deps.settings, item)
    await deps.simulated_io()
    return process_value(value)


@instrumented(PROCESS_BOUNDED)
async def process_bounded(ctx: Context, items: object, k: object) -> list[int]:
    """Process every item with at most ``k`` process_one children in flight."""
    deps = ctx.get_dependency(PatternDeps)
    batch, width = check_process_bounded(deps.settings, items, k)
    ctx.get_dependency(Telemetry).metrics.fanout(PROCESS_BOUNDED, len(batch))
    results: list[int] = []
    for start in range(0, len(batch), width):
        chunk = [
            spawn_local(ctx, process_one, item, retry_policy=Never())
            for item in batch[start : start + width]
        ]
        results.extend([await child for child in chunk])
    return results
