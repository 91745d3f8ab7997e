"""Durable factorial whose ``factorial-{n}`` promises are a permanent cache.

The client invokes ``factorial(n)`` under the id ``factorial-{n}``; each
level recurses with ``ctx.rpc(FACTORIAL, n - 1)`` to the factorial target
group. Child ids are SDK lineage ids (``factorial-8:2.2``), so on their own
they would never answer a later ``factorial-5``. Two durable leaf steps per
level close that gap:

* ``factorial_lookup(k)`` reads promise ``factorial-{k}`` through the
  promises client; if it is resolved, its value replaces the recursive call
  (a cache hit), so ``factorial-{m}`` after ``factorial-{n}`` (m > n) only
  executes the levels above n. The instrumentation counts its first run as
  one ``lookup`` of ``factorial``: a hit when it returns a value;
* ``factorial_publish(k, value)`` creates promise ``factorial-{k}`` (no
  target, so no task) and resolves it, so any later ``factorial-{k}``
  invocation returns from the store without executing a body.

n is at most ``RESONATE_PATTERNS_MAX_N``, itself at most
:data:`~service.patterns.validation.MAX_FACTORIAL_N` (1558): the largest n
whose value crosses a JSON codec and whose child ids fit the server's limit.
Anything above is rejected before any durable operation.

Both are idempotent and safe under concurrent overlapping runs: every writer
publishes the same value, a second resolve is a no-op, and a promise that
belongs to a running top-level task (it carries ``resonate:target``) is
never settled from outside; that task settles it itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resonate.error import ServerError
from resonate.retry import Exponential

from service.connector.sdk import Value
from service.patterns.deps import PatternDeps
from service.patterns.steps import spawn_local
from service.patterns.validation import MAX_FACTORIAL_N, require_int
from service.telemetry.instrument import instrumented

if TYPE_CHECKING:
    from resonate.context import Context

    from service.config import Settings

#: Registered name of :func:`factorial` (the rpc target of every level, the
#: function label of its metrics and the prefix of its keyed ids).
FACTORIAL = "factorial"
#: Name of the :func:`factorial_lookup` leaf step (a metrics label).
FACTORIAL_LOOKUP = "factorial_lookup"
#: Name of the :func:`factorial_publish` leaf step (a metrics label).
FACTORIAL_PUBLISH = "factorial_publish"
#: Tag marking a promise published by the factorial cache.
CACHE_TAG = "resonate-patterns:cache"
#: Cache entries never time out (the server needs some deadline: far future).
CACHE_TIMEOUT_AT = (1 << 62) - 1
#: Lookups and publishes only fail on transient server errors: retry a few times.
STORE_RETRY = Exponential(delay=1, max_retries=4, factor=2, max_delay=8)


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


@instrumented(FACTORIAL_LOOKUP, cache_lookup=FACTORIAL)
async def factorial_lookup(ctx: Context, k: int) -> int | None:
    """Return the cached value of ``factorial(k)``, or None if not resolved yet."""
    deps = ctx.get_dependency(PatternDeps)
    await deps.simulated_io()
    try:
        record = await deps.promises.get(factorial_id(k))
    except ServerError as exc:
        if exc.code != 404:
            raise
        return None
    value = record.value.data
    return value if record.state == "resolved" and isinstance(value, int) else None


@instrumented(FACTORIAL_PUBLISH)
async def factorial_publish(ctx: Context, k: int, value: int) -> bool:
    """Store ``value`` as promise ``factorial-{k}``; return True if this call resolved it."""
    deps = ctx.get_dependency(PatternDeps)
    promise_id = factorial_id(k)
    record = await deps.promises.create(
        promise_id, CACHE_TIMEOUT_AT, Value(data=None), {CACHE_TAG: FACTORIAL}
    )
    if record.state != "pending" or "resonate:target" in record.tags:
        return False
    await deps.promises.resolve(promise_id, Value(data=value))
    return True


@instrumented(FACTORIAL)
async def factorial(ctx: Context, n: object) -> int:
    """``n!``, recursing through the factorial target group and the keyed cache."""
    deps = ctx.get_dependency(PatternDeps)
    settings = deps.settings
    k = check_factorial(settings, n)
    if k == 0:
        value = 1
    else:
        cached = await spawn_local(ctx, factorial_lookup, k - 1, retry_policy=STORE_RETRY)
        if cached is None:
            sub = await ctx.options(target=settings.factorial_group).rpc(FACTORIAL, k - 1)
        else:
            sub = cached
        value = k * int(sub)
    if ctx.info.id != factorial_id(k):
        await spawn_local(ctx, factorial_publish, k, value, retry_policy=STORE_RETRY)
    return value
