"""The local server over HTTP: bad input (fuzzed), streams, durability, health, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resonate_base import PROTOCOL_VERSION

from service.devserver.dispatch import KINDS
from service.devserver.server import MAX_BODY_BYTES, DevServer, ServerOptions
from tests.integration.conftest import read_sse

pytestmark = pytest.mark.slow

CANARY = "canary"


def env(kind: str, data: Any, corr: str = "c1", version: str = PROTOCOL_VERSION) -> dict[str, Any]:
    return {"kind": kind, "head": {"corrId": corr, "version": version}, "data": data}


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def raw(self, body: bytes) -> tuple[int, Any]:
        async with self.session.post(self.base + "/", data=body) as resp:
            text = await resp.text()
            return resp.status, json.loads(text)

    async def send(self, envelope: Any) -> dict[str, Any]:
        status, out = await self.raw(json.dumps(envelope).encode())
        assert status == out["head"]["status"]
        return out


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[DevServer, Client]]:
    srv = DevServer(ServerOptions(data=str(tmp_path / "fuzz.db")))
    port = await srv.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        client = Client(session, f"http://127.0.0.1:{port}")
        await client.send(env("promise.create", {"id": CANARY, "timeoutAt": 1 << 60, "tags": {}}))
        await client.send(
            env("promise.settle", {"id": CANARY, "state": "resolved", "value": {"data": "eQ=="}})
        )
        yield srv, client
    await srv.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "id",
    "timeoutAt",
    "param",
    "value",
    "tags",
    "state",
    "pid",
    "ttl",
    "version",
    "action",
    "actions",
    "awaited",
    "awaiter",
    "address",
    "limit",
    "cursor",
    "tasks",
    "cron",
    "promiseId",
]
data_dicts = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
envelopes = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([*KINDS, "", "promise.delete", "x"]) | st.text(max_size=10),
        "head": st.fixed_dictionaries(
            {
                "corrId": st.text(max_size=5) | st.integers(),
                "version": st.sampled_from([PROTOCOL_VERSION, "1.0.0", ""]),
            }
        )
        | json_values,
        "data": data_dicts | json_values,
    }
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.binary(max_size=200) | envelopes.map(lambda e: json.dumps(e).encode()))
async def test_fuzz__any_body__4xx_envelope_never_5xx_and_nothing_lost(
    server: tuple[DevServer, Client], body: bytes
) -> None:
    _, client = server
    status, out = await client.raw(body)
    assert status < 500, out
    assert out["head"]["status"] == status
    if status >= 400:
        assert isinstance(out["data"], str), "errors carry a message"
        assert out["data"]
    canary = await client.send(env("promise.get", {"id": CANARY}))
    assert canary["data"]["promise"]["state"] == "resolved"
    assert canary["data"]["promise"]["value"] == {"data": "eQ=="}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "Invalid request envelope"),
        (b"[]", 400, "Invalid request envelope"),
        (json.dumps(env("promise.nope", {})).encode(), 400, "Unknown operation: promise.nope"),
        (json.dumps(env("promise.get", {})).encode(), 400, "'id' must be a non-empty string"),
        (json.dumps(env("promise.get", [])).encode(), 400, "Invalid 'data' field"),
        (
            json.dumps(env("promise.get", {"id": "x"}, version="1.0")).encode(),
            400,
            "Unsupported protocol version '1.0'",
        ),
        (
            json.dumps(env("promise.create", {"id": "a\u0000b", "timeoutAt": 1})).encode(),
            400,
            "Promise ID must not contain null bytes",
        ),
        (
            json.dumps(
                env(
                    "promise.create",
                    {"id": "o:1", "timeoutAt": 1, "tags": {"resonate:origin": "p"}},
                )
            ).encode(),
            400,
            "Promise ID must be prefixed by resonate:origin",
        ),
        (
            json.dumps(env("promise.settle", {"id": CANARY, "state": "done"})).encode(),
            400,
            "'state' must be one of",
        ),
        (
            json.dumps(env("promise.search", {"limit": 5000})).encode(),
            400,
            "must be between 1 and 1000",
        ),
        (
            json.dumps(
                env("task.acquire", {"id": "none", "version": 0, "pid": "p", "ttl": 5})
            ).encode(),
            404,
            "Task not found",
        ),
    ],
)
async def test_bad_requests__clear_4xx_messages(
    server: tuple[DevServer, Client], body: bytes, status: int, message: str
) -> None:
    _, client = server
    got_status, out = await client.raw(body)
    assert got_status == status
    assert message in out["data"]


async def test_oversized_body__413_envelope(server: tuple[DevServer, Client]) -> None:
    _, client = server
    status, out = await client.raw(b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413
    assert "larger than" in out["data"]


async def test_health_ready_metrics(server: tuple[DevServer, Client]) -> None:
    _, client = server
    for path in ("/healthz", "/readyz", "/health", "/ready"):
        async with client.session.get(client.base + path) as resp:
            assert resp.status == 200
    async with client.session.get(client.base + "/metrics") as resp:
        text = await resp.text()
    assert 'resonate_devserver_requests_total{kind="promise.create",status="200"}' in text
    assert 'resonate_devserver_promises{state="resolved"} 1.0' in text
    assert "resonate_devserver_request_duration_seconds_bucket" in text
    assert "resonate_devserver_connected_workers" in text


async def create_work(client: Client, promise_id: str, group: str) -> None:
    """A promise with a task routed to ``group`` (its execute goes to a member)."""
    target = {"resonate:target": f"poll://any@{group}"}
    await client.send(
        env("promise.create", {"id": promise_id, "timeoutAt": 1 << 60, "tags": target})
    )


async def _stream(session: aiohttp.ClientSession, url: str, into: list[dict[str, Any]]) -> None:
    await read_sse(session, url, into.append)


async def _until(predicate: Any, within: float = 3.0) -> None:
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_stream__anycast_one_member_uni_one_process_and_held_until_connect(
    server: tuple[DevServer, Client],
) -> None:
    _, client = server
    # Work for a group nobody listens to yet is kept...
    for i in range(4):
        await create_work(client, f"job{i}", "g1")
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    ta = asyncio.create_task(_stream(client.session, client.base + "/poll/g1/a", a))
    await _until(lambda: len(a) == 4)
    assert sorted(m["data"]["task"]["id"] for m in a) == [f"job{i}" for i in range(4)]
    tb = asyncio.create_task(_stream(client.session, client.base + "/poll/g1/b", b))
    await asyncio.sleep(0.1)
    # ...then each new message goes to exactly one member.
    for i in range(4, 10):
        await create_work(client, f"job{i}", "g1")
    await _until(lambda: len(a) + len(b) == 10)
    ids = [m["data"]["task"]["id"] for m in a + b]
    assert sorted(ids) == sorted(f"job{i}" for i in range(10))
    assert len(b) >= 1, "round robin reaches the second member"
    # Unicast: a listener address names one process.
    await client.send(
        env("promise.register_listener", {"awaited": "job0", "address": "poll://uni@g1/b"})
    )
    await client.send(env("promise.settle", {"id": "job0", "state": "resolved"}))
    await _until(lambda: any(m["kind"] == "unblock" for m in b))
    assert not any(m["kind"] == "unblock" for m in a)
    ta.cancel()
    tb.cancel()


async def test_stream_disconnect__tasks_released_at_once(server: tuple[DevServer, Client]) -> None:
    srv, client = server
    await create_work(client, "held", "g2")
    got: list[dict[str, Any]] = []
    stream = asyncio.create_task(_stream(client.session, client.base + "/poll/g2/w1", got))
    await _until(lambda: len(got) == 1)
    acquired = await client.send(
        env("task.acquire", {"id": "held", "version": 0, "pid": "w1", "ttl": 600_000})
    )
    assert acquired["data"]["task"]["state"] == "acquired"
    stream.cancel()
    await _until(lambda: srv.engine.state.tasks["held"].state == "pending", within=2)
    other: list[dict[str, Any]] = []
    second = asyncio.create_task(_stream(client.session, client.base + "/poll/g2/w2", other))
    await _until(lambda: len(other) == 1)
    assert other[0]["data"]["task"] == {"id": "held", "version": 1}
    second.cancel()


async def test_durable__restart_keeps_promises_and_resumes_pending_tasks(tmp_path: Path) -> None:
    path = str(tmp_path / "restart.db")
    srv = DevServer(ServerOptions(data=path))
    port = await srv.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        client = Client(session, f"http://127.0.0.1:{port}")
        await client.send(env("promise.create", {"id": "kept", "timeoutAt": 1 << 60}))
        await client.send(
            env("promise.settle", {"id": "kept", "state": "resolved", "value": {"data": "MQ=="}})
        )
        await create_work(client, "todo", "g3")
    # Simulate a crash: drop the server without its orderly shutdown.
    assert srv._runner is not None
    await srv._runner.cleanup()
    srv.engine.store.close()  # type: ignore[union-attr]
    again = DevServer(ServerOptions(data=path))
    port = await again.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        client = Client(session, f"http://127.0.0.1:{port}")
        kept = await client.send(env("promise.get", {"id": "kept"}))
        assert kept["data"]["promise"]["state"] == "resolved"
        assert kept["data"]["promise"]["value"] == {"data": "MQ=="}
        got: list[dict[str, Any]] = []
        stream = asyncio.create_task(_stream(session, client.base + "/poll/g3/w", got))
        await _until(lambda: len(got) == 1)
        assert got[0]["data"]["task"]["id"] == "todo"
        stream.cancel()
    await again.stop()


async def test_search__state_tags_limit_cursor(server: tuple[DevServer, Client]) -> None:
    _, client = server
    for i in range(25):
        tags = {"team": "a" if i % 2 else "b"}
        await client.send(
            env("promise.create", {"id": f"s{i:02d}", "timeoutAt": 1 << 60, "tags": tags})
        )
    seen: list[str] = []
    cursor = None
    while True:
        data: dict[str, Any] = {"state": "pending", "tags": {"team": "a"}, "limit": 5}
        if cursor:
            data["cursor"] = cursor
        page = (await client.send(env("promise.search", data)))["data"]
        seen += [p["id"] for p in page["promises"]]
        cursor = page.get("cursor")
        if cursor is None:
            break
    assert seen == [f"s{i:02d}" for i in range(25) if i % 2]
    tasks = await client.send(env("task.search", {"state": "pending", "limit": 1000}))
    assert tasks["head"]["status"] == 200


async def test_server_process__sigterm_with_streams_open__exits_within_its_grace(
    tmp_path: Path,
) -> None:
    """D4: ``resonate-patterns server`` stops on SIGTERM although workers' streams are open."""
    import signal
    import sys
    import time

    from tests.conftest import ROOT, wait_until_ok
    from tests.ports import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "server",
        "--port",
        str(port),
        "--data",
        str(tmp_path / "d4.db"),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_ok(f"http://127.0.0.1:{port}/readyz")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            streams = [
                await session.get(f"http://127.0.0.1:{port}/poll/workers/p{i}") for i in range(3)
            ]
            assert all(s.status == 200 for s in streams)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10)
            assert code == 0
            assert time.monotonic() - started < 5, "stopped within its grace"
            for s in streams:
                s.release()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
