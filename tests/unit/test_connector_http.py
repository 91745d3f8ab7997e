"""The pooled keep-alive connector against a real aiohttp server on a real socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from resonate.error import ConnectorError

from service.connector.http import Endpoint, PooledHttpNetwork

type Served = tuple["Recorder", int]
type MakeNetwork = Callable[..., Awaitable[PooledHttpNetwork]]


class _NoDelay:
    def delay(self, attempt: int) -> float:
        return 0.05


class Recorder:
    """A server that echoes bodies and records what arrived on which connection."""

    def __init__(self) -> None:
        self.connections: set[tuple[str, int]] = set()  # client (host, port)
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.close_after = False
        self.chunked = False
        self.delay = 0.0
        self.hang_first = 0.0  # the first request waits this long before its reply
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.connections.add(request.transport.get_extra_info("peername"))
        self.headers.append(dict(request.headers))
        body = await request.read()
        self.requests += 1
        if self.hang_first and self.requests == 1:
            await asyncio.sleep(self.hang_first)
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Connection": "close"} if self.close_after else {}
        if self.chunked:
            resp = web.StreamResponse(status=self.status, headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 3):
                await resp.write(body[i : i + 3])
            await resp.write_eof()
            return resp
        return web.Response(body=b"echo:" + body, status=self.status, headers=headers)


async def _serve(rec: Recorder, port: int = 0) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/", rec.handle)
    app.router.add_post("/base/", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    rec = Recorder()
    runner, port = await _serve(rec)
    yield rec, port
    await runner.cleanup()


@pytest.fixture
async def network() -> AsyncIterator[MakeNetwork]:
    made: list[PooledHttpNetwork] = []

    async def make(url: str, **options: Any) -> PooledHttpNetwork:
        net = PooledHttpNetwork(url, backoff=_NoDelay(), **options)  # type: ignore[arg-type]
        await net.start()
        made.append(net)
        return net

    yield make
    for net in made:
        await net.stop()


async def test_reply_body_is_returned_whatever_the_status(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    net = await network(f"http://127.0.0.1:{port}")
    assert await net.send('{"kind":"promise.get"}') == 'echo:{"kind":"promise.get"}'
    rec.status = 409
    assert await net.send('{"a":1}') == 'echo:{"a":1}'
    assert rec.headers[0]["Content-Type"] == "application/json"


async def test_sequential_requests_share_one_keep_alive_connection(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    net = await network(f"http://127.0.0.1:{port}/")
    for i in range(50):
        assert await net.send(f'{{"i":{i}}}') == f'echo:{{"i":{i}}}'
    assert len(rec.connections) == 1


async def test_concurrent_requests_each_get_their_own_reply(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    rec.delay = 0.01
    net = await network(f"http://127.0.0.1:{port}")
    replies = await asyncio.gather(*(net.send(f'{{"i":{i}}}') for i in range(40)))
    assert replies == [f'echo:{{"i":{i}}}' for i in range(40)]
    assert 1 < len(rec.connections) <= 40


async def test_server_closing_the_connection_is_not_an_error(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    rec.close_after = True
    net = await network(f"http://127.0.0.1:{port}")
    for i in range(5):
        assert await net.send(f"{i}") == f"echo:{i}"
    assert len(rec.connections) == 5


async def test_chunked_replies_are_reassembled(server: Served, network: MakeNetwork) -> None:
    rec, port = server
    rec.chunked = True
    net = await network(f"http://127.0.0.1:{port}")
    body = '{"kind":"promise.create","data":{"id":"a-long-enough-body"}}'
    assert await net.send(body) == body


async def test_base_path_and_extra_headers_are_sent(server: Served, network: MakeNetwork) -> None:
    rec, port = server
    net = await network(f"http://127.0.0.1:{port}/base")
    sent = {"resonate:origin": "root-1", "X-Trace": "t-1", "Content-Length": "999"}
    assert await net.send("x", sent) == "echo:x"
    received = rec.headers[-1]
    assert received["X-Trace"] == "t-1"
    assert received["Content-Length"] == "1"
    # Not a valid HTTP header name; the origin travels in the envelope head.
    assert not any(name.lower().startswith("resonate") for name in received)


async def test_a_server_that_restarts_is_retried_until_it_answers(network: MakeNetwork) -> None:
    rec = Recorder()
    runner, port = await _serve(rec)
    net = await network(f"http://127.0.0.1:{port}")
    assert await net.send("before") == "echo:before"
    await runner.cleanup()  # the pooled connection dies with the server
    pending = asyncio.ensure_future(net.send("during"))
    await asyncio.sleep(0.2)
    assert not pending.done()  # refused, retrying with backoff
    runner, _ = await _serve(rec, port)
    try:
        assert await asyncio.wait_for(pending, 5) == "echo:during"
    finally:
        await runner.cleanup()


async def test_stop_ends_a_send_that_is_retrying(network: MakeNetwork) -> None:
    rec = Recorder()
    runner, port = await _serve(rec)
    await runner.cleanup()  # nothing listens on the port any more
    net = await network(f"http://127.0.0.1:{port}")
    pending = asyncio.ensure_future(net.send("x"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await net.stop()
    with pytest.raises(ConnectorError):
        await asyncio.wait_for(pending, 2)
    assert time.monotonic() - started < 1
    with pytest.raises(ConnectorError):
        await net.send("after stop")


async def test_a_cancelled_send_does_not_leak_its_reply_to_the_next(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    rec.delay = 0.3
    net = await network(f"http://127.0.0.1:{port}")
    slow = asyncio.ensure_future(net.send("slow"))
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    rec.delay = 0.0
    assert await net.send("next") == "echo:next"


@pytest.mark.parametrize(
    ("url", "endpoint", "authority"),
    [
        ("http://localhost:8001", Endpoint("localhost", 8001, False, "/"), "localhost:8001"),
        (
            "https://resonate.example/api/",
            Endpoint("resonate.example", 443, True, "/api/"),
            "resonate.example",
        ),
        ("http://[::1]:80/", Endpoint("::1", 80, False, "/"), "[::1]"),
    ],
)
def test_endpoint_parsing(url: str, endpoint: Endpoint, authority: str) -> None:
    assert Endpoint.parse(url) == endpoint
    assert endpoint.authority == authority


@pytest.mark.parametrize("url", ["ftp://host", "localhost:8001", "http://"])
def test_bad_urls_are_rejected_naming_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="RESONATE_URL"):
        Endpoint.parse(url)


async def test_a_reply_that_never_comes__idempotent_request_dropped_and_resent(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    rec.hang_first = 1.5
    net = await network(f"http://127.0.0.1:{port}", reply_timeout=0.3)
    body = '{"kind":"promise.get","head":{},"data":{"id":"a"}}'
    started = time.monotonic()
    assert await net.send(body) == "echo:" + body
    assert time.monotonic() - started < 1.2  # not held until the first reply
    assert rec.requests == 2


@pytest.mark.parametrize(
    "kind", ["task.acquire", "task.fence", "task.fulfill", "promise.create", "task.create"]
)
async def test_a_reply_that_never_comes__state_changing_request_never_resent(
    server: Served, network: MakeNetwork, kind: str
) -> None:
    rec, port = server
    rec.hang_first = 1.5
    net = await network(f"http://127.0.0.1:{port}", reply_timeout=0.3)
    with pytest.raises(ConnectorError, match=r"no reply within 0\.3 s"):
        await net.send(f'{{"kind":"{kind}","head":{{}},"data":{{"id":"a"}}}}')
    await asyncio.sleep(1.5)  # a resend would have arrived by now
    assert rec.requests == 1


async def test_token__sent_as_bearer_header_on_every_request(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    net = await network(f"http://127.0.0.1:{port}", token="t0k.e.n")
    await net.send("a")
    await net.send("b", {"Authorization": "Bearer forged"})  # a caller cannot override it
    assert [h["Authorization"] for h in rec.headers] == ["Bearer t0k.e.n"] * 2


async def _raw_server(reply: bytes, *, close: bool) -> tuple[asyncio.Server, int]:
    """A server that answers every request with the bytes ``reply``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            await reader.readexactly(1)  # the tests send one-byte bodies
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_interim_1xx_replies_are_skipped(network: MakeNetwork) -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    server, port = await _raw_server(reply, close=False)
    net = await network(f"http://127.0.0.1:{port}")
    try:
        assert await net.send("a") == "final"
        assert await net.send("b") == "final"  # not the first request's left-overs
    finally:
        server.close()


