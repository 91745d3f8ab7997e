"""The event stream against a real aiohttp server: reconnects, read timeout, auth, state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from resonate.retry import ExponentialBackoff

from service.connector.sse import EventStream
from service.telemetry.metrics import STREAM_RECONNECTS_NAME, WorkerMetrics

FAST = ExponentialBackoff(initial=0.05, factor=2.0, max_delay=0.2)


@dataclass
class PollServer:
    """``GET /poll/{group}/{pid}``: what each opened stream does is scripted per test."""

    #: Per connection (in order): messages to send, then "close", "hang" or "ping".
    scripts: list[tuple[list[str], str]] = field(default_factory=list)
    status: int = 200
    opened: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def poll(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        self.paths.append(request.path)
        if self.status != 200:
            return web.Response(status=self.status, text="Unauthorized: token missing")
        script = self.scripts[self.opened] if self.opened < len(self.scripts) else ([], "hang")
        self.opened += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        messages, then = script
        for message in messages:
            await resp.write(f"data: {message}\n\n".encode())
        if then == "close":
            return resp
        while then == "ping":
            await asyncio.sleep(0.1)
            await resp.write(b": ping\n\n")
        await asyncio.sleep(3600)  # "hang": open, silent
        return resp


@pytest.fixture
async def poll_server() -> AsyncIterator[tuple[PollServer, str]]:
    server = PollServer()
    app = web.Application()
    app.router.add_get("/poll/{group}/{pid}", server.poll)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling plain state set by callbacks
            await asyncio.sleep(0.01)


async def test_stream__messages_delivered_in_order_with_bearer_token(
    poll_server: tuple[PollServer, str],
) -> None:
    server, url = poll_server
    server.scripts = [(['{"kind":"a"}', '{"kind":"b"}'], "hang")]
    stream = EventStream(url, pid="p1", group="workers", token="abc.def.ghi", backoff=FAST)
    got: list[str] = []
    stream.recv(got.append)
    await stream.start()
    try:
        await _until(lambda: len(got) == 2)
        assert got == ['{"kind":"a"}', '{"kind":"b"}']
        assert stream.connected
        assert server.paths == ["/poll/workers/p1"]
        assert server.headers[0]["Authorization"] == "Bearer abc.def.ghi"
        assert server.headers[0]["Accept"] == "text/event-stream"
        assert stream.unicast() == "poll://uni@workers/p1"
        assert stream.resolve_target("other") == "poll://any@other"
    finally:
        await stream.stop()
    assert not stream.connected


async def test_stream__closed_by_server__reopens_within_a_second_and_counts_it(
    poll_server: tuple[PollServer, str],
) -> None:
    server, url = poll_server
    server.scripts = [(["1"], "close"), (["2"], "close"), (["3"], "hang")]
    metrics = WorkerMetrics("workers")
    stream = EventStream(url, pid="p1", group="workers", backoff=FAST)
    stream.on_change(metrics.stream_state)
    got: list[str] = []
    stream.recv(got.append)
    await stream.start()
    try:
        await _until(lambda: got == ["1", "2", "3"], within=1.0)
        await _until(lambda: stream.connected)
        assert stream.reconnects == 2
        labels = {"group": "workers", "cause": "closed"}
        assert metrics.registry.get_sample_value(STREAM_RECONNECTS_NAME, labels) == 2.0
    finally:
        await stream.stop()


async def test_stream__silent_past_read_timeout__treated_as_dead_and_reopened(
    poll_server: tuple[PollServer, str],
) -> None:
    server, url = poll_server
    server.scripts = [([], "hang"), (["after"], "hang")]
    metrics = WorkerMetrics("workers")
    stream = EventStream(url, pid="p1", group="workers", read_timeout=0.5, backoff=FAST)
    stream.on_change(metrics.stream_state)
    got: list[str] = []
    stream.recv(got.append)
    await stream.start()
    try:
        await _until(lambda: got == ["after"], within=3.0)
        assert server.opened == 2
        assert stream.connected
        labels = {"group": "workers", "cause": "idle"}
        assert metrics.registry.get_sample_value(STREAM_RECONNECTS_NAME, labels) == 1.0
    finally:
        await stream.stop()


async def test_stream__pings_keep_a_quiet_stream_open_past_the_read_timeout(
    poll_server: tuple[PollServer, str],
) -> None:
    server, url = poll_server
    server.scripts = [([], "ping")]
    stream = EventStream(url, pid="p1", group="workers", read_timeout=0.5, backoff=FAST)
    await stream.start()
    try:
        await asyncio.sleep(1.5)
        assert (server.opened, stream.connected, stream.reconnects) == (1, True, 0)
    finally:
        await stream.stop()


async def test_stream__server_down_then_up__connects_when_it_appears() -> None:
    # Nothing listens on this port at first.
    probe = web.AppRunner(web.Application())
    await probe.setup()
    site = web.TCPSite(probe, "127.0.0.1", 0)
    await site.start()
    port = probe.addresses[0][1]
    await probe.cleanup()
    stream = EventStream(f"http://127.0.0.1:{port}", pid="p", group="g", backoff=FAST)
    await stream.start()
    try:
        await asyncio.sleep(0.3)
        assert not stream.connected
        assert stream.last_error
        server = PollServer()
        app = web.Application()
        app.router.add_get("/poll/{group}/{pid}", server.poll)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await _until(lambda: stream.connected, within=2.0)
            assert stream.reconnects == 0  # the first opening is not a reconnect
        finally:
            await stream.stop()
            await runner.cleanup()
    finally:
        await stream.stop()


async def test_stream__401__not_connected_error_names_the_status(
    poll_server: tuple[PollServer, str],
) -> None:
    server, url = poll_server
    server.status = 401
    stream = EventStream(url, pid="p1", group="workers", backoff=FAST)
    await stream.start()
    try:
        await _until(lambda: server.opened == 0 and len(server.headers) >= 2)
        assert not stream.connected
        assert stream.last_error == "HTTP 401: Unauthorized: token missing"
    finally:
        await stream.stop()
