"""Helpers shared by the benchmarks: host facts, local stacks, stored counts, statistics.

``bench/throughput.py`` and ``bench/suite.py`` both use these, so a number
printed by one is measured the same way as in the other (the host speed
reference above all: runs are compared by it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from service.config import load_settings
from service.devserver.store import Row, Store
from service.local.supervisor import Stack, plan_stack
from service.runtime import Runtime, build_runtime

ROOT = Path(__file__).resolve().parent.parent


# -- the host --------------------------------------------------------------------


def cpu_reference_ms() -> float:
    """Time of a fixed pure-Python job (best of 5): how fast this host is right now.

    A shared VM's speed drifts by tens of percent; printing this before and
    after a run tells a slow host from a slow build.
    """
    doc = {"id": "factorial-200:1.2.3", "state": "resolved", "tags": {"a": "b"}, "n": 12345}
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20_000):
            json.loads(json.dumps(doc))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (other work on a shared host shows here)."""
    return os.getloadavg()


def cores() -> str:
    """Cores this process may run on, and the machine's total when they differ."""
    usable = len(os.sched_getaffinity(0))
    total = os.cpu_count() or usable
    return str(usable) if usable == total else f"{usable} (of {total})"


def cpu_model() -> str:
    """The processor's model name, from ``/proc/cpuinfo`` (``unknown`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    """Python, resonate-sdk and this project (with the git commit it was built from)."""
    return {
        "python": platform.python_version(),
        "resonate-sdk": _version("resonate-sdk"),
        "resonate-patterns": f"{_version('resonate-patterns')} ({_git_commit()})",
    }


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def peak_rss_mb(pid: int | None) -> float:
    """Peak resident set size (``VmHWM``) of a live process, in MB."""
    if pid is None:
        msg = "the process is not running"
        raise RuntimeError(msg)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    msg = f"no VmHWM in /proc/{pid}/status"
    raise RuntimeError(msg)


# -- statistics ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Measure:
    """One figure of the suite: one value per run, shown as the median and its range."""

    figure: str
    case: str
    unit: str
    values: list[float] = field(default_factory=list)
    #: Fewer decimals for large numbers: set by the unit's scale.
    digits: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def fmt(self, value: float) -> str:
        return f"{value:,.{self.digits}f}"

    @property
    def spread(self) -> str:
        if len(self.values) < 2:
            return "(1 run)"
        return f"{self.fmt(self.low)}\N{EN DASH}{self.fmt(self.high)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "case": self.case,
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
        }


# -- local stacks ----------------------------------------------------------------


async def stored_on(url: str) -> int:
    """Promises the local server at ``url`` holds, from its ``/metrics``."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("resonate_devserver_promises{")
        )
    )


async def start_stack(
    tmp: Path,
    workers: int,
    data: str | None = None,
    *,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """A local server (SQLite in ``tmp`` or ``data``) with ``workers`` worker processes."""
    settings = load_settings({"RESONATE_PATTERNS_DATA_DIR": str(tmp)})
    plan = plan_stack(settings, workers=workers, port=0, data=data, group=None)
    stack = Stack(plan, out=lambda _: None, extra_env=extra_env)
    await stack.start()
    return stack


async def prefilled_stack(tmp: Path, stored: int) -> Stack:
    """A local server whose SQLite store in ``tmp`` holds ``stored`` resolved promises, 1 worker."""
    data = str(tmp / "server.db")
    prefill(data, stored)
    return await start_stack(tmp, 1, data=data)


def client_for(url: str, extra_env: dict[str, str] | None = None) -> Runtime:
    """A started client runtime on the server at ``url`` (settings: ``extra_env`` only)."""
    env = {**(extra_env or {}), "RESONATE_URL": url}
    runtime = build_runtime(load_settings(env), role="client")
    runtime.start()
    return runtime


def prefill(path: str, count: int) -> None:
    """Store ``count`` resolved promises in a fresh server database."""
    store = Store(path)
    batch: list[tuple[str, Row | None]] = []
    for i in range(count):
        promise_id = f"prefill-{i:07d}"
        row: dict[str, Any] = {
            "id": promise_id,
            "state": "resolved",
            "param": {},
            "value": {"data": "MQ=="},
            "tags": {"resonate-patterns:bench": "prefill"},
            "timeoutAt": 1 << 60,
            "createdAt": 0,
            "settledAt": 0,
            "callbacks": [],
            "listeners": [],
        }
        batch.append((promise_id, row))
        if len(batch) == 10_000:
            store.write({"promises": batch})
            batch = []
    if batch:
        store.write({"promises": batch})
    store.close()
