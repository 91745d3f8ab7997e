"""Durable factorial whose ``factorial-{n}`` promises are a permanent cache.

The client invokes ``factorial(n)`` under the id ``factorial-{n}``; each
level recurses with ``ctx.rpc(FACTORIAL, n - 1)`` to the factorial target
group. Child ids are SDK lineage ids (``factorial-8:1.1``), so on their own
they would never answer a later ``factorial-5``. Two inline store operations
per level close that gap; neither is a durable child (no promise, no
execution, no fenced write of its own):

* the **lookup** reads promise ``factorial-{k-1}`` through the promises
  client before recursing; if it is resolved, its value replaces the
  recursive call (a cache hit), so ``factorial-{m}`` after ``factorial-{n}``
  (m > n) only executes the levels above n;
* the **publish** creates promise ``factorial-{k}`` (no target, so no task)
  and resolves it before the level returns, so any later ``factorial-{k}``
  invocation returns from the store without executing a body.

The lookup, made on the first run of every level, would cost one read per
level on the way down, and on a cold chain every one of them misses. So the
first level of a call to run in a process finds the **cache floor** once:
the largest ``j < k`` whose ``factorial-{j}`` is resolved, by reading
``factorial-{k-1}`` and then bisecting ``[0, k-2]`` (at most
``1 + ceil(log2 k)`` reads; 9 for a 200-level chain). The bisection relies on
the cache being downward closed: a chain publishes bottom-up from the value it
found (or from 0), so every ``factorial-{j}`` below a resolved one is resolved
too. The floor is kept per root in
:class:`~service.patterns.deps.FloorMemo` (per runtime, bounded),
and every later level of that root in this process whose ``k - 1`` is above
the floor knows its lookup misses without a read; the level right above the
floor reads it as before (the hit). The floor is only a hint: a level that
reads and misses recurses as before, a stale floor (another run filled the
cache meanwhile) costs levels computed again with the same values, and a
level on another worker process without the memo finds its own floor. The
argument list stays ``(n,)``, so ids, logs and the client are unchanged.

A level therefore costs the plain recursive rpc (acquire, fenced create of
the child, suspend; then acquire and fulfill for the resume) plus one read on
the resume (the value its child published) and one create and one settle:
8 requests and 2 executions (9 before the floor, 13 when the lookup and the
publish were ``ctx.run`` leaf steps with 2 extra promises per level;
``bench/factorial_level.py`` measures them).

Replays. Orchestrators replay from the top: the rpc level runs once to
dispatch its child and suspend, and again when the child settles (or on a
redirect, or a re-delivery after a lost lease). The inline lookup is not
recorded, so a replay reads the store again and may get a different answer
than the first run (the child, or another run, filled the cache meanwhile;
on the usual resume it hits, because a child publishes before it fulfills).
That is safe under resonate-sdk 0.8.1's replay model (``resonate/context.py``,
``effects.py``): a replay recognises a durable call only by its position —
the n-th durable op of a body gets child id ``{id}:{n}`` — and answers it from
the stored promise of that id, never comparing function or arguments (the
create is idempotent, arguments are ignored once the id exists). The hazard
is a run whose branch puts a *different* call at a position an earlier run
used. Here a level makes at most one durable call, always the same one at
position 1 (``rpc(factorial, k-1)``), so every run's sequence is either that
call or nothing: a replay that hits skips it and returns ``k * (k-1)!``, the
same value the child yields, because the cache only ever holds the one
correct value of each key. The child it skips is already settled (resume,
redirect) or settles on its own (re-delivery) and is awaited by nobody; the
SDK builds its execution tree afresh per attempt, and the server drops a task's
callbacks when it is fulfilled. A run that hits makes no durable op at all,
which the SDK treats as a pure leaf: nothing in its replay can diverge.

Failures. A lookup or publish that fails in the store or the connector
(any ``ResonateError`` but the lookup's 404) raises the SDK's
``PlatformError``: the SDK does not reject on it (it is not an
``Exception``), releases the task, and the server delivers the level again,
which looks up again. ``factorial-k`` is never rejected because the cache
was unreachable. Only an input that fails :func:`check_factorial` rejects,
before any store operation.

Counting. A lookup is counted (``promise_cache_*_total{kind="lookup",
function="factorial"}``, a hit when it found the value; a level above the
floor counts the miss the floor told it) by the first run of its level's call
only: the run under the task's first lease (version 1),
once per call in that process (see
:meth:`~service.telemetry.instrument.Telemetry.lookup_done`). Replays read
the store again but count nothing, as before. Publishes are not durable calls
and are not counted. ``RESONATE_PATTERNS_STEP_DELAY_MS`` (simulated step
latency) is paid by that same first lookup, once per level call, as it was by
the lookup leaf.

n is at most ``RESONATE_PATTERNS_MAX_N``, itself at most
:data:`~service.patterns.validation.MAX_FACTORIAL_N` (1558): the largest n
whose value crosses a JSON codec and whose child ids fit the server's limit.
Anything above is rejected before any durable operation.

Both store operations are idempotent and safe under concurrent overlapping
runs: every writer publishes the same value, a second resolve is a no-op, and
a promise that belongs to a running top-level task (it carries
``resonate:target``) is never settled from outside; that task settles it
itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resonate.error import PlatformError, ResonateError, ServerError

from service.connector.sdk import Value, task_version
from service.patterns.deps import PatternDeps
from service.patterns.validation import MAX_FACTORIAL_N, require_int
from service.telemetry.instrument import Telemetry, instrumented

if TYPE_CHECKING:
    from resonate.context import Context

    from service.config import Settings

#: Registered name of :func:`factorial` (the rpc target of every level, the
#: function label of its metrics and the prefix of its keyed ids).
FACTORIAL = "factorial"
#: Tag marking a promise published by the factorial cache.
CACHE_TAG = "resonate-patterns:cache"
#: Cache entries never time out (the server needs some deadline: far future).
CACHE_TIMEOUT_AT = (1 << 62) - 1
#: The status of a read of a promise that does not exist.
_NOT_FOUND = 404


def factorial_id(n: int) -> str:
    """The keyed promise id of ``factorial(n)``."""
    return f"{FACTORIAL}-{n}"


def check_factorial(settings: Settings, n: object) -> int:
    """``n`` if ``factorial`` accepts it: an integer in ``[0, max_n]`` (else InputError).

    The one check of factorial's input: the client runs it before anything is
    stored, the durable function before any durable step.
    """
    # Settings validate max_n against MAX_FACTORIAL_N; min() also covers
    # settings built in code, so no n whose value cannot be stored ever recurses.
    return require_int(FACTORIAL, "n", n, 0, min(settings.max_n, MAX_FACTORIAL_N))


def _release(exc: ResonateError) -> PlatformError:
    """The error that makes the SDK release the task for re-delivery instead of rejecting."""
    return PlatformError([exc])


async def lookup_cached(deps: PatternDeps, k: int) -> int | None:
    """The cached value of ``factorial(k)``, or None if ``factorial-{k}`` is not resolved.

    Raises ``PlatformError`` (the task is released and re-delivered) when the
    store cannot be read.
    """
    try:
        record = await deps.promises.get(factorial_id(k))
    except ServerError as exc:
        if exc.code == _NOT_FOUND:
            return None
        raise _release(exc) from exc
    except ResonateError as exc:
        raise _release(exc) from exc
    value = record.value.data
    return value if record.state == "resolved" and isinstance(value, int) else None


async def find_floor(deps: PatternDeps, top: int) -> tuple[int, int | None]:
    """The largest ``j <= top`` whose ``factorial-{j}`` is resolved (-1: none), with its value.

    Reads ``factorial-{top}`` first (a call one above a cached value finds it
    in one read), then bisects ``[0, top - 1]``, taking the resolved set to
    be downward closed (see the module docstring). Raises ``PlatformError``
    like :func:`lookup_cached`.
    """
    value = await lookup_cached(deps, top)
    if value is not None:
        return top, value
    low, low_value, high = -1, None, top  # low is cached (or -1), high is not
    while high - low > 1:
        mid = (low + high) // 2
        found = await lookup_cached(deps, mid)
        if found is None:
            high = mid
        else:
            low, low_value = mid, found
    return low, low_value


async def publish(deps: PatternDeps, k: int, value: int) -> bool:
    """Store ``value`` as promise ``factorial-{k}``; True if this call resolved it.

    Leaves a settled promise, or one with a task (a top-level invocation in
    flight, which settles itself), alone. Raises ``PlatformError`` (the task is
    released and re-delivered) when the store cannot be written.
    """
    promise_id = factorial_id(k)
    try:
        record = await deps.promises.create(
            promise_id, CACHE_TIMEOUT_AT, Value(data=None), {CACHE_TAG: FACTORIAL}
        )
        if record.state != "pending" or "resonate:target" in record.tags:
            return False
        await deps.promises.resolve(promise_id, Value(data=value))
    except ResonateError as exc:
        raise _release(exc) from exc
    return True


async def _first_lookup(deps: PatternDeps, root: str, k: int) -> int | None:
    """The cached value of ``factorial(k - 1)`` for a level's first run, through the floor."""
    floor = deps.floors.floor(root)
    if floor is None:
        floor, value = await find_floor(deps, k - 1)
        deps.floors.remember(root, floor)
        return value if floor == k - 1 else None
    if floor < k - 1:
        return None  # above the floor: the search already read a miss here
    return await lookup_cached(deps, k - 1)


@instrumented(FACTORIAL)
async def factorial(ctx: Context, n: object) -> int:
    """``n!``, recursing through the factorial target group and the keyed cache."""
    deps = ctx.get_dependency(PatternDeps)
    settings = deps.settings
    k = check_factorial(settings, n)
    if k == 0:
        value = 1
    else:
        telemetry = ctx.get_dependency(Telemetry)
        first = task_version(ctx) == 1 and not telemetry.lookup_counted(ctx.info.id)
        if first:
            # The configured step latency, once per level call, as the lookup
            # step had it when it was a durable leaf (its replays cost nothing).
            await deps.simulated_io()
            cached = await _first_lookup(deps, ctx.info.origin_id, k)
            telemetry.lookup_done(FACTORIAL, ctx.info.id, hit=cached is not None)
        else:
            cached = await lookup_cached(deps, k - 1)
        if cached is None:
            sub = await ctx.options(target=settings.factorial_group).rpc(FACTORIAL, k - 1)
        else:
            sub = cached
        value = k * int(sub)
    if ctx.info.id != factorial_id(k):
        await publish(deps, k, value)
    return value
