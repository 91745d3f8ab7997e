"""Fan-out enrichment: sequential-await, rpc-parallel and error-tolerant forms.

``enrich_one(id)`` is the leaf: it looks a record up in a deterministic
synthetic record store. Ids that name no record (negative integers, strings
starting with ``missing``) fail with :class:`~service.errors.EnrichmentError`,
which is what ``enrich_tolerant`` collects per child. All three fan-outs
spawn every child first and then await them in input order, so results are
in input order whatever order the children finish in.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from resonate.retry import Never

from service.errors import EnrichmentError
from service.patterns.deps import PatternDeps
from service.patterns.steps import spawn_local
from service.patterns.validation import require_record_id, require_record_ids
from service.telemetry.instrument import Telemetry, instrumented

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate.context import Context, ResonateFuture

    from service.config import Settings

#: Registered name of :func:`enrich_batch`.
ENRICH_BATCH = "enrich_batch"
#: Registered name of :func:`parallel_enrich`.
PARALLEL_ENRICH = "parallel_enrich"
#: Registered name of :func:`enrich_tolerant`.
ENRICH_TOLERANT = "enrich_tolerant"
#: Registered name of :func:`enrich_one`, the leaf (also the rpc target of parallel_enrich).
ENRICH_ONE = "enrich_one"

#: Enrichment is deterministic: a failure is permanent, never retried.
NO_RETRY = Never()


def record_exists(record_id: int | str) -> bool:
    """Whether the synthetic record store has a record under ``record_id``."""
    if isinstance(record_id, int):
        return record_id >= 0
    return not record_id.startswith("missing")


def enrich_record(record_id: int | str) -> dict[str, Any]:
    """The enriched form of one existing record (pure, deterministic)."""
    digest = hashlib.sha256(f"record:{record_id}".encode()).digest()
    return {
        "id": record_id,
        "name": f"record-{record_id}",
        "score": digest[0] % 100,
        "tier": ("bronze", "silver", "gold")[digest[1] % 3],
    }


def check_enrich_one(_settings: Settings, record_id: object) -> int | str:
    """``record_id`` if ``enrich_one`` accepts it: an integer or a short string."""
    return require_record_id(ENRICH_ONE, record_id)


def check_ids(function: str) -> Callable[[Settings, object], list[int | str]]:
    """The input check of fan-out ``function``: a non-empty list of at most max_fanout ids."""

    def check(settings: Settings, ids: object) -> list[int | str]:
        return require_record_ids(function, ids, settings.max_fanout)

    return check


check_enrich_batch = check_ids(ENRICH_BATCH)
check_parallel_enrich = check_ids(PARALLEL_ENRICH)
check_enrich_tolerant = check_ids(ENRICH_TOLERANT)


@instrumented(ENRICH_ONE)
async def enrich_one(ctx: Context, record_id: object) -> dict[str, Any]:
    """Enrich one record; raises EnrichmentError if it does not exist."""
    deps = ctx.get_dependency(PatternDeps)
    rid = check_enrich_one(deps.settings, record_id)
    await deps.simulated_io()
    if not record_exists(rid):
        raise EnrichmentError(rid, "no such record")
    return enrich_record(rid)


def _spawn_enrich(
    ctx: Context,
    function: str,
    check: Callable[[Settings, object], list[int | str]],
    ids: object,
) -> tuple[list[int | str], list[ResonateFuture[Any]]]:
    """Validate ``ids`` with ``check`` and start one local ``enrich_one`` child per id, in order."""
    deps = ctx.get_dependency(PatternDeps)
    batch = check(deps.settings, ids)
    children = [spawn_local(ctx, enrich_one, rid, retry_policy=NO_RETRY) for rid in batch]
    ctx.get_dependency(Telemetry).metrics.fanout(function, len(children))
    return batch, children


@instrumented(ENRICH_BATCH)
async def enrich_batch(ctx: Context, ids: object) -> list[dict[str, Any]]:
    """Enrich every id with one local child each; fails on the first failed child."""
    _, children = _spawn_enrich(ctx, ENRICH_BATCH, check_enrich_batch, ids)
    return [await child for child in children]


@instrumented(PARALLEL_ENRICH)
async def parallel_enrich(ctx: Context, ids: object) -> list[dict[str, Any]]:
    """Enrich every id with an rpc to the enrichment target group."""
    deps = ctx.get_dependency(PatternDeps)
    batch = check_parallel_enrich(deps.settings, ids)
    remote = ctx.options(target=deps.settings.enrich_group)
    futures = [remote.rpc(ENRICH_ONE, rid) for rid in batch]
    ctx.get_dependency(Telemetry).metrics.fanout(PARALLEL_ENRICH, len(futures))
    results: list[dict[str, Any]] = []
    for future in futures:
        results.append(await future)
    return results


@instrumented(ENRICH_TOLERANT)
async def enrich_tolerant(ctx: Context, ids: object) -> list[dict[str, Any]]:
    """Enrich every id, returning per-child success or error message in input order."""
    batch, children = _spawn_enrich(ctx, ENRICH_TOLERANT, check_enrich_tolerant, ids)
    outcomes: list[dict[str, Any]] = []
    for rid, child in zip(batch, children, strict=True):
        try:
            outcomes.append({"id": rid, "ok": True, "value": await child})
        except Exception as exc:
            outcomes.append({"id": rid, "ok": False, "error": str(exc)})
    return outcomes
