"""The backlog API (KEDA's ``metrics-api`` source) as a real process against the local server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.conftest import scrape, total
from tests.integration.test_backlog import submit
from tests.ports import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def backlog_api() -> Iterator[Any]:
    """Start ``resonate-patterns backlog-api`` for a server URL; yields a starter."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env |= {
            "RESONATE_URL": url,
            "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
            "RESONATE_PATTERNS_HTTP_PORT": str(port),
            "RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS": "0.2",
            "RESONATE_PATTERNS_LOG_FORMAT": "json",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "backlog-api"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def _until_status(url: str, status: int, within: float = 20) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            got, body = await _get(url)
            if got == status:
                return body
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered {status}")
        await asyncio.sleep(0.1)


async def test_backlog_api__every_group_from_one_scan__400_for_bad_group__503_when_server_down(
    stacks: Any, backlog_api: Any
) -> None:
    server = await stacks(0, group="alpha", name="server")
    await submit(server.plan.url, "alpha", 5, "a")
    await submit(server.plan.url, "beta", 2, "b")
    proc, api = backlog_api(server.plan.url)
    await _until_status(f"{api}/readyz", 200)

    status, alpha = await _get(f"{api}/backlog/alpha")
    assert status == 200
    assert {k: alpha[k] for k in ("group", "pending", "acquired", "total")} == {
        "group": "alpha",
        "pending": 5,
        "acquired": 0,
        "total": 5,
    }
    assert alpha["scannedAt"].endswith("Z")
    status, every = await _get(f"{api}/backlog")
    assert status == 200
    assert {g: b["total"] for g, b in every["groups"].items()} == {"alpha": 5, "beta": 2}
    status, gamma = await _get(f"{api}/backlog/gamma")  # a group without work
    assert (status, gamma["pending"], gamma["acquired"], gamma["total"]) == (200, 0, 0, 0)
    status, bad = await _get(f"{api}/backlog/Bad_Group")
    assert status == 400
    assert bad == {"error": "invalid group 'Bad_Group': expected a lowercase DNS label"}

    samples = await scrape(f"{api}/metrics")
    assert total(samples, "resonate_patterns_backlog_scans_total", outcome="ok") >= 1
    tasks = "resonate_patterns_backlog_group_tasks"
    assert total(samples, tasks, group="alpha", state="total") == 5
    assert total(samples, tasks, group="beta", state="pending") == 2

    await server.server.terminate(0)
    await asyncio.sleep(0.3)  # older than the scan age: the next read scans (and fails)
    status, down = await _get(f"{api}/backlog/alpha")
    assert status == 503
    assert down["error"].startswith(f"cannot read task.search from {server.plan.url}")
    assert "\n" not in down["error"]
    await _until_status(f"{api}/readyz", 503)
    samples = await scrape(f"{api}/metrics")
    assert total(samples, "resonate_patterns_backlog_scans_total", outcome="failed") >= 1

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in out
    assert '"event":"backlog_scan_failed"' in out


def test_backlog_api__no_server_url__one_line_usage_error() -> None:
    done = run_cli("backlog-api", timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "resonate-patterns: error: backlog-api needs RESONATE_URL: "
        "the Resonate server whose backlog it serves"
    ]
