"""The worker process: joins a group, runs every pattern, drains on SIGTERM.

A worker builds Resonate per configuration (embedded or against a server),
registers every pattern under ``RESONATE_GROUP``, serves ``/healthz``,
``/readyz``, ``/metrics`` and the HTTP API (:mod:`service.api`) on one port,
and runs until SIGINT or SIGTERM. On a signal it drains: it stops being
ready, leaves the dispatch rotation (its stream announces a capacity of 0),
hands newly delivered tasks back to the group, lets in-flight
executions and API callers finish for up to
``RESONATE_PATTERNS_DRAIN_SECONDS``, answers callers still waiting with 202
(their call goes on in the group), then disconnects. Work still running at
the deadline is not lost: its lease is released by the server (or lapses)
and another worker replays it from the last durable step.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

import structlog

from service import __version__
from service.api import InvocationApi
from service.runtime import Runtime, build_runtime
from service.telemetry.http import health_app, serve_http
from service.telemetry.logging import get_logger
from service.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:
    from service.config import Settings

#: How often the drain loop checks for in-flight work.
_DRAIN_POLL_SECONDS = 0.05


class Worker:
    """One worker process's lifecycle: start, serve, drain, stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(settings.group)
        self.metrics.add_process_collectors()
        self.runtime: Runtime = build_runtime(settings, role="worker", metrics=self.metrics)
        self.api = InvocationApi(self.runtime)
        self.ready = False
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self._log = get_logger("service.worker")

    def request_stop(self) -> None:
        self._stop.set()

    def is_ready(self) -> bool:
        """Ready = started, not draining, and the event stream from the server is open.

        A worker whose stream is down receives no work, so it reports not
        ready (``/readyz`` 503) until the stream is back.
        """
        return self.ready and self.runtime.connected

    def _publish_ready(self, *_: object) -> None:
        self.metrics.worker_ready.labels(self.settings.group).set(int(self.is_ready()))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        app = health_app(self.metrics.registry, self.is_ready)
        self.api.install(app)
        runner, self.http_port = await serve_http(
            app, self.settings.http_host, self.settings.http_port
        )
        self.metrics.set_identity(__version__, self.runtime.pid)
        # Every line this worker logs (and every execution it spawns) carries these.
        structlog.contextvars.bind_contextvars(
            worker_pid=self.runtime.pid, group=self.settings.group
        )
        if self.runtime.stream is not None:
            self.runtime.stream.on_change(self._publish_ready)
        self.runtime.start()
        self.ready = True
        self._publish_ready()
        self._log.info(
            "worker_started",
            group=self.settings.group,
            mode="embedded" if self.settings.embedded else "remote",
            server=self.settings.resonate_url,
            http_port=self.http_port,
            version=__version__,
        )
        try:
            await self._stop.wait()
        finally:
            await self.drain()
            await runner.cleanup()

    async def drain(self) -> None:
        """Stop taking work, let in-flight executions and API callers finish, then disconnect."""
        self.ready = False
        self._publish_ready()
        gate = self.runtime.gate
        if gate is not None:
            gate.start_draining()
        started = time.monotonic()
        deadline = started + self.settings.drain_seconds
        self._log.info(
            "drain_started", in_flight=self.runtime.pending_jobs(), api_waiting=self.api.in_flight
        )
        # The SDK offers no completion event for its jobs, so poll the count.
        # Hand-backs count too: one cut short leaves its task to the retry timer.
        while (  # noqa: ASYNC110
            self.runtime.pending_jobs()
            or self.api.in_flight
            or (gate is not None and gate.handing_back)
        ) and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        left = self.runtime.pending_jobs()
        released = self.api.in_flight
        # Callers still waiting get 202 and a Location now; new ones get 503.
        await self.api.close()
        if left:
            # Out of time: the SDK's stop would wait for every execution still
            # running, however long; cancelled, their tasks go back to the server.
            self.runtime.abandon_jobs()
        await self.runtime.stop()
        self._log.info(
            "worker_stopped",
            drained=left == 0,
            abandoned=left,
            api_released=released,
            drain_seconds=round(time.monotonic() - started, 3),
        )


async def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    await Worker(settings).run()
