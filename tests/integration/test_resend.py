"""Re-delivery of ``execute`` messages: the retry timer, and the resend when a stream closes.

Streams here are raw SSE connections that behave like workers (they read
messages and acquire, or not, on cue), so every timing is deterministic; the
last test does the same with real worker processes and ``kill -9``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from resonate_base import PROTOCOL_VERSION

from service.client import invoke
from service.devserver.server import DevServer, ServerOptions
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.integration.conftest import log_events, read_sse

pytestmark = pytest.mark.slow

GROUP = "g"


class Stream:
    """One open ``GET /poll`` stream collecting ``execute`` arrivals with their times."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._run(session, url))

    async def _run(self, session: aiohttp.ClientSession, url: str) -> None:
        await read_sse(session, url, lambda message: self.got.append((time.monotonic(), message)))

    def tasks(self) -> list[dict[str, Any]]:
        return [m["data"]["task"] for _, m in self.got if m["kind"] == "execute"]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Harness:
    def __init__(self, server: DevServer, session: aiohttp.ClientSession, base: str) -> None:
        self.server, self.session, self.base = server, session, base

    def stream(self, pid: str) -> Stream:
        return Stream(self.session, f"{self.base}/poll/{GROUP}/{pid}")

    async def send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        body = {"kind": kind, "head": {"corrId": "c", "version": PROTOCOL_VERSION}, "data": data}
        async with self.session.post(self.base + "/", json=body) as resp:
            out: dict[str, Any] = await resp.json()
        return out

    async def create_work(self, task_id: str) -> float:
        tags = {"resonate:target": f"poll://any@{GROUP}"}
        await self.send("promise.create", {"id": task_id, "timeoutAt": 1 << 60, "tags": tags})
        return time.monotonic()

    async def connected(self, count: int) -> None:
        await until(lambda: self.server.hub.connected().get(GROUP, 0) == count)


async def until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


type Start = Callable[..., Any]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Factory: an in-process server with the given options and a client harness."""
    made: list[tuple[DevServer, aiohttp.ClientSession]] = []

    async def make(**options: Any) -> Harness:
        srv = DevServer(ServerOptions(**options))
        port = await srv.start("127.0.0.1", 0)
        session = aiohttp.ClientSession()
        made.append((srv, session))
        return Harness(srv, session, f"http://127.0.0.1:{port}")

    yield make
    for srv, session in made:
        await session.close()
        await srv.stop()


async def test_stream_closes_before_acquire__execute_resent_at_once_to_another_stream(
    start: Start,
) -> None:
    h = await start(retry_ms=60_000)
    a = h.stream("a")
    await h.connected(1)
    await h.create_work("job")
    await until(lambda: a.tasks() == [{"id": "job", "version": 0}])
    b = h.stream("b")
    await h.connected(2)
    closed_at = time.monotonic()
    await a.close()
    await until(lambda: b.tasks() == [{"id": "job", "version": 0}], within=2)
    assert b.got[0][0] - closed_at < 1.0, "re-sent at once, not by the 60 s timer"
    await b.close()


async def test_resend_on_close_off__work_waits_for_the_retry_timer(start: Start) -> None:
    h = await start(retry_ms=1500, resend_on_close=False)
    a = h.stream("a")
    await h.connected(1)
    created_at = await h.create_work("job")
    await until(lambda: len(a.tasks()) == 1)
    b = h.stream("b")
    await h.connected(2)
    await a.close()
    await asyncio.sleep(0.5)
    assert b.tasks() == [], "nothing re-sent when the stream closed"
    await until(lambda: len(b.tasks()) == 1, within=3)
    waited = b.got[0][0] - created_at
    assert 1.4 < waited < 3.0, f"re-sent by the timer after {waited:.2f}s"
    await b.close()


async def test_no_other_stream__retry_timer_resends_to_the_stream_that_never_acquired(
    start: Start,
) -> None:
    h = await start(retry_ms=500)
    a = h.stream("a")
    await h.connected(1)
    created_at = await h.create_work("job")
    await until(lambda: len(a.tasks()) >= 3, within=3)
    arrivals = [t - created_at for t, _ in a.got[:3]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert arrivals[0] < 0.3, "sent at once when created"
    assert all(gap >= 0.45 for gap in gaps), f"re-sent only every 500 ms: {arrivals}"
    assert arrivals[2] < 2.5, f"and every 500 ms, not later: {arrivals}"
    assert a.tasks()[:3] == [{"id": "job", "version": 0}] * 3
    await a.close()


async def test_no_other_stream_when_it_closes__kept_and_sent_to_the_next_to_connect(
    start: Start,
) -> None:
    h = await start(retry_ms=60_000)
    a = h.stream("a")
    await h.connected(1)
    await h.create_work("job")
    await until(lambda: len(a.tasks()) == 1)
    await a.close()
    await h.connected(0)
    b = h.stream("b")
    await until(lambda: b.tasks() == [{"id": "job", "version": 0}], within=2)
    await b.close()


async def test_acquired_work__never_resent_when_the_stream_closes(start: Start) -> None:
    h = await start(retry_ms=60_000, release_on_disconnect=False)
    a = h.stream("a")
    await h.connected(1)
    await h.create_work("job")
    await until(lambda: len(a.tasks()) == 1)
    acquired = await h.send("task.acquire", {"id": "job", "version": 0, "pid": "a", "ttl": 60_000})
    assert acquired["head"]["status"] == 200
    b = h.stream("b")
    await h.connected(2)
    await a.close()
    await asyncio.sleep(0.5)
    assert b.tasks() == []
    await b.close()


async def test_process_still_has_another_stream__nothing_resent(start: Start) -> None:
    h = await start(retry_ms=60_000)
    first = h.stream("a")
    await h.connected(1)
    await h.create_work("job")
    await until(lambda: len(first.tasks()) == 1)
    second = h.stream("a")  # the same process reconnecting
    other = h.stream("b")
    await h.connected(3)
    await first.close()
    await asyncio.sleep(0.5)
    assert second.tasks() == other.tasks() == []
    await second.close()
    await other.close()


async def test_kill_9_worker__its_unacquired_work_runs_elsewhere_within_seconds(
    stacks: Any, clients: Any
) -> None:
    # Two workers that each run one step at a time, so most of the work sent
    # to a worker waits in it unacquired; a 60 s timer would strand it.
    stack = await stacks(
        2,
        env={
            "RESONATE_PATTERNS_STEP_DELAY_MS": "200",
            "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS": "1",
        },
        server_args=["--retry-ms", "60000"],
    )
    client = clients(stack.plan.url)
    ids = list(range(16))
    run = asyncio.create_task(invoke(client, pattern("parallel_enrich"), (ids,)))
    await asyncio.sleep(0.6)
    assert not run.done()
    victim = stack.workers[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    result = await asyncio.wait_for(run, 30)
    assert result.result == [enrich_record(i) for i in ids]
    assert time.monotonic() - killed_at < 10, "stranded work waited for the retry timer"
    log = stack.logs_dir / "server.log"
    await until(lambda: any(e["event"] == "worker_disconnected" for e in log_events(log)), within=5)
    [gone] = [e for e in log_events(log) if e["event"] == "worker_disconnected"]
    # Workers announce their capacity (flow control), so a worker is offered no
    # more than it can run: at most the one it was about to acquire is left
    # unacquired, and whatever is left is re-sent at once.
    assert gone["resent_tasks"] == gone["unacquired_tasks"] <= 1
