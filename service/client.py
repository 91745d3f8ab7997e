"""Invoke a pattern by name under its keyed id and report what happened.

:func:`invoke` is :func:`prepare_call` then :func:`submit`. The first
validates the arguments with the durable function's own check (so a typo
never becomes a stored rejection under a keyed id) and derives the promise
id; the second creates the invocation's promise for the worker group (the
same ``promise.create`` the SDK's top-level ``rpc`` sends: param, lineage
tags and target), waits for the result, and reports whether it came from an
already-settled promise. Edges that must refuse bad input before anything
else (the CLI before it opens a store, the HTTP API before it answers 503)
call the two halves themselves, so input is checked once per call here.

"Cached" is read from the server's reply to that create: the record it
returns was already settled, so no body runs for this call. The SDK's own
``rpc`` discards that reply (and its observer sees only creates made inside
an execution), which is why the client sends the create itself and then
waits through the SDK's handle (``Resonate.get``). The same fact is counted
as the invocation's hit or miss in this process's metrics: in a worker that
serves the HTTP API, that is the long-lived process Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resonate.error import InvalidIdError, ServerError

from service.connector.envelopes import SETTLED_STATES
from service.connector.sdk import TaskData, Value, anycast_address, now_ms, validate_root_id
from service.errors import (
    AuthRefusedError,
    CallRefusedError,
    ResonatePatternsError,
    ServerFailedError,
    ServerUnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    from resonate.promises import Promises

    from service.config import Settings
    from service.patterns.registry import Pattern
    from service.runtime import Runtime

#: Deadline of an invocation's promise: the SDK's default for a top-level call
#: (``resonate.resonate.DEFAULT_TOP_LEVEL_TIMEOUT``, one day).
ROOT_TIMEOUT_MS = 24 * 60 * 60 * 1000
#: Least time the server gets to confirm an invocation's create, whatever the wait.
CREATE_TIMEOUT_SECONDS = 10.0


class RejectedError(ResonatePatternsError):
    """The invocation's promise was rejected (the function failed or timed out)."""

    def __init__(self, promise_id: str, reason: str) -> None:
        self.promise_id = promise_id
        self.reason = reason
        super().__init__(f"{promise_id} was rejected: {reason}")


class WaitTimeoutError(ResonatePatternsError):
    """The result did not arrive in time; the promise is still there."""

    def __init__(self, promise_id: str, seconds: float) -> None:
        self.promise_id = promise_id
        super().__init__(
            f"no result for {promise_id} after {seconds:g}s; it keeps running, "
            "call again with the same arguments to pick the result up"
        )


@dataclass(frozen=True)
class CallResult:
    """What ``call --json`` prints."""

    id: str
    pattern: str
    result: Any
    cached: bool
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pattern": self.pattern,
            "result": self.result,
            "cached": self.cached,
            "elapsed_ms": self.elapsed_ms,
        }


def prepare_call(
    pattern: Pattern, settings: Settings, args: tuple[Any, ...], explicit: str | None = None
) -> str:
    """Check ``args`` as the durable function will (InputError); the id to invoke under."""
    pattern.validate(settings, args)
    return promise_id_for(pattern, args, explicit)


def promise_id_for(pattern: Pattern, args: tuple[Any, ...], explicit: str | None) -> str:
    """The id to invoke under: ``explicit`` if given (validated), else the keyed id."""
    promise_id = explicit if explicit is not None else pattern.keyed_id(args)
    try:
        return validate_root_id(promise_id)
    except InvalidIdError as exc:
        raise UsageError(f"invalid --id {promise_id!r}: {exc}") from None


def root_tags(promise_id: str, group: str) -> dict[str, str]:
    """The tags of a top-level call: its own lineage origin, routed to ``group``.

    The same tags the SDK's top-level ``rpc`` stamps, so a worker executes
    the promise exactly as if the SDK had created it.
    """
    return {
        "resonate:origin": promise_id,
        "resonate:branch": promise_id,
        "resonate:parent": promise_id,
        "resonate:scope": "global",
        "resonate:target": anycast_address(group),
    }


