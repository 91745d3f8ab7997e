"""The local stack refuses, at once and in one line, what would break it (or another stack)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT, run_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    return {
        "RESONATE_PATTERNS_DATA_DIR": str(data_dir),
        "RESONATE_PATTERNS_HTTP_PORT": "0",
        "RESONATE_PATTERNS_LOG_LEVEL": "warning",
    }


def _assert_refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("resonate-patterns: error: ")
    assert message in lines[0], lines[0]
    assert "press Ctrl-C" not in proc.stdout, "no healthy banner for a stack that cannot run"


@pytest.fixture
def first_stack(tmp_path: Path) -> Iterator[Path]:
    """A running ``up`` (one worker) in ``tmp_path/data``; yields its data directory."""
    data_dir = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "up", "--workers", "1", "--port", "0"],
        cwd=ROOT,
        env={**base, **_env(data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "press Ctrl-C" in line or not line:
                break
        assert (data_dir / "stack.json").exists(), "the first stack did not start"
        yield data_dir
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_second_up_in_the_same_data_dir__refused_and_the_first_untouched(
    first_stack: Path,
) -> None:
    manifest = (first_stack / "stack.json").read_text()
    logs = {p.name: p.stat().st_size for p in (first_stack / "logs").iterdir()}
    started = time.monotonic()
    proc = run_cli("up", "--workers", "1", "--port", "0", env=_env(first_stack), timeout=60)
    _assert_refused(proc, "another local stack (pid ")
    assert f"is running in {first_stack}" in proc.stderr
    assert time.monotonic() - started < 10
    assert (first_stack / "stack.json").read_text() == manifest, "stack.json not overwritten"
    assert {p.name: p.stat().st_size for p in (first_stack / "logs").iterdir()} == logs


def test_up__server_port_in_use__refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = run_cli("up", "--port", str(port), env=_env(tmp_path / "d"), timeout=60)
    _assert_refused(proc, f"server port: 127.0.0.1:{port} is already in use")
    assert time.monotonic() - started < 10


def test_up__store_locked_by_another_process__refused(tmp_path: Path) -> None:
    store = tmp_path / "busy.db"
    with open(f"{store}.lock", "a+") as lock:  # what a running server holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(str(os.getpid()))
        lock.flush()
        started = time.monotonic()
        proc = run_cli(
            "up", "--port", "0", "--data", str(store), env=_env(tmp_path / "d"), timeout=60
        )
    _assert_refused(proc, f"the store {store} is in use by another process (pid {os.getpid()})")
    assert time.monotonic() - started < 10


def test_up__worker_metrics_port_in_use__refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**_env(tmp_path / "d"), "RESONATE_PATTERNS_HTTP_PORT": str(port)}
        server_port = port + 100 if port < 65000 else port - 100
        proc = run_cli("up", "--workers", "1", "--port", str(server_port), env=env, timeout=60)
    _assert_refused(proc, f"worker port: 127.0.0.1:{port} is already in use")


def test_server__store_locked__one_line_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "busy.db"
    with open(f"{store}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_cli("server", "--port", "0", "--data", str(store), timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("resonate-patterns: error: the store")
