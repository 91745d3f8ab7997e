"""The backlog reader against the local server, and `up --autoscale` end to end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from service.config import load_settings
from service.operator.backlog import Backlog, BacklogReader, BacklogReadError
from service.runtime import build_runtime
from tests.conftest import ROOT

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