async def create_root(
    promises: Promises, promise_id: str, function: str, args: tuple[Any, ...], group: str
) -> tuple[str, Any]:
    """Create (or find) the invocation's promise; return its state and, if resolved, value.

    Idempotent: a promise that exists comes back as it is, whatever the
    arguments (the server keys by id), and a pending one is not created again.
    """
    record = await promises.create(
        promise_id,
        now_ms() + ROOT_TIMEOUT_MS,
        Value(data=TaskData(func=function, args=args)),
        root_tags(promise_id, group),
    )
    return record.state, record.value.data


async def invoke(
    runtime: Runtime,
    pattern: Pattern,
    args: tuple[Any, ...],
    *,
    promise_id: str | None = None,
    wait_seconds: float | None = None,
) -> CallResult:
    """Run ``pattern(*args)`` under ``promise_id`` (default: its keyed id); wait for the result.

    Raises InputError, before anything is stored, for arguments the pattern rejects.
    """
    root_id = prepare_call(pattern, runtime.settings, args, promise_id)
    return await submit(runtime, pattern, args, root_id, wait_seconds=wait_seconds)


async def submit(
    runtime: Runtime,
    pattern: Pattern,
    args: tuple[Any, ...],
    promise_id: str,
    *,
    wait_seconds: float | None = None,
) -> CallResult:
    """Run ``pattern(*args)``, already accepted by :func:`prepare_call`, under ``promise_id``.

    Counts the invocation in ``runtime``'s metrics once the server has
    answered the create: a hit when the promise was already settled, else a
    miss (created now, or pending and still executing).
    """
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    deadline = None if wait_seconds is None else loop.time() + wait_seconds
    await runtime.opened()
    # The create gets at least CREATE_TIMEOUT_SECONDS even when the caller's wait
    # is shorter: a wait that ends before the server has the promise would
    # report a call as running that may never have been stored.
    create_within = None if wait_seconds is None else max(wait_seconds, CREATE_TIMEOUT_SECONDS)
    try:
        async with asyncio.timeout(create_within):
            state, value = await create_root(
                runtime.resonate.promises, promise_id, pattern.name, args, runtime.settings.group
            )
    except TimeoutError:
        raise ServerUnavailableError(promise_id, create_within or 0) from None
    except ServerError as exc:
        if exc.code in (401, 403):
            raise AuthRefusedError(exc.code, exc.message, promise_id) from None
        if 400 <= exc.code < 500:
            raise CallRefusedError(promise_id, exc.code, exc.message) from None
        raise ServerFailedError(promise_id, exc.code, exc.message) from None
    cached = state in SETTLED_STATES
    runtime.telemetry.metrics.cache_result(pattern.name, "invocation", hit=cached)
    if state != "resolved":
        try:
            async with asyncio.timeout_at(deadline):
                value = await _result(runtime, promise_id)
        except TimeoutError:
            raise WaitTimeoutError(promise_id, wait_seconds or 0) from None
        except ServerError as exc:
            if exc.code in (401, 403):
                raise AuthRefusedError(exc.code, exc.message, promise_id) from None
            raise RejectedError(promise_id, str(exc)) from exc
        except Exception as exc:
            raise RejectedError(promise_id, str(exc) or type(exc).__name__) from exc
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return CallResult(promise_id, pattern.name, value, cached, elapsed_ms)


#: Pause before waiting again on a promise whose wait failed while it is still pending.
REWAIT_PAUSE_SECONDS = 0.5


async def _result(runtime: Runtime, promise_id: str) -> Any:
    """Wait for promise ``promise_id`` to settle; its value, or the error it was rejected with.

    A failed wait is reported only once the store agrees: the SDK settles a
    handle with a made-up rejection when one listener registration is
    answered 404 (``Awaited promise not found``), which a server restarting
    or catching up after an outage can answer for a moment. So after any
    failure the promise is read: still pending means the call goes on, and
    the wait starts again; settled (or really gone) means the failure stands.
    """
    while True:
        handle = await runtime.resonate.get(promise_id)
        try:
            return await handle.result()
        except Exception:
            try:
                record = await runtime.resonate.promises.get(promise_id)
            except ServerError as exc:
                if exc.code >= 500:  # not an answer about the promise: wait again
                    await asyncio.sleep(REWAIT_PAUSE_SECONDS)
                    continue
                raise
            if record.state != "pending":
                raise
        await asyncio.sleep(REWAIT_PAUSE_SECONDS)
