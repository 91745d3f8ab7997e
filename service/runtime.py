"""Build the Resonate SDK instance a worker or client runs on.

One function decides the wiring from :class:`~service.config.Settings`:

* no ``RESONATE_URL``: embedded. The in-process server (the project's
  indexed state, optionally persisted to SQLite) is both the network and the
  message source; leases never expire there (no heartbeats in one process),
  so a long step is never re-delivered to itself.
* ``RESONATE_URL``: remote. HTTP for requests, SSE for pushed messages. A
  worker joins ``RESONATE_GROUP``; a client listens under its own group, so
  the group's work is never delivered to a client that cannot run it.

Either way the network is wrapped by :class:`~service.telemetry.network.TappedNetwork`
(cache/lease metrics) and every pattern is registered for embedded runs and
workers, with the dependencies the patterns read.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from resonate.connections import SSEConnection
from resonate.heartbeat import NoopHeartbeat
from resonate.observability import noop_observer
from resonate.resonate import Resonate
from resonate.retry import Never

from service.devserver.embedded import EmbeddedConnection
from service.heartbeat import LeaseHeartbeat
from service.http_network import PooledHttpNetwork
from service.patterns.deps import PatternDeps
from service.patterns.links import HttpLinks, LinkSource, SyntheticGraph
from service.patterns.registry import register_all
from service.protocol import request_envelope
from service.telemetry.instrument import Telemetry
from service.telemetry.logging import get_logger
from service.telemetry.metrics import WorkerMetrics
from service.telemetry.network import ReplyObserver, TappedNetwork

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate_base.connections import Network, Source

    from service.config import Settings

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


class DrainGate:
    """A message source wrapper that can stop taking new work without disconnecting.

    While draining, an ``execute`` message is handed back to the server
    (acquire, then release) so another member of the group runs it, while
    this process keeps its stream and its leases and finishes what it holds.
    Disconnecting instead would make a server that frees a disconnected
    worker's tasks hand the in-flight work to someone else.
    """

    def __init__(self, inner: Source, network: Network, pid: str, ttl_ms: int) -> None:
        self.inner = inner
        self._network = network
        self._pid = pid
        self._ttl_ms = ttl_ms
        self.draining = False
        self._bounces: set[asyncio.Task[None]] = set()
        self._log = get_logger("service.drain")

    def unicast(self) -> str:
        return self.inner.unicast()

    def resolve_target(self, target: str) -> str:
        return self.inner.resolve_target(target)

    def recv(self, callback: Callable[[str], None]) -> None:
        def gated(raw: str) -> None:
            if self.draining:
                task = _execute_task(raw)
                if task is not None:
                    bounce = asyncio.create_task(self._bounce(*task))
                    self._bounces.add(bounce)
                    bounce.add_done_callback(self._bounces.discard)
                    return
            callback(raw)

        self.inner.recv(gated)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def _send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        envelope = request_envelope(kind, data, origin="drain")
        reply: dict[str, Any] = json.loads(await self._network.send(json.dumps(envelope), {}))
        return reply

    async def _bounce(self, task_id: str, version: int) -> None:
        """Give a task delivered during drain back to the group."""
        await asyncio.sleep(0.05)  # keep a group that is draining as a whole from spinning
        try:
            acquired = await self._send(
                "task.acquire",
                {"id": task_id, "version": version, "pid": self._pid, "ttl": self._ttl_ms},
            )
            if acquired.get("head", {}).get("status") != 200:
                return
            new_version = acquired.get("data", {}).get("task", {}).get("version", version)
            await self._send("task.release", {"id": task_id, "version": new_version})
            self._log.info("task_handed_back", task_id=task_id)
        except Exception as exc:  # the lease simply lapses; the server re-delivers
            self._log.warning("task_hand_back_failed", task_id=task_id, error=str(exc))


def _execute_task(raw: str) -> tuple[str, int] | None:
    try:
        msg = json.loads(raw)
        if msg.get("kind") != "execute":
            return None
        task = msg["data"]["task"]
        return str(task["id"]), int(task.get("version", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class Runtime:
    """Everything a worker or client process holds while it runs."""

    settings: Settings
    role: Role
    pid: str
    resonate: Resonate
    telemetry: Telemetry
    replies: ReplyObserver
    links: LinkSource
    gate: DrainGate | None
    embedded: EmbeddedConnection | None

    def start(self) -> None:
        """Open connections (needs a running event loop)."""
        self.resonate.start()

    def pending_jobs(self) -> int:
        """Background jobs still running inside the SDK (executions, creates).

        Reads the SDK's runtime bookkeeping, which is why resonate-sdk is
        pinned to an exact version.
        """
        return len(self.resonate._runtime.bg_tasks)

    async def stop(self) -> None:
        await self.resonate.stop()
        await self.links.close()
        if self.embedded is not None:
            await self.embedded.close()


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
    replies = ReplyObserver(metrics)
    links = make_links(settings)
    gate: DrainGate | None = None
    embedded: EmbeddedConnection | None = None

    if settings.resonate_url is None:
        embedded = EmbeddedConnection(pid=pid, group=settings.group, store=settings.embedded_store)
        resonate = Resonate(
            network=TappedNetwork(embedded, replies, owns_inner=False),
            sources=[embedded],
            group=settings.group,
            pid=pid,
            # Nothing heartbeats in one process, so leases must not expire.
            ttl=timedelta(0),
            heartbeat=NoopHeartbeat(),
            max_concurrent_tasks=settings.max_concurrent_tasks,
            retry_policy=Never(),
            subscription_refresh_secs=0,
            observer=noop_observer,
            autostart=False,
        )
    else:
        url = settings.resonate_url
        http = TappedNetwork(PooledHttpNetwork(url), replies, owns_inner=True)
        group = settings.group if role == "worker" else CLIENT_GROUP
        ttl = timedelta(seconds=settings.task_ttl_seconds)
        sse: Source = SSEConnection(url=url, pid=pid, group=group)
        if role == "worker":
            gate = DrainGate(sse, http, pid, int(ttl.total_seconds() * 1000))
            sse = gate
        resonate = Resonate(
            network=http,
            sources=[sse],
            group=group,
            pid=pid,
            ttl=ttl,
            heartbeat=LeaseHeartbeat(pid, ttl.total_seconds() / 2, http),
            max_concurrent_tasks=settings.max_concurrent_tasks,
            retry_policy=Never(),
            subscription_refresh_secs=REMOTE_REFRESH_SECONDS,
            observer=noop_observer,
            autostart=False,
        )

    if embedded is not None or role == "worker":
        register_all(resonate)
    resonate.with_dependency(telemetry)
    resonate.with_dependency(
        PatternDeps(settings=settings, promises=resonate.promises, links=links)
    )
    return Runtime(settings, role, pid, resonate, telemetry, replies, links, gate, embedded)
