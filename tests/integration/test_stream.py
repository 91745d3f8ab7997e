"""The event stream with real processes: cut streams reconnect, and nothing goes deaf after 300 s.

The soak test (marker ``soak``, about 6 minutes) is run by ``make test`` beside
the rest of the suite; ``pytest -m "not soak"`` leaves it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.client import invoke
from service.patterns.registry import pattern
from tests.conftest import ROOT
from tests.integration.conftest import log_events, scrape, total, worker_url

pytestmark = pytest.mark.slow

RECONNECTS = "resonate_patterns_event_stream_reconnects_total"
CONNECTED = "resonate_patterns_event_stream_connected"


async def _ready(stack: Any, index: int = 0) -> int:
    url = worker_url(stack, index).replace("/metrics", "/readyz")
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status


async def _call(url: str, *args: str, wait: float) -> tuple[int, str, str, float]:
    """Run the real ``call`` command; (exit code, stdout, stderr, seconds)."""
    env = {**os.environ, "RESONATE_URL": url}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "call",
        *args,
        "--json",
        "--timeout",
        str(wait),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def test_server_killed_and_restarted__worker_not_ready_then_reconnects_within_seconds(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(1)
    assert await _ready(stack) == 200
    supervise = asyncio.Event()
    supervisor = asyncio.create_task(stack.supervise(supervise))
    try:
        os.kill(stack.server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        saw_not_ready = False
        async with asyncio.timeout(15):
            while True:
                status = await _ready(stack)
                saw_not_ready = saw_not_ready or status == 503
                if saw_not_ready and status == 200:
                    break
                await asyncio.sleep(0.05)
        back_after = time.monotonic() - killed_at
    finally:
        supervise.set()
        await supervisor
    assert saw_not_ready
    # The supervisor restarts the server after its first backoff (0.5 s); the
    # stream is open again within a few seconds of that.
    assert back_after < 5, f"ready again {back_after:.1f}s after the kill"
    samples = await scrape(worker_url(stack, 0))
    assert total(samples, RECONNECTS) == 1.0
    assert total(samples, CONNECTED) == 1.0
    client = clients(stack.plan.url)
    result = await asyncio.wait_for(invoke(client, pattern("factorial"), (12,)), 10)
    assert result.result == math.factorial(12)


@pytest.mark.soak
async def test_soak__worker_and_a_waiting_call_still_work_after_five_minutes(stacks: Any) -> None:
    # process_bounded with k=1: 31 children of 10 s each, so the call waits 310 s,
    # past the 300 s after which the SDK's own event stream went deaf.
    stack = await stacks(1, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "10000"})
    items = [str(i) for i in range(1, 32)]
    code, out, err, seconds = await _call(stack.plan.url, "process_bounded", "1", *items, wait=600)
    assert (code, err.strip()) == (0, "")
    answer = json.loads(out)
    assert answer["result"] == [i * i for i in range(1, 32)]
    assert answer["cached"] is False
    assert seconds > 305
    # The worker still receives work after five minutes on one stream (one
    # dispatched execution: the 10 s step plus delivery) ...
    code, out, err, seconds = await _call(stack.plan.url, "process_one", "7", wait=60)
    assert (code, err.strip()) == (0, "")
    assert json.loads(out)["result"] == 49
    assert seconds < 20
    # ... on the stream it opened at start: it never had to reconnect.
    samples = await scrape(worker_url(stack, 0))
    assert total(samples, CONNECTED) == 1.0
    assert total(samples, RECONNECTS) == 0.0
    assert await _ready(stack) == 200


async def test_worker_with_a_refused_token__not_ready_one_error_line_per_attempt_clean_exit(
    tmp_path: Path,
) -> None:
    from service.devserver.auth import AuthOptions, Verifier
    from service.devserver.server import DevServer, ServerOptions
    from tests.integration.test_devserver_auth import AUD, ISS, RSA_KEY, public_pem, token
    from tests.ports import free_port

    verifier = Verifier.load(AuthOptions(public_pem(RSA_KEY, tmp_path / "pub.pem"), ISS, AUD))
    server = DevServer(ServerOptions(auth=verifier))
    port = await server.start("127.0.0.1", 0)
    http_port = free_port()
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "RESONATE_URL": f"http://127.0.0.1:{port}",
        "RESONATE_TOKEN": token(prefix="", exp=int(time.time()) - 3600),  # expired
        "RESONATE_PATTERNS_HTTP_PORT": str(http_port),
        "RESONATE_PATTERNS_LOG_FORMAT": "json",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "worker", cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{http_port}/readyz") as resp:
                        statuses.append(resp.status)
                await asyncio.sleep(0.1)
        assert statuses, "the worker never served /readyz"
        assert set(statuses) == {503}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await server.stop()
    assert code == 0
    events = log_events(log)
    refused = [e for e in events if e["event"] == "event_stream_refused"]
    assert refused
    assert {(e["level"], e["status"], e["error"]) for e in refused} == {
        ("error", 401, "Unauthorized")
    }
    assert "Traceback" not in log.read_text()