async def test_a_body_ended_by_closing_the_connection(network: MakeNetwork) -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close"
    server, port = await _raw_server(reply, close=True)
    net = await network(f"http://127.0.0.1:{port}", reply_timeout=2)
    try:
        assert await net.send("a") == "until-close"
    finally:
        server.close()


async def test_stop_ends_sends_in_flight_and_waiting_for_a_connection(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    rec.delay = 2.0
    net = await network(f"http://127.0.0.1:{port}", conn_limit=1)
    in_flight = asyncio.ensure_future(net.send("x"))
    waiting = asyncio.ensure_future(net.send("y"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await net.stop()
    for pending in (in_flight, waiting):
        with pytest.raises(ConnectorError):
            await asyncio.wait_for(pending, 1)
    assert time.monotonic() - started < 1
    assert rec.requests == 1  # the waiting one never went out


async def test_header_values_that_would_break_framing_are_not_sent(
    server: Served, network: MakeNetwork
) -> None:
    rec, port = server
    net = await network(f"http://127.0.0.1:{port}")
    sent = {"X-Ok": "fine", "X-Bad": "a\r\nX-Injected: yes"}
    assert await net.send("x", sent) == "echo:x"
    assert rec.headers[-1]["X-Ok"] == "fine"
    assert "X-Injected" not in rec.headers[-1]
    assert "X-Bad" not in rec.headers[-1]
