"""What the Resonate SDK tells this process, turned into counts and log lines.

Two typed hooks the SDK offers, and nothing read off the wire:

* :class:`SdkObserver` is the ``Resonate(observer=...)`` callable. It sees
  every durable op the SDK performs inside an execution and the failures it
  does not raise about:

  - ``PromiseCreateReturned`` for a ``ctx.run`` child whose create went to
    the server and came back ``pending``: this execution just made that call
    for the first time, and its body runs next. The id is handed to
    :meth:`~service.telemetry.instrument.Telemetry.expect_first_run`, and the
    child's instrumented body counts the miss. A replay never produces this
    event for a call already made: a child promise that exists is in the
    task's preload (the SDK answers the create from it without a request),
    and one the server returns settled is a replay, not a new call.
  - ``BackgroundTaskFailed``: a fire-and-forget job of the SDK failed (an
    execution whose closing fulfill or suspend was refused, a create the
    server rejected, ...). Logged and counted.
  - ``Dropped``: a record or message the SDK could not decode and discarded.
    Logged with the promise id when the SDK knows it, and counted by reason.

* :class:`CountingHeartbeat` wraps the SDK's ``Heartbeat``: the SDK calls
  ``start(task_id, version)`` exactly once per task execution, right after
  acquiring the task and before the body runs. Version 1 is the task's first
  acquisition anywhere (every acquire bumps the version; release, expiry and
  resume keep it), so a child task (an ``rpc`` child: its id has a lineage
  part) started at version 1 is that call's first run, and its instrumented
  body counts the miss. A start above version 1 is a resume or a
  re-delivery.

The observer is called synchronously on the SDK's hot path (four events per
durable child): it must not raise or block, and does as little as it can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from service.connector.sdk import BackgroundTaskFailed, Dropped, PromiseCreateReturned
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.connector.sdk import Event
    from service.telemetry.instrument import Telemetry


class SdkObserver:
    """The ``Resonate(observer=...)`` callable of one runtime (see the module doc)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._expect = telemetry.expect_first_run
        self._metrics = telemetry.metrics

    def __call__(self, event: Event) -> None:
        if isinstance(event, PromiseCreateReturned):
            if event.invocation == "run" and event.state == "pending":
                self._expect(event.id)
        elif isinstance(event, BackgroundTaskFailed):
            get_logger("service.sdk").warning("sdk_background_task_failed", error=event.cause)
            self._metrics.sdk_background_failed()
        elif isinstance(event, Dropped):
            get_logger("service.sdk").warning(
                "sdk_dropped", reason=event.what, promise_id=event.id or None, error=event.cause
            )
            self._metrics.sdk_dropped_one(event.what)


class Heartbeat(Protocol):
    """The SDK's lease heartbeat protocol (``resonate.heartbeat.Heartbeat``)."""

    def start(self, task_id: str, task_version: int) -> None: ...
    def stop(self, task_id: str) -> None: ...
    def shutdown(self) -> None: ...


class CountingHeartbeat:
    """A :class:`Heartbeat` that forwards to ``inner`` and notes each execution's task version."""

    def __init__(self, inner: Heartbeat, telemetry: Telemetry) -> None:
        self.inner = inner
        self._telemetry = telemetry

    def start(self, task_id: str, task_version: int) -> None:
        self.inner.start(task_id, task_version)
        if task_version == 1:
            # A root (no lineage part) was invoked by a client, which counts
            # it; only a child task's first run is a child call to count.
            if ":" in task_id:
                self._telemetry.expect_first_run(task_id)
        elif task_version > 1:
            self._telemetry.metrics.task_redelivered()

    def stop(self, task_id: str) -> None:
        self.inner.stop(task_id)

    def shutdown(self) -> None:
        self.inner.shutdown()


__all__ = ["CountingHeartbeat", "Heartbeat", "SdkObserver"]
