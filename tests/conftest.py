"""Shared fixtures: settings, an embedded runtime, log capture and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from service.config import Settings, load_settings
from service.runtime import Runtime, build_runtime
from service.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent


def make_settings(**env: str) -> Settings:
    """Settings from defaults plus ``env`` (raw values, as in the environment)."""
    return load_settings({k: v for k, v in env.items()})


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def embedded() -> AsyncIterator[Callable[..., Any]]:
    """Factory for started embedded runtimes (stopped at teardown)."""
    started: list[Runtime] = []

    async def make(**env: str) -> Runtime:
        s = make_settings(**env)
        runtime = build_runtime(s, role="client", metrics=WorkerMetrics(s.group))
        runtime.start()
        started.append(runtime)
        return runtime

    yield make
    for runtime in started:
        await runtime.stop()


class Executions:
    """Captured ``execution_started``/``execution_finished`` log events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def started(self, function: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == "execution_started" and (function is None or e["function"] == function)
        ]

    def clear(self) -> None:
        self.events.clear()

    def max_concurrent(self, function: str) -> int:
        running = peak = 0
        for e in self.events:
            if e.get("function") != function:
                continue
            if e["event"] == "execution_started":
                running += 1
                peak = max(peak, running)
            elif e["event"] == "execution_finished":
                running -= 1
        return peak


@pytest.fixture
def executions() -> Iterator[Executions]:
    with structlog.testing.capture_logs() as logs:
        yield Executions(logs)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m service ARGS`` and capture its output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    full_env = {**base, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def require_tool(name: str, install: str = "make test installs it") -> str:
    """Path of an external tool; skip without it locally, fail in CI (CI=true).

    ``install`` tells how to get it, in the skip or failure message.
    """
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_file(path: Path, install: str) -> Path:
    """``path``, which an install step provides; skip without it locally, fail in CI."""
    if not path.exists():
        message = f"{path} is missing ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def wait_until_ok(url: str, within: float = 15.0) -> None:
    """Poll ``url`` until it answers 200 (a server starting up)."""
    import asyncio

    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} did not answer 200 within {within:g}s")
