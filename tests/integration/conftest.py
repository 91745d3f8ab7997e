"""Fixtures for tests with real processes and sockets: local stacks and clients."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import load_settings
from service.local.supervisor import Stack, plan_stack
from service.runtime import Runtime, build_runtime

pytestmark = pytest.mark.slow


def _quiet(_: str) -> None:
    return None


@pytest.fixture
async def stacks(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory for started local stacks (server + workers as subprocesses)."""
    started: list[Stack] = []

    async def make(
        workers: int = 1,
        *,
        group: str = "workers",
        env: dict[str, str] | None = None,
        server_url: str | None = None,
        server_args: list[str] | None = None,
        name: str = "stack",
    ) -> Stack:
        settings = load_settings({"RESONATE_PATTERNS_DATA_DIR": str(tmp_path / name)})
        plan = plan_stack(settings, workers=workers, port=0, data=None, group=group)
        if server_url is not None:
            port = int(server_url.rsplit(":", 1)[1])
            plan = dataclasses.replace(plan, server_port=port)
        stack = Stack(
            plan,
            out=_quiet,
            extra_env=env,
            server_args=server_args,
            start_server=server_url is None,
        )
        await stack.start()
        started.append(stack)
        return stack

    yield make
    for stack in reversed(started):
        await stack.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Runtime]]:
    """Factory for started remote client runtimes."""
    made: list[Runtime] = []

    def make(url: str, **env: str) -> Runtime:
        settings = load_settings({"RESONATE_URL": url, **env})
        runtime = build_runtime(settings, role="client")
        runtime.start()
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.stop()


async def scrape(url: str) -> dict[str, float]:
    """Prometheus text from ``url`` as {'name{labels}': value}."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of metric ``name`` whose labels include ``labels``."""
    out = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            out += value
    return out


def log_events(path: Path) -> list[dict[str, Any]]:
    """Every JSON log line of a process's log file."""
    events = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def read_sse(
    session: aiohttp.ClientSession, url: str, on_message: Callable[[dict[str, Any]], None]
) -> None:
    """Hand each ``data:`` message of the stream at ``url`` to ``on_message`` until it ends."""
    async with session.get(url, headers={"Accept": "text/event-stream"}) as resp:
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                for line in frame.decode().splitlines():
                    if line.startswith("data: "):
                        on_message(json.loads(line[6:]))


def worker_url(stack: Stack, index: int) -> str:
    w = stack.workers[index]
    return f"http://{stack.plan.host}:{w.port}/metrics"


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
