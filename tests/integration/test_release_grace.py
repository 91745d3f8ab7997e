"""The reconnect grace of the release on disconnect.

When a process's last stream closes, the local server releases its leases
only if the process (same pid) has not opened a stream again within
``release_grace_seconds``: a worker whose connection merely dropped keeps the
work it is running, a dead one's work comes back once the grace runs out.

The first tests drive the server with raw SSE streams (see ``test_resend``),
so every timing is explicit. The last ones run real worker processes behind a
TCP proxy that drops one worker's event stream, as a network blip or a proxy
closing the connection would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from service.cli import EXIT_USAGE, build_parser, main
from service.client import invoke
from service.devserver.server import DEFAULT_RELEASE_GRACE_SECONDS, DevServer, ServerOptions
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.integration.conftest import scrape, total, worker_url
from tests.integration.test_resend import Harness, Stream, until

pytestmark = pytest.mark.slow

LEASE_TTL_MS = 60_000

type Start = Callable[..., Any]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Factory: an in-process server with the given options and a raw-stream harness."""
    made: list[Harness] = []

    async def make(**options: Any) -> Harness:
        srv = DevServer(ServerOptions(**{"retry_ms": 60_000, **options}))
        port = await srv.start("127.0.0.1", 0)
        harness = Harness(srv, aiohttp.ClientSession(), f"http://127.0.0.1:{port}")
        made.append(harness)
        return harness

    yield make
    for h in made:
        await h.session.close()
        await h.server.stop()


async def _acquired_by(h: Harness, pid: str, task_id: str = "job") -> tuple[Stream, int]:
    """A stream of ``pid``, and ``task_id`` created and acquired by ``pid``; the new version.

    The acquire does not wait for the ``execute`` to arrive: with other
    streams open, round robin decides which one it goes to.
    """
    stream = h.stream(pid)
    await until(lambda: h.server.hub.has_pid(pid))
    await h.create_work(task_id)
    version = h.server.engine.state.tasks[task_id].version
    out = await h.send(
        "task.acquire", {"id": task_id, "version": version, "pid": pid, "ttl": LEASE_TTL_MS}
    )
    assert out["head"]["status"] == 200, out
    return stream, int(out["data"]["task"]["version"])


def _held_by(h: Harness, task_id: str) -> tuple[str, str | None, int]:
    t = h.server.engine.state.tasks[task_id]
    return t.state, t.pid, t.version


async def test_stream_gone_for_good__its_leases_released_when_the_grace_runs_out(
    start: Start,
) -> None:
    h = await start(release_grace_seconds=0.6)
    a, version = await _acquired_by(h, "a")
    b = h.stream("b")
    await h.connected(2)
    closed_at = time.monotonic()
    await a.close()
    await until(lambda: h.server.pending_releases == {"a"})
    await asyncio.sleep(0.3)
    assert _held_by(h, "job") == ("acquired", "a", version), "still held within the grace"
    assert b.tasks() == []
    await until(lambda: b.tasks() == [{"id": "job", "version": version}], within=3)
    waited = b.got[0][0] - closed_at
    assert 0.55 < waited < 1.5, f"released {waited:.2f}s after the close"
    assert h.server.engine.state.tasks["job"].state == "pending"
    assert h.server.pending_releases == frozenset()
    await b.close()


async def test_same_process_reconnects_within_the_grace__keeps_its_lease_and_its_writes(
    start: Start,
) -> None:
    h = await start(release_grace_seconds=0.6)
    a, version = await _acquired_by(h, "a")
    b = h.stream("b")
    await h.connected(2)
    await a.close()
    await until(lambda: h.server.pending_releases == {"a"})
    await asyncio.sleep(0.1)  # the worker's reconnect backoff
    again = h.stream("a")
    await h.connected(2)
    assert h.server.pending_releases == frozenset(), "the reconnect cancelled the release"
    await asyncio.sleep(1.0)  # well past the grace
    assert _held_by(h, "job") == ("acquired", "a", version)
    assert b.tasks() == again.tasks() == [], "nothing re-delivered"
    beat = await h.send(
        "task.heartbeat", {"pid": "a", "tasks": [{"id": "job", "version": version}]}
    )
    assert beat["head"]["status"] == 200, beat
    done = await h.send(
        "task.fulfill",
        {
            "id": "job",
            "version": version,
            "action": {"kind": "promise.settle", "data": {"id": "job", "state": "resolved"}},
        },
    )
    assert done["head"]["status"] == 200, "its fenced write is accepted, not 409"
    await again.close()
    await b.close()


