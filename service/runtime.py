"""Build the Resonate SDK instance a worker or client runs on.

One function decides the wiring from :class:`~service.config.Settings`:

* no ``RESONATE_URL``: embedded. The in-process server (the project's
  indexed state, optionally persisted to SQLite) is both the network and the
  message source; leases never expire there (no heartbeats in one process),
  so a long step is never re-delivered to itself. Only this mode imports the
  development server (:mod:`service.devserver`): a production worker never
  loads it.
* ``RESONATE_URL``: remote. HTTP for requests, SSE for pushed messages. A
  worker joins ``RESONATE_GROUP``; a client listens under its own group, so
  the group's work is never delivered to a client that cannot run it.

Either way the SDK reports to this process's telemetry through its own hooks
(:mod:`service.connector.observer`): the observer (``Resonate(observer=...)``:
first runs of ``ctx.run`` children, background failures, dropped records)
and the lease heartbeat (``start(task_id, version)`` once per task
execution). Every pattern is registered for embedded runs and workers, with
the dependencies the patterns read.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from resonate.resonate import Resonate
from resonate.retry import Never

from service.connector.drain import DrainGate
from service.connector.heartbeat import LeaseHeartbeat
from service.connector.http import PooledHttpNetwork
from service.connector.observer import CountingHeartbeat, SdkObserver
from service.connector.sdk import (
    NoopHeartbeat,
    abandon_jobs,
    install_execution_slots,
    make_sender,
    pending_jobs,
)
from service.connector.sse import EventStream
from service.patterns.deps import PatternDeps
from service.patterns.links import HttpLinks, LinkSource, SyntheticGraph
from service.patterns.registry import CHILD_FUNCTIONS, LOOKUP_FUNCTIONS, PATTERNS, register_all
from service.telemetry.instrument import Telemetry
from service.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:
    from service.config import Settings
    from service.connector.sdk import Sender, Source
    from service.devserver.embedded import EmbeddedConnection

Role = Literal["worker", "client"]

#: Group a remote client listens under for its own results. Nothing is ever
#: targeted at it, so no work is delivered to a process that cannot run it.
CLIENT_GROUP = "resonate-patterns-clients"
#: How often a handle re-checks a pending promise in case a push was missed.
REMOTE_REFRESH_SECONDS = 10.0


def make_links(settings: Settings) -> LinkSource:
    """The link source ``fetch_links`` reads, per configuration."""
    if settings.link_source == "http":
        return HttpLinks(settings.http_fetch_timeout_seconds, settings.max_fanout)
    return SyntheticGraph(settings.synthetic_pages, settings.synthetic_links)


def make_pid() -> str:
    """A process identity: host name (the pod name in Kubernetes) plus a random suffix."""
    host = socket.gethostname().split(".")[0].lower() or "host"
    return f"{host}-{uuid.uuid4().hex[:8]}"


@dataclass
class Runtime:
    """Everything a worker or client process holds while it runs."""

    settings: Settings
    role: Role
    pid: str
    resonate: Resonate
    telemetry: Telemetry
    links: LinkSource
    gate: DrainGate | None
    embedded: EmbeddedConnection | None
    #: The event stream from the server (None when embedded).
    stream: EventStream | None = None
    #: The SDK's typed request layer for this project's own requests (None when embedded).
    sender: Sender | None = None

    def start(self) -> None:
        """Open connections (needs a running event loop)."""
        self.resonate.start()

    async def opened(self) -> None:
        """Wait until the embedded server is running (a no-op against a server).

        :meth:`start` only schedules the connections' start. The embedded
        server re-dispatches every pending task when it starts, so a task
        created before that would be offered twice (the second acquire is
        refused: a spurious background failure).
        """
        if self.embedded is not None:
            await self.embedded.start()

    def pending_jobs(self) -> int:
        """Background jobs still running inside the SDK (executions, creates)."""
        return pending_jobs(self.resonate)

    def abandon_jobs(self) -> int:
        """Cancel the SDK's running jobs (a drain out of time); the server re-delivers them."""
        return abandon_jobs(self.resonate)

    @property
    def connected(self) -> bool:
        """Whether messages can reach this process (always, when embedded)."""
        return self.stream is None or self.stream.connected

    async def stop(self) -> None:
        await self.resonate.stop()
        await self.links.close()
        if self.embedded is not None:
            await self.embedded.close()


