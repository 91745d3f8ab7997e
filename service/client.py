"""Invoke a pattern by name under its keyed id and report what happened.

:func:`invoke` validates the arguments exactly as the durable function will
(so a typo never becomes a stored rejection under a keyed id), dispatches
the invocation to the worker group (or runs it in-process when embedded),
waits for the result, and reports whether it came from an already-resolved
promise. "Cached" is read from the server's own reply to the create: the
first record it returns for the id was already settled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resonate.error import InvalidIdError, ServerError

from service.connector.envelopes import SETTLED_STATES
from service.connector.sdk import validate_root_id
from service.errors import AuthRefusedError, ResonatePatternsError, UsageError

if TYPE_CHECKING:
    from service.patterns.registry import Pattern
    from service.runtime import Runtime


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


def promise_id_for(pattern: Pattern, args: tuple[Any, ...], explicit: str | None) -> str:
    """The id to invoke under: ``explicit`` if given (validated), else the keyed id."""
    promise_id = explicit if explicit is not None else pattern.keyed_id(args)
    try:
        return validate_root_id(promise_id)
    except InvalidIdError as exc:
        raise UsageError(f"invalid --id {promise_id!r}: {exc}") from None


async def invoke(
    runtime: Runtime,
    pattern: Pattern,
    args: tuple[Any, ...],
    *,
    promise_id: str | None = None,
    wait_seconds: float | None = None,
) -> CallResult:
    """Run ``pattern(*args)`` under its keyed id and wait for the result."""
    pattern.validate(runtime.settings, args)
    pid = promise_id_for(pattern, args, promise_id)
    started = time.perf_counter()
    await runtime.check_access(pid)
    runtime.replies.watch(pid)
    target = runtime.resonate.options(target=runtime.settings.group)
    handle = target.rpc(pid, pattern.name, *args)
    try:
        value = await asyncio.wait_for(handle.result(), wait_seconds)
    except TimeoutError:
        raise WaitTimeoutError(pid, wait_seconds or 0) from None
    except ServerError as exc:
        if exc.code in (401, 403):
            raise AuthRefusedError(exc.code, exc.message, pid) from None
        raise RejectedError(pid, str(exc)) from exc
    except Exception as exc:
        raise RejectedError(pid, str(exc) or type(exc).__name__) from exc
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    cached = runtime.replies.first_state(pid) in SETTLED_STATES
    return CallResult(pid, pattern.name, value, cached, elapsed_ms)