async def test_reconnect_then_gone_again__the_grace_starts_over_at_the_last_close(
    start: Start,
) -> None:
    h = await start(release_grace_seconds=0.6)
    a, version = await _acquired_by(h, "a")
    b = h.stream("b")
    await h.connected(2)
    await a.close()
    await until(lambda: h.server.pending_releases == {"a"})
    await asyncio.sleep(0.4)
    again = h.stream("a")
    await until(lambda: h.server.pending_releases == frozenset())
    await asyncio.sleep(0.4)  # past where the first grace would have ended
    assert _held_by(h, "job") == ("acquired", "a", version)
    closed_again_at = time.monotonic()
    await again.close()
    await until(lambda: b.tasks() == [{"id": "job", "version": version}], within=3)
    waited = b.got[0][0] - closed_again_at
    assert 0.55 < waited < 1.5, f"released {waited:.2f}s after the last close"
    await b.close()


async def test_zero_grace__leases_released_as_the_stream_closes(start: Start) -> None:
    h = await start(release_grace_seconds=0)
    a, version = await _acquired_by(h, "a")
    b = h.stream("b")
    await h.connected(2)
    closed_at = time.monotonic()
    await a.close()
    await until(lambda: b.tasks() == [{"id": "job", "version": version}], within=2)
    assert b.got[0][0] - closed_at < 0.4
    assert h.server.pending_releases == frozenset()
    await b.close()


async def test_unacquired_work__resent_at_once_without_waiting_for_the_grace(
    start: Start,
) -> None:
    # The server cannot tell whether what it wrote to a dropped connection
    # arrived, and a reconnect does not replay it: re-sent at once.
    h = await start(release_grace_seconds=5)
    a = h.stream("a")
    await h.connected(1)
    await h.create_work("job")
    await until(lambda: a.tasks() == [{"id": "job", "version": 0}])
    b = h.stream("b")
    await h.connected(2)
    closed_at = time.monotonic()
    await a.close()
    await until(lambda: b.tasks() == [{"id": "job", "version": 0}], within=2)
    assert b.got[0][0] - closed_at < 0.5
    assert h.server.pending_releases == {"a"}, "its (empty) release still waits"
    await b.close()


async def test_stop__pending_release_applied_at_once__shutdown_closes_release_nothing(
    start: Start,
) -> None:
    h = await start(release_grace_seconds=30)
    gone, _ = await _acquired_by(h, "gone")
    alive, alive_version = await _acquired_by(h, "alive", "other")
    await gone.close()
    await until(lambda: h.server.pending_releases == {"gone"})
    timer = h.server.grace.due["gone"].timer
    stopping_at = time.monotonic()
    await h.server.stop()
    stopped_in = time.monotonic() - stopping_at
    assert timer.cancelled()
    assert h.server.pending_releases == frozenset()
    assert h.server.grace.releasing == set()
    assert h.server.engine.state.tasks["job"].state == "pending", "released, not left to TTL"
    # The worker still connected when the server stopped is alive: it keeps
    # its lease (and heartbeats it to the restarted server).
    assert _held_by(h, "other") == ("acquired", "alive", alive_version)
    assert stopped_in < 3, f"stop took {stopped_in:.1f}s with a stream open"
    await alive.close()


def test_cli__default_is_the_server_default_and_bad_values_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = build_parser().parse_args(["server"])
    assert ns.release_grace_seconds == DEFAULT_RELEASE_GRACE_SECONDS
    assert ServerOptions().release_grace_seconds == DEFAULT_RELEASE_GRACE_SECONDS
    assert 1.0 <= DEFAULT_RELEASE_GRACE_SECONDS <= 2.0
    zero = build_parser().parse_args(["server", "--release-grace-seconds", "0"])
    assert zero.release_grace_seconds == 0
    for bad in ("-1", "nan", "inf"):
        assert main(["server", "--release-grace-seconds", bad]) == EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "--release-grace-seconds" in err[0]


# -- real workers behind a proxy that can drop a worker's event stream -------------------------


_POLL = re.compile(rb"^GET /poll/[^/ ]+/([^/ ?]+)[ ?]")