def declare_cache_series(metrics: WorkerMetrics) -> None:
    """Create every hit/miss series this process can count, at 0.

    ``rate()`` only sees an increment between two scrapes of a series, so a
    series born at its first count would lose that count on the dashboard;
    and a hit ratio with no hit yet is then 0 rather than no data. An
    invocation is counted by the process that invokes (a client, or a
    worker serving the HTTP API); children and lookups by the worker that
    runs them (or the embedded process).
    """
    for p in PATTERNS:
        metrics.declare_cache(p.name, "invocation")
    for name in CHILD_FUNCTIONS:
        metrics.declare_cache(name, "child")
    for name in LOOKUP_FUNCTIONS:
        metrics.declare_cache(name, "lookup")


def build_runtime(
    settings: Settings,
    *,
    role: Role,
    metrics: WorkerMetrics | None = None,
    pid: str | None = None,
) -> Runtime:
    """Wire Resonate for ``role`` per ``settings`` (not started; see :meth:`Runtime.start`)."""
    pid = pid or make_pid()
    metrics = metrics if metrics is not None else WorkerMetrics(settings.group)
    telemetry = Telemetry(metrics)
    observer = SdkObserver(telemetry)
    links = make_links(settings)
    gate: DrainGate | None = None
    embedded: EmbeddedConnection | None = None
    stream: EventStream | None = None
    own_sender: Sender | None = None

    if settings.resonate_url is None:
        # Imported here: a worker against a server never loads the development server.
        from service.devserver.embedded import EmbeddedConnection

        embedded = EmbeddedConnection(pid=pid, group=settings.group, store=settings.embedded_store)
        resonate = Resonate(
            network=embedded,
            sources=[embedded],
            group=settings.group,
            pid=pid,
            # Nothing heartbeats in one process, so leases must not expire.
            ttl=timedelta(0),
            heartbeat=CountingHeartbeat(NoopHeartbeat(), telemetry),
            max_concurrent_tasks=settings.max_concurrent_tasks,
            retry_policy=Never(),
            subscription_refresh_secs=0,
            observer=observer,
            autostart=False,
        )
    else:
        url = settings.resonate_url
        token = settings.token
        http = PooledHttpNetwork(url, token=token)
        group = settings.group if role == "worker" else CLIENT_GROUP
        ttl = timedelta(seconds=settings.task_ttl_seconds)
        ttl_ms = int(ttl.total_seconds() * 1000)
        own_sender = make_sender(http, token)
        stream = EventStream(
            url,
            pid=pid,
            group=group,
            token=token,
            read_timeout=settings.stream_read_timeout_seconds,
            # A worker tells the server how much it can run at once (flow control).
            capacity=settings.max_concurrent_tasks if role == "worker" else None,
        )
        stream.on_change(metrics.stream_state)
        source: Source = stream
        if role == "worker":
            gate = DrainGate(stream, own_sender, pid, ttl_ms, stream=stream)
            source = gate
        resonate = Resonate(
            network=http,
            sources=[source],
            group=group,
            pid=pid,
            ttl=ttl,
            token=token,
            heartbeat=CountingHeartbeat(
                LeaseHeartbeat(pid, ttl.total_seconds() / 2, own_sender, metrics), telemetry
            ),
            max_concurrent_tasks=settings.max_concurrent_tasks,
            retry_policy=Never(),
            subscription_refresh_secs=REMOTE_REFRESH_SECONDS,
            observer=observer,
            autostart=False,
        )
        if gate is not None:
            # Counted so the gate refuses what the SDK would otherwise park in memory.
            gate.slots = install_execution_slots(resonate, settings.max_concurrent_tasks)

    if embedded is not None or role == "worker":
        register_all(resonate)
    declare_cache_series(metrics)
    resonate.with_dependency(telemetry)
    resonate.with_dependency(
        PatternDeps(settings=settings, promises=resonate.promises, links=links)
    )
    return Runtime(
        settings, role, pid, resonate, telemetry, links, gate, embedded, stream, own_sender
    )
