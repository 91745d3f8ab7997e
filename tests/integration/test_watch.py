"""Watching a call: the progress line in a pseudo-terminal, none on a pipe, ``--summary``
on a 5,000-id fan-out, and ``call --api`` against a real worker."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest

from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.conftest import ROOT
from tests.integration.test_inspect import cli

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r"\r([^\r\n]+): (\d+)/(\d+) children settled · ([\d.]+) s\x1b\[K")


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    return {**base, **extra}


def run_in_pty(
    *args: str, env: dict[str, str], timeout: float = 60, columns: int = 0
) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdout and stderr; everything it wrote.

    ``columns``: the terminal's width (0: unknown, as a fresh pty reports).
    """
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode()


async def pty_cli(*args: str, env: dict[str, str], columns: int = 0) -> tuple[int, str]:
    """:func:`run_in_pty` off the event loop (a local stack keeps being served)."""
    return await asyncio.to_thread(run_in_pty, *args, env=env, columns=columns)


def _progress(output: str) -> list[tuple[str, int, int, float]]:
    return [(m[1], int(m[2]), int(m[3]), float(m[4])) for m in PROGRESS.finditer(output)]


def _assert_grows(seen: list[tuple[str, int, int, float]], label: str) -> None:
    assert len(seen) >= 3, f"too few progress updates: {seen}"
    assert {s[0] for s in seen} == {label}
    settled = [s[1] for s in seen]
    created = [s[2] for s in seen]
    assert settled == sorted(settled), seen
    assert created == sorted(created), seen
    assert all(s <= c for s, c in zip(settled, created, strict=True)), seen
    assert len(set(settled)) >= 3, f"settled did not move: {seen}"
    assert [s[3] for s in seen] == sorted(s[3] for s in seen)


async def test_progress_line__embedded_fanout_in_a_pty__counts_grow_then_the_result() -> None:
    items = [str(i) for i in range(1, 21)]
    label = pattern("process_bounded").keyed_id(([int(i) for i in items], 2))
    env = _env(RESONATE_PATTERNS_STEP_DELAY_MS="200")

    code, output = await pty_cli("call", "process_bounded", "2", *items, env=env)

    assert code == 0, output
    _assert_grows(_progress(output), label)
    # The line is erased before the result is printed; the result is the last thing.
    squares = json.dumps([i * i for i in range(1, 21)])
    tail = output[output.rindex("\r\x1b[K") :]
    assert re.fullmatch(
        rf"\r\x1b\[K{re.escape(label)} = {re.escape(squares)}\r\n\(computed in \d+\.\d ms\)\r\n",
        tail,
    ), repr(tail)


async def test_progress_line__narrow_terminal__cut_to_its_width_so_it_never_wraps() -> None:
    items = [str(i) for i in range(1, 9)]
    env = _env(RESONATE_PATTERNS_STEP_DELAY_MS="200")

    code, output = await pty_cli("call", "process_bounded", "2", *items, env=env, columns=40)

    assert code == 0, output
    lines = re.findall(r"\r([^\r\n]*)\x1b\[K", output)
    shown = [line for line in lines if line]
    assert shown, output
    assert all(len(line) == 39 and line.endswith("…") for line in shown), shown


async def test_progress_line__server_stack_fanout_in_a_pty(stacks: Any) -> None:
    stack = await stacks(1, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "200"})
    items = [str(i) for i in range(1, 21)]
    label = pattern("process_bounded").keyed_id(([int(i) for i in items], 2))

    code, output = await pty_cli(
        "call", "process_bounded", "2", *items, env=_env(RESONATE_URL=stack.plan.url)
    )

    assert code == 0, output
    _assert_grows(_progress(output), label)
    assert f"{label} = {json.dumps([i * i for i in range(1, 21)])}" in output