class Proxy:
    """A TCP proxy in front of the server; :meth:`drop` cuts one process's event streams."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        #: pid -> event streams opened through the proxy.
        self.streams_opened: Counter[str] = Counter()
        self._streams: dict[str, list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]]] = {}
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def drop(self, pid: str) -> int:
        """Abort both sides of every open event stream of ``pid``; return how many."""
        pairs = self._streams.pop(pid, [])
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            self._pipes.discard(task)
            return
        try:
            first = await reader.read(65536)
            found = _POLL.match(first)
            if found:
                pid = found.group(1).decode()
                self.streams_opened[pid] += 1
                self._streams.setdefault(pid, []).append((writer, up_writer))
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:  # ConnectionError included
            pass
        finally:
            writer.transport.abort()
            up_writer.transport.abort()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.transport.abort()


type Served = Callable[..., Any]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """Factory: an in-process server and a proxy in front of it; (server, proxy URL, proxy).

    Requested before ``stacks`` so that the workers stop before the server does.
    """
    made: list[tuple[DevServer, Proxy]] = []

    async def make(**options: Any) -> tuple[DevServer, str, Proxy]:
        srv = DevServer(ServerOptions(**options))
        port = await srv.start("127.0.0.1", 0)
        proxy = Proxy(port)
        url = await proxy.start()
        made.append((srv, proxy))
        return srv, url, proxy

    yield make
    for srv, proxy in made:
        await proxy.stop()
        await srv.stop()


async def _enrich_one_runs(stack: Any) -> float:
    runs = 0.0
    for i in range(len(stack.workers)):
        samples = await scrape(worker_url(stack, i))
        runs += total(samples, "resonate_patterns_executions_total", function="enrich_one")
    return runs


def _responses(srv: DevServer, status: str) -> float:
    return sum(
        sample.value
        for metric in srv.metrics.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("status") == status
    )


async def _drop_stream_mid_step(
    served: Served, stacks: Any, clients: Any, **options: Any
) -> tuple[DevServer, Any, str, int]:
    """Run one 3 s ``enrich_one`` on two workers; drop its worker's stream 0.3 s in.

    Returns, once the run has finished, the server, the stack, the task's id
    and its version when the stream was dropped. With a grace, also checks
    that the lease is still the same one well after the grace.
    """
    srv, url, proxy = await served(**options)
    stack = await stacks(2, server_url=url, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "3000"})
    client = clients(f"http://127.0.0.1:{srv.port}")
    run = asyncio.create_task(invoke(client, pattern("enrich_one"), (7,)))
    state = srv.engine.state
    await until(lambda: bool(state.tasks_by_state["acquired"]), within=10)
    [task_id] = state.tasks_by_state["acquired"]
    holder, version = state.tasks[task_id].pid, state.tasks[task_id].version
    assert holder is not None
    await asyncio.sleep(0.3)
    assert proxy.drop(holder) == 1
    dropped_at = time.monotonic()
    # The worker's EventStream opens a new stream 0.1 s after it broke.
    await until(lambda: proxy.streams_opened[holder] == 2 and srv.hub.has_pid(holder))
    assert time.monotonic() - dropped_at < 1.0
    await asyncio.sleep(srv.options.release_grace_seconds + 0.4)
    if srv.options.release_grace_seconds > 0:
        t = state.tasks[task_id]
        assert (t.state, t.pid, t.version) == ("acquired", holder, version), "lease kept"
    result = await asyncio.wait_for(run, 20)
    assert result.result == enrich_record(7)
    return srv, stack, task_id, version


async def test_worker_stream_dropped_and_reconnected__keeps_its_lease__step_runs_once(
    served: Served, stacks: Any, clients: Any
) -> None:
    srv, stack, task_id, version = await _drop_stream_mid_step(served, stacks, clients)
    assert await _enrich_one_runs(stack) == 1, "the step ran once, on the worker that held it"
    assert _responses(srv, "409") == 0, "no refused acquire or fenced write"
    assert srv.engine.state.tasks[task_id].version == version, "never re-acquired"


async def test_without_the_grace__a_dropped_stream_runs_the_step_twice(
    served: Served, stacks: Any, clients: Any
) -> None:
    # The hazard the grace removes: released as the stream broke, the task
    # went to the other worker while the first was still running it.
    srv, stack, _, _ = await _drop_stream_mid_step(served, stacks, clients, release_grace_seconds=0)
    runs = 0.0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        runs = await _enrich_one_runs(stack)
        if runs >= 2:
            break
        await asyncio.sleep(0.1)
    assert runs == 2
    assert _responses(srv, "409") >= 1, "the first worker's late write was refused"
