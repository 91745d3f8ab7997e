"""The local server's ``POST /`` fast path, byte for byte on a raw socket.

Every connection starts on the fast path; the first request that is not
``POST /`` moves it to aiohttp. These tests pin down the HTTP/1.1 behaviour a
client in any language relies on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httptools
import jwt
import pytest
import structlog.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from resonate_base import PROTOCOL_VERSION

from service.devserver.auth import AuthOptions, Verifier
from service.devserver.server import MAX_BODY_BYTES, DevServer, ServerOptions

pytestmark = pytest.mark.slow


def envelope(promise_id: str, corr: str = "c1") -> bytes:
    return json.dumps(
        {
            "kind": "promise.get",
            "head": {"corrId": corr, "version": PROTOCOL_VERSION},
            "data": {"id": promise_id},
        }
    ).encode()


def post(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Replies:
    """Parses the responses arriving on one connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.replies = Replies()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def expect(self, count: int) -> list[tuple[int, dict[str, str], bytes]]:
        while len(self.replies.done) < count:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                break
            self.replies.parser.feed_data(data)
        return self.replies.done[:count]

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(65536), 5) == b""


type Connect = Callable[[], Awaitable[Conn]]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[DevServer, int]]:
    srv = DevServer(ServerOptions(data=str(tmp_path / "fast.db")))
    port = await srv.start("127.0.0.1", 0)
    yield srv, port
    await srv.stop()


@pytest.fixture
async def connect(server: tuple[DevServer, int]) -> AsyncIterator[Connect]:
    _, port = server
    opened: list[Conn] = []

    async def make() -> Conn:
        conn = Conn(*await asyncio.open_connection("127.0.0.1", port))
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.writer.close()


async def test_keep_alive__many_requests_on_one_connection(connect: Connect) -> None:
    conn = await connect()
    for i in range(5):
        await conn.send(post(envelope("nope", corr=f"c{i}")))
    replies = await conn.expect(5)
    assert [status for status, _, _ in replies] == [404] * 5
    assert [json.loads(body)["head"]["corrId"] for _, _, body in replies] == [
        f"c{i}" for i in range(5)
    ]
    assert all(h["content-type"] == "application/json" for _, h, _ in replies)


async def test_pipelined_posts__answered_in_order(connect: Connect) -> None:
    conn = await connect()
    await conn.send(b"".join(post(envelope("x", corr=f"p{i}")) for i in range(8)))
    replies = await conn.expect(8)
    assert [json.loads(b)["head"]["corrId"] for _, _, b in replies] == [f"p{i}" for i in range(8)]


def create(promise_id: str, corr: str) -> bytes:
    return json.dumps(
        {
            "kind": "promise.create",
            "head": {"corrId": corr, "version": PROTOCOL_VERSION},
            "data": {"id": promise_id, "timeoutAt": 2**62},
        }
    ).encode()


async def test_pipelined_writes_and_reads__answered_in_order_each_after_its_commit(
    connect: Connect,
) -> None:
    # Writes are answered from the group commit, reads at once: the replies
    # still come back in request order, and a read sees the write before it.
    conn = await connect()
    bodies = [create("w1", "a"), envelope("w1", "b"), create("w2", "c"), envelope("w2", "d")]
    await conn.send(b"".join(post(b) for b in bodies))
    replies = await conn.expect(4)
    assert [json.loads(b)["head"]["corrId"] for _, _, b in replies] == ["a", "b", "c", "d"]
    assert [status for status, _, _ in replies] == [200] * 4


async def test_a_failed_commit__500_for_the_request_and_nothing_answered_early(
    server: tuple[DevServer, int], connect: Connect
) -> None:
    srv, _ = server
    store = srv.engine.store
    assert store is not None

    def broken(batch: object) -> None:
        raise OSError("disk gone")

    store.write = broken  # type: ignore[method-assign]
    conn = await connect()
    try:
        with structlog.testing.capture_logs() as logs:
            await conn.send(post(create("lost", "c1")))
            status, _, body = (await conn.expect(1))[0]
    finally:
        del store.write  # the server's own stop commits again
    assert status == 500
    assert json.loads(body)["data"] == "Internal error: disk gone"
    assert [e["error"] for e in logs if e["event"] == "request_failed"] == ["disk gone"]


