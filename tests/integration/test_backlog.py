"""The backlog reader against the local server, and `up --autoscale` end to end.

Also the reader against servers that refuse the searches: the stand-in that
answers as the official server v0.9.8 does (``tests/operator/search_server.py``)
and plain HTTP fronts (a proxy's 401, a missing route's 404, a 502 page).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from service.config import load_settings
from service.operator.backlog import (
    Backlog,
    BacklogCapabilityError,
    BacklogReader,
    BacklogReadError,
)
from service.runtime import build_runtime
from tests.conftest import ROOT
from tests.operator.search_server import SearchServer
from tests.ports import free_port

pytestmark = pytest.mark.slow


async def submit(url: str, group: str, count: int, tag: str) -> None:
    """Invoke enrich_one ``count`` times for ``group`` (nothing waits for the results)."""
    runtime = build_runtime(
        load_settings({"RESONATE_URL": url, "RESONATE_GROUP": group}), role="client"
    )
    runtime.start()
    try:
        handles = [
            runtime.resonate.options(target=group).rpc(f"{tag}-{group}-{i}", "enrich_one", i)
            for i in range(count)
        ]
        await asyncio.gather(*(h.id() for h in handles))
    finally:
        await runtime.stop()


async def wait_for(reader: BacklogReader, group: str, check: Any, within: float = 20) -> Backlog:
    deadline = time.monotonic() + within
    seen = await reader.read(group)
    while not check(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"backlog of {group} stayed at {seen}")
        await asyncio.sleep(0.05)
        seen = await reader.read(group)
    return seen


async def test_backlog__two_groups_pending_then_acquired_then_zero(stacks: Any) -> None:
    server = await stacks(0, group="alpha", name="server")
    url = server.plan.url
    await submit(url, "alpha", 7, "a")
    await submit(url, "beta", 4, "b")
    reader = BacklogReader(url)
    paged = BacklogReader(url, page_size=3)
    try:
        assert await reader.read_groups(["alpha", "beta", "gamma"]) == {
            "alpha": Backlog(pending=7, acquired=0),
            "beta": Backlog(pending=4, acquired=0),
            "gamma": Backlog(pending=0, acquired=0),
        }
        # Paging: 3 per page, cursors followed to the end.
        assert await paged.read("alpha") == Backlog(pending=7, acquired=0)
        assert len(await paged.task_ids("pending")) == 11
        # Workers join alpha; each step takes a while, so tasks are seen acquired.
        await stacks(
            2,
            group="alpha",
            server_url=url,
            name="alpha",
            env={"RESONATE_PATTERNS_STEP_DELAY_MS": "1500"},
        )
        running = await wait_for(reader, "alpha", lambda b: b.acquired > 0)
        assert running.total <= 7
        await wait_for(reader, "alpha", lambda b: b.total == 0)
        assert await reader.read("beta") == Backlog(pending=4, acquired=0)
    finally:
        await reader.close()
        await paged.close()


async def test_backlog__server_down__clear_error() -> None:
    reader = BacklogReader("http://127.0.0.1:9", timeout_seconds=2)
    try:
        with pytest.raises(
            BacklogReadError, match=r"cannot read task.search from http://127.0.0.1:9"
        ):
            await reader.read("workers")
    finally:
        await reader.close()


@pytest.fixture
def official() -> Iterator[SearchServer]:
    """The stand-in answering searches as v0.9.8 does; auth on with one good token."""
    server = SearchServer(token="good", forbidden_tokens=frozenset({"scoped"})).start()
    server.promises = {"w-1": "workers", "w-2": "workers", "o-1": "others"}
    yield server
    server.stop()


async def read_with(url: str, token: str | None) -> Backlog:
    reader = BacklogReader(url, token=token, timeout_seconds=5)
    try:
        return await reader.read("workers")
    finally:
        await reader.close()


async def test_backlog__token__in_head_auth_and_bearer_header(official: SearchServer) -> None:
    assert await read_with(official.url, "good") == Backlog(pending=2, acquired=0)
    kinds = [s.kind for s in official.seen]
    assert kinds == ["task.search", "task.search", "promise.search"]
    assert {(s.head_auth, s.authorization) for s in official.seen} == {("good", "Bearer good")}


async def test_backlog__no_token__no_auth_sent() -> None:
    server = SearchServer().start()  # auth off
    try:
        assert await read_with(server.url, None) == Backlog(pending=0, acquired=0)
        assert {(s.head_auth, s.authorization) for s in server.seen} == {(None, None)}
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("token", "status", "reason", "starts"),
    [
        ("bad", 401, "Unauthorized", "the server refused the token: task.search on "),
        (None, 401, "Unauthorized", "the server requires a token: task.search on "),
        ("scoped", 403, "Forbidden", "the server refused the token: task.search on "),
    ],
)
async def test_backlog__official_auth_refusals__capability_error(
    official: SearchServer, token: str | None, status: int, reason: str, starts: str
) -> None:
    with pytest.raises(BacklogCapabilityError) as caught:
        await read_with(official.url, token)
    error = caught.value
    assert (error.status, error.reason, error.kind) == (status, reason, "task.search")
    assert error.server_message == {401: "Unauthorized", 403: "Forbidden"}[status]
    assert str(error).startswith(starts)
    assert len(official.seen) == 1, "a refusal is not retried within the read"


async def test_backlog__official_unknown_operation__capability_error(
    official: SearchServer,
) -> None:
    official.task_search = False
    with pytest.raises(BacklogCapabilityError) as caught:
        await read_with(official.url, "good")
    error = caught.value
    assert (error.status, error.reason, error.kind, error.server_message) == (
        400,
        "Unsupported",
        "task.search",
        "Unknown operation: task.search",
    )


async def test_backlog__local_server_unknown_operation__same_answer_as_official(
    stacks: Any,
) -> None:
    """The local server refuses an unknown kind with the official status and wording."""
    server = await stacks(0, group="alpha", name="server")
    reader = BacklogReader(server.plan.url)
    try:
        with pytest.raises(BacklogCapabilityError) as caught:
            await reader._pages("schedule.nope", "items", {})
    finally:
        await reader.close()
    assert (caught.value.status, caught.value.server_message) == (
        400,
        "Unknown operation: schedule.nope",
    )


@pytest.fixture
async def front() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A plain HTTP server answering ``POST /`` with whatever the test sets."""
    answer: dict[str, Any] = {"status": 200, "body": "", "type": "text/plain"}

    async def handle(_: web.Request) -> web.Response:
        return web.Response(
            status=answer["status"], text=answer["body"], content_type=answer["type"]
        )

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", answer
    await runner.cleanup()


