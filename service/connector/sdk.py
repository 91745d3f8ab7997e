"""The seam over resonate-sdk internals (pinned: ``resonate-sdk==0.8.1``).

The rest of ``service/`` uses only the SDK's user-facing API (``Resonate``,
``Context``, retry policies, errors, the promises client). What it needs
beyond that, it takes from here: address minting for the ``poll://`` scheme,
the lineage origin of an id, the protocol version and clock the in-process
server stamps, the SDK's typed ``Sender`` for the requests this project sends
itself, the task version an execution runs under, the count of the SDK's
in-flight background jobs, and the observer event types
(``Resonate(observer=...)``) plus ``TaskData`` (the payload of a top-level
create) that telemetry and the client read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from resonate.connections.sse import resolve_target as _anycast
from resonate.connections.sse import unicast as _unicast
from resonate.heartbeat import NoopHeartbeat
from resonate.ids import origin_of, validate_root_id
from resonate.observability import (
    BackgroundTaskFailed,
    Dropped,
    Event,
    PromiseCreateReturned,
    noop_observer,
)
from resonate.send import Sender
from resonate.timing import now_ms
from resonate.transport import Transport
from resonate.types import TaskData, Value
from resonate_base import PROTOCOL_VERSION
from resonate_base.connections import Network, Source

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate.context import Context
    from resonate.resonate import Resonate

__all__ = [
    "PROTOCOL_VERSION",
    "BackgroundTaskFailed",
    "Dropped",
    "Event",
    "ExecutionSlots",
    "Network",
    "NoopHeartbeat",
    "PromiseCreateReturned",
    "Sender",
    "Source",
    "TaskData",
    "Value",
    "anycast_address",
    "install_execution_slots",
    "make_sender",
    "noop_observer",
    "now_ms",
    "origin_of",
    "pending_jobs",
    "task_version",
    "unicast_address",
    "validate_root_id",
]


def anycast_address(group: str) -> str:
    """The address that reaches any one member of ``group`` (``poll://any@{group}``).

    The SDK stamps it on a promise's ``resonate:target`` tag; the backlog
    reader searches by it and the local server routes by it.
    """
    return _anycast(group)


def unicast_address(group: str, pid: str) -> str:
    """The address that reaches one process (``poll://uni@{group}/{pid}``)."""
    return _unicast(group, pid)


def make_sender(network: Network, token: str | None) -> Sender:
    """The SDK's typed request layer over ``network``, sending ``token`` in ``head.auth``.

    Used for the requests this project sends itself (heartbeats, drain
    hand-backs) so their envelopes, correlation checks and error statuses are
    the SDK's own: a reply of 400 or more raises ``ServerError``.
    """
    return Sender(Transport(network, (), noop_observer), token, observer=noop_observer)


def pending_jobs(resonate: Resonate) -> int:
    """Background jobs still running inside the SDK (executions, creates).

    Reads the SDK runtime's bookkeeping; the SDK offers no public count or
    completion event, which is one reason resonate-sdk is pinned exactly.
    """
    jobs: Any = resonate._runtime.bg_tasks
    return len(jobs)


def abandon_jobs(resonate: Resonate) -> int:
    """Cancel the SDK's background jobs still running; how many there were.

    For a drain that ran out of time: the SDK's ``stop`` joins every job, so
    one long execution would otherwise hold the process until it ends (past
    ``drainSeconds``, and in Kubernetes past the grace period, to a SIGKILL).
    A cancelled execution never fulfills its task, so nothing is lost: the
    server re-delivers it once the stream is gone (the reconnect grace on the
    local server, the lease TTL on the official one).
    """
    jobs: Any = resonate._runtime.bg_tasks
    running = [job for job in jobs if not job.done()]
    for job in running:
        job.cancel()
    return len(running)


class ExecutionSlots(asyncio.Semaphore):
    """The SDK's execution semaphore, counting what it holds and what waits for it.

    resonate-sdk 0.8.1 holds one permit of ``_runtime.execute_sema`` for the
    whole acquire -> execute -> suspend/fulfill span of every execution, and
    parks an ``execute`` it has no permit for on the semaphore, in memory,
    for as long as it takes. This subclass lets the worker see that
    (:attr:`busy`) and refuse work it cannot start instead of hoarding it.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        #: Permits the semaphore gives out at once (``max_concurrent_tasks``).
        self.capacity = capacity
        #: Executions holding a permit (running, lease held).
        self.held = 0
        #: Executions waiting for a permit.
        self.waiting = 0
        #: ``execute`` messages passed to the SDK whose execution has not
        #: asked for a permit yet (the SDK spawns it on the next loop turn).
        self.reserved = 0
        #: Called after a permit is given back (the drain gate passes on work it held).
        self.on_free: Callable[[], None] | None = None

    @property
    def busy(self) -> int:
        """Executions this process has taken on: running, waiting or about to start."""
        return self.held + self.waiting + self.reserved

    def reserve(self) -> None:
        """Count an ``execute`` handed to the SDK until its execution asks for a permit."""
        self.reserved += 1

    async def acquire(self) -> Literal[True]:
        self.reserved = max(0, self.reserved - 1)
        self.waiting += 1
        try:
            await super().acquire()
        finally:
            self.waiting -= 1
        self.held += 1
        return True

    def release(self) -> None:
        self.held = max(0, self.held - 1)
        super().release()
        if self.on_free is not None:
            self.on_free()


def install_execution_slots(resonate: Resonate, capacity: int) -> ExecutionSlots:
    """Replace the SDK's execution semaphore by a counting one (before it starts)."""
    slots = ExecutionSlots(capacity)
    resonate._runtime.execute_sema = slots
    return slots


def task_version(ctx: Context) -> int:
    """The version of the task lease the execution behind ``ctx`` runs under.

    Servers bump a task's version on every acquire (the official server and
    :mod:`service.devserver`; versions start at 0), so version 1 is the task's
    first acquisition anywhere, and every later body run of the same call (a
    resume, a re-delivery) runs above 1. A redirect (a suspend answered 300)
    re-runs the body under the same version in the same process. Read from
    the SDK's per-attempt effects: the SDK does not expose the lease on
    ``Context``. 0 when the execution has no lease (a test context).
    """
    effects: Any = ctx._state.effects
    version = getattr(effects, "task_version", 0)
    return version if isinstance(version, int) else 0