async def test_other_requests_are_handed_to_aiohttp_mid_connection(connect: Connect) -> None:
    conn = await connect()
    await conn.send(post(envelope("x")))
    await conn.expect(1)
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    await conn.send(b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n")
    await conn.send(post(envelope("x", corr="after")))  # aiohttp's own POST / route now
    status, _, body = (await conn.expect(2))[1]
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    replies = await conn.expect(4)
    assert replies[2][0] == 404
    assert replies[3][0] == 404
    assert json.loads(replies[3][2])["head"]["corrId"] == "after"


async def test_first_request_not_an_api_call_goes_to_aiohttp(connect: Connect) -> None:
    conn = await connect()
    await conn.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = (await conn.expect(1))[0]
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"resonate_devserver_requests_total" in body
    await conn.send(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    assert (await conn.expect(2))[1][0] == 405


async def test_connection_close_and_http10__closed_after_the_reply(connect: Connect) -> None:
    conn = await connect()
    await conn.send(post(envelope("x"), "Connection: close"))
    replies = await conn.expect(1)
    assert replies[0][1]["connection"] == "close"
    assert await conn.closed_by_server()
    old = await connect()
    body = envelope("x")
    await old.send(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert (await old.expect(1))[0][0] == 404
    assert await old.closed_by_server()


async def test_expect_100_continue__body_sent_after_the_interim_reply(connect: Connect) -> None:
    conn = await connect()
    body = envelope("x", corr="cont")
    await conn.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % len(body)
    )
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    await conn.send(body)
    status, _, out = (await conn.expect(1))[0]
    assert status == 404
    assert json.loads(out)["head"]["corrId"] == "cont"


async def test_chunked_request_body(connect: Connect) -> None:
    conn = await connect()
    body = envelope("x", corr="chunked")
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    await conn.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    status, _, out = (await conn.expect(1))[0]
    assert status == 404
    assert json.loads(out)["head"]["corrId"] == "chunked"


async def test_oversized_body__413_envelope_and_the_connection_stays_usable(
    connect: Connect,
) -> None:
    conn = await connect()
    await conn.send(post(b"x" * (MAX_BODY_BYTES + 1)))
    await conn.send(post(envelope("x", corr="next")))
    big, nxt = await conn.expect(2)
    assert big[0] == 413
    assert "larger than" in json.loads(big[2])["data"]
    assert json.loads(nxt[2])["head"]["corrId"] == "next"


async def test_garbage__answered_400_by_aiohttp_and_server_keeps_serving(connect: Connect) -> None:
    conn = await connect()
    await conn.send(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert (await conn.expect(1))[0][0] == 400
    fresh = await connect()
    await fresh.send(post(envelope("x")))
    assert (await fresh.expect(1))[0][0] == 404


async def test_non_api_request_pipelined_behind_a_post__400_and_closed(connect: Connect) -> None:
    conn = await connect()
    await conn.send(post(envelope("x")) + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while True:
        chunk = await asyncio.wait_for(conn.reader.read(65536), 5)
        if not chunk:
            break
        data += chunk
    # The POST before it is answered first, then the refusal.
    assert data.index(b"HTTP/1.1 404") < data.index(b"HTTP/1.1 400 Bad Request")
    assert b"must also be POST /" in data


async def test_http10_keep_alive__echoed_and_connection_kept(connect: Connect) -> None:
    conn = await connect()
    body = envelope("x", corr="one")
    request = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
    await conn.send(request % (len(body), body))
    first = (await conn.expect(1))[0]
    assert first[1]["connection"] == "keep-alive"
    body = envelope("x", corr="two")
    await conn.send(request % (len(body), body))
    assert json.loads((await conn.expect(2))[1][2])["head"]["corrId"] == "two"


async def test_expect_100_with_an_oversized_length__no_interim_reply(connect: Connect) -> None:
    conn = await connect()
    await conn.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % (MAX_BODY_BYTES + 1)
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.reader.read(1), 0.3)  # no 100 Continue: don't upload it
    await conn.send(b"x" * (MAX_BODY_BYTES + 1))
    assert (await conn.expect(1))[0][0] == 413


async def test_expect_100_behind_a_pipelined_request__after_its_reply(connect: Connect) -> None:
    conn = await connect()
    later = envelope("x", corr="later")
    await conn.send(
        post(envelope("x", corr="first"))
        + b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % len(later)
    )
    data = b""
    while b"100 Continue" not in data:
        data += await asyncio.wait_for(conn.reader.read(65536), 5)
    assert data.index(b"HTTP/1.1 404") < data.index(b"HTTP/1.1 100 Continue")


async def test_a_failing_api_handler__500_and_closed(
    server: tuple[DevServer, int], connect: Connect
) -> None:
    srv, _ = server

    def broken(body: bytes | None, done: Callable[[int, bytes], None]) -> None:
        raise RuntimeError("boom")

    srv.answer = broken  # type: ignore[method-assign]
    conn = await connect()
    with structlog.testing.capture_logs() as logs:
        await conn.send(post(envelope("x")))
        status, headers, body = (await conn.expect(1))[0]
    assert [e["error"] for e in logs if e["event"] == "request_failed"] == ["boom"], "logged"
    assert status == 500
    assert headers["connection"] == "close"
    assert json.loads(body)["head"]["status"] == 500
    assert await conn.closed_by_server()


async def test_a_long_body_is_not_kept_twice(
    server: tuple[DevServer, int], connect: Connect
) -> None:
    srv, _ = server
    conn = await connect()
    await conn.send(post(b"x" * (MAX_BODY_BYTES + 1))[: 2 * 1024 * 1024])  # headers + 2 MiB
    await asyncio.sleep(0.2)
    (fast,) = srv._fast
    assert fast._raw == []  # only a request that may be handed off is kept raw


async def test_auth__enforced_on_the_fast_path_and_after_the_hand_off_to_aiohttp(
    tmp_path: Path,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    srv = DevServer(ServerOptions(auth=Verifier.load(AuthOptions(str(pem)))))
    port = await srv.start("127.0.0.1", 0)
    good = jwt.encode({"exp": int(time.time()) + 600, "prefix": ""}, key, algorithm="EdDSA")

    def signed(auth: str | None) -> bytes:
        body = json.loads(envelope("x"))
        if auth is not None:
            body["head"]["auth"] = auth
        return post(json.dumps(body).encode())

    conn = Conn(*await asyncio.open_connection("127.0.0.1", port))
    try:
        # Fast path (the connection's first requests are POST /).
        await conn.send(signed(None) + signed("bad") + signed(good))
        await conn.expect(3)
        # aiohttp path: after a GET, the same connection is served by aiohttp.
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await conn.expect(4)
        assert srv._fast == set(), "the connection was handed to aiohttp"
        await conn.send(signed(None) + signed(good))
        replies = await conn.expect(6)
    finally:
        conn.writer.close()
        await srv.stop()
    statuses = [status for status, _, _ in replies]
    assert statuses == [401, 401, 404, 200, 401, 404]
    for status, _, body in replies:
        if status == 401:
            assert json.loads(body)["data"] == "Unauthorized"


#: Client mistakes that once escaped the decoder as a 500: bytes that are not
#: UTF-8 inside a JSON string, and JSON nested past the decoder's recursion.
CLIENT_MISTAKES = {
    "invalid_utf8": b'{"kind":"\xff"}',
    "invalid_utf8_in_id": b'{"kind":"promise.get","head":{"corrId":"1"},"data":{"id":"\xfe"}}',
    "nested_50k": b"[" * 50_000 + b"]" * 50_000,
    "nested_100k": b'{"kind":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("path", ["fast", "aiohttp"])
@pytest.mark.parametrize("name", sorted(CLIENT_MISTAKES))
async def test_client_mistake__400_and_a_log_line_on_both_paths(
    connect: Connect, path: str, name: str
) -> None:
    conn = await connect()
    expected = 1
    if path == "aiohttp":  # a non-API request hands the connection to aiohttp
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        expected = 2
    with structlog.testing.capture_logs() as logs:
        await conn.send(post(CLIENT_MISTAKES[name]))
        status, _, body = (await conn.expect(expected))[-1]
    assert status == 400, body
    assert json.loads(body)["head"]["status"] == 400
    refused = [e for e in logs if e["event"] == "request_refused"]
    assert len(refused) == 1, logs
    assert refused[0]["status"] == 400
    # The connection and the server keep serving.
    await conn.send(post(envelope("nope", corr="after")))
    assert (await conn.expect(expected + 1))[-1][0] == 404


async def test_fast_path_off__aiohttp_answers_post_with_the_same_envelopes(tmp_path: Path) -> None:
    # The benchmark's baseline (bench/devserver_fastpath.py): the same server
    # with aiohttp serving every request, replies byte for byte the same.
    bodies: dict[bool, list[bytes]] = {}
    for fast_path in (True, False):
        srv = DevServer(ServerOptions(data=str(tmp_path / f"{fast_path}.db"), fast_path=fast_path))
        port = await srv.start("127.0.0.1", 0)
        try:
            conn = Conn(*await asyncio.open_connection("127.0.0.1", port))
            await conn.send(post(envelope("nope", corr="a")) + post(b"{", "X-Try: 1"))
            replies = await conn.expect(2)
            # The connection is on the fast path only when it is on.
            assert len(srv._fast) == (1 if fast_path else 0)
            conn.writer.close()
        finally:
            await srv.stop()
        assert [status for status, _, _ in replies] == [404, 400]
        bodies[fast_path] = [body for _, _, body in replies]
    assert bodies[True] == bodies[False]
    assert json.loads(bodies[False][0])["data"] == "Promise not found"