def _envelope(status: int, data: Any) -> str:
    return json.dumps(
        {
            "kind": "task.search",
            "head": {"corrId": "c", "status": status, "version": "x"},
            "data": data,
        }
    )


@pytest.mark.parametrize(
    ("status", "body", "content_type", "reason"),
    [
        (401, "<html><h1>401 Authorization Required</h1></html>", "text/html", "Unauthorized"),
        (403, "forbidden by policy", "text/plain", "Forbidden"),
        (404, "404 page not found", "text/plain", "Unsupported"),
        (501, "Not Implemented", "text/plain", "Unsupported"),
        (501, _envelope(501, "task.search is not implemented"), "application/json", "Unsupported"),
        (500, _envelope(500, "database is locked"), "application/json", None),
        (502, "<html><h1>502 Bad Gateway</h1></html>", "text/html", None),
        (503, "upstream connect error", "text/plain", None),
        (400, _envelope(400, "Invalid request envelope: bad"), "application/json", None),
        (200, "not json", "text/plain", None),
    ],
)
async def test_backlog__http_fronts__capability_only_for_refusals(
    front: tuple[str, dict[str, Any]],
    status: int,
    body: str,
    content_type: str,
    reason: str | None,
) -> None:
    url, answer = front
    answer.update(status=status, body=body, type=content_type)
    with pytest.raises(BacklogReadError) as caught:
        await read_with(url, "good")
    error = caught.value
    if reason is None:
        assert not isinstance(error, BacklogCapabilityError), error
    else:
        assert isinstance(error, BacklogCapabilityError)
        assert (error.status, error.reason) == (status, reason)
        assert "\n" not in str(error)
        assert len(error.server_message) <= 200


async def test_up_autoscale__workers_follow_the_backlog(tmp_path: Any) -> None:
    """`up --autoscale`: 1 worker, a burst of slow tasks, up to 4 workers, back to 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    env |= {
        "RESONATE_PATTERNS_DATA_DIR": str(tmp_path),
        "RESONATE_PATTERNS_STEP_DELAY_MS": "1000",
        "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS": "4",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "up",
            "--port",
            "0",
            "--workers",
            "1",
            "--autoscale",
            "--min-workers",
            "1",
            "--max-workers",
            "4",
            "--target-tasks",
            "5",
            "--scale-down-window",
            "2",
            "--cooldown",
            "0",
            "--poll",
            "0.3",
            "--data",
            ":memory:",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []

    async def read_until(pattern: str, within: float) -> str:
        deadline = time.monotonic() + within
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), remaining)
            except TimeoutError:
                break
            if not line:
                break
            lines.append(line.rstrip())
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(lines))

    try:
        server_line = await read_until(r"^server ", 30)
        url = server_line.split()[1]
        await read_until(r"^autoscaling group 'workers'", 10)
        burst = time.monotonic()
        await submit(url, "workers", 40, "burst")
        up = await read_until(r"scaled up 1 -> 4", 15)
        reacted_up = time.monotonic() - burst
        assert "backlog" in up
        down = await read_until(r"scaled down \d -> 1", 60)
        assert "-> 1" in down
        assert reacted_up < 5, f"took {reacted_up:.1f}s to scale up"
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 60)
    assert proc.returncode == 0