async def test_no_progress_line__on_a_pipe_or_with_json() -> None:
    items = [str(i) for i in range(1, 9)]
    env = _env(RESONATE_PATTERNS_STEP_DELAY_MS="200")

    piped = await cli("call", "process_bounded", "2", *items, env=env)
    code, as_json = await pty_cli("call", "process_bounded", "2", *items, "--json", env=env)

    assert piped[0] == 0
    assert piped[2] == ""
    assert "children settled" not in piped[1]
    assert code == 0
    assert "children settled" not in as_json
    assert json.loads(as_json)["result"] == [i * i for i in range(1, 9)]


async def test_summary__5000_id_enrich_batch_on_a_server__compact_and_the_full_result_kept(
    stacks: Any,
) -> None:
    stack = await stacks(1)
    env = {"RESONATE_URL": stack.plan.url}
    ids = [str(i) for i in range(5000)]
    pid = pattern("enrich_batch").keyed_id((list(range(5000)),))

    code, out, err = await cli("call", "enrich_batch", *ids, "--summary", env=env)
    full = await cli("get", pid, "--json", env=env)

    assert code == 0, err
    first = [json.dumps(enrich_record(i)) for i in range(3)]
    lines = out.splitlines()
    assert lines[:5] == [
        f"{pid} = list of 5000 items; first 3:",
        *(f"  {record}" for record in first),
        "  ... 4997 more",
    ]
    assert re.fullmatch(r"\(computed in \d+\.\d ms\)", lines[5])
    assert lines[6:] == [f"full result: resonate-patterns get {pid} --json"]
    assert len(out) < 1000
    whole = json.loads(full[1])
    assert whole["value"] == [enrich_record(i) for i in range(5000)]
    assert whole["children"] == {"created": 5000, "settled": 5000, "pending": 0}


async def test_call_api__real_worker__result_cache_and_error_statuses(stacks: Any) -> None:
    stack = await stacks(1)
    api = f"http://{stack.plan.host}:{stack.workers[0].port}"

    first = await cli("call", "factorial", "12", "--api", api, "--json")
    again = await cli("call", "factorial", "12", "--api", api, "--json")
    bad = await cli("call", "factorial", "--args-json", "[-1]", "--api", api)
    unknown = await cli("call", "nope", "--args-json", "[1]", "--api", api)
    rejected = await cli("call", "enrich_batch", "1", "missing-2", "--api", api)
    shown = await cli("get", "factorial-12", env={"RESONATE_URL": stack.plan.url})

    assert first[0] == 0, first[2]
    assert {k: v for k, v in json.loads(first[1]).items() if k != "elapsed_ms"} == {
        "id": "factorial-12",
        "pattern": "factorial",
        "result": 479001600,
        "cached": False,
    }
    assert json.loads(again[1])["cached"] is True
    assert (bad[0], bad[2]) == (
        2,
        "resonate-patterns: error: factorial: n must be >= 0, got -1\n",
    )
    assert unknown[0] == 2
    assert "unknown pattern 'nope'" in unknown[2]
    assert rejected[0] == 1
    assert "was rejected: cannot enrich 'missing-2': no such record" in rejected[2]
    assert "  value     479001600" in shown[1]


async def test_call_api__real_worker__202_past_timeout_then_get_shows_it_running(
    stacks: Any,
) -> None:
    stack = await stacks(1, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "500"})
    api = f"http://{stack.plan.host}:{stack.workers[0].port}"
    items = [str(i) for i in range(1, 9)]
    pid = pattern("process_bounded").keyed_id(([int(i) for i in items], 1))

    code, out, err = await cli(
        "call", "process_bounded", "1", *items, "--api", api, "--timeout", "1"
    )
    running = await cli("get", pid, "--json", env={"RESONATE_URL": stack.plan.url})

    assert (code, out) == (1, "")
    assert err.startswith(f"resonate-patterns: error: no result for {pid} after 1s; it keeps")
    assert json.loads(running[1])["state"] == "pending"
