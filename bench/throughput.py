"""Durable promises per second, in one run, across execution modes; and cache-hit latency.

Modes:
  stock      the SDK's own embedded mode (resonate.connections.local, unindexed)
  embedded   this project's embedded mode (indexed in-process engine)
  server-1   the local server (SQLite store, group commit) with 1 worker process
  server-3   the same with 3 worker processes

Workloads: factorial(200) via rpc; fan-out of 1000 and 10000 children via run
(enrich_batch) and via rpc (parallel_enrich). "Promises" are durable promises
created in the store during the workload (read from the store itself), divided
by the wall time of the invocation as the client sees it.

Also measured: cache-hit latency of ``call`` (p50/p99 of invoking an
already-computed ``factorial-200`` from a client process that is already
running, and the wall time of the whole ``resonate-patterns call`` command),
and fan-out throughput with 10k and 100k promises already stored.

Usage: python bench/throughput.py [--quick] [--out bench/out]
Prints a table, writes results.json and throughput.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    ROOT,
    client_for,
    cpu_reference_ms,
    percentile,
    prefilled_stack,
    start_stack,
    stored_on,
)
from resonate.connections.local import LocalConnection
from resonate.resonate import Resonate
from resonate.retry import Never

from service.client import invoke
from service.config import Settings, load_settings
from service.patterns.deps import PatternDeps
from service.patterns.links import SyntheticGraph
from service.patterns.registry import pattern, register_all
from service.runtime import build_runtime
from service.telemetry.instrument import Telemetry
from service.telemetry.logging import setup_logging
from service.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from service.local.supervisor import Stack
    from service.runtime import Runtime

#: Runs of each short workload (about a second each), reported as the median:
#: one run of that length on a shared 2-core VM swings by +-20%.
REPEATS = 3
#: Added to every fan-out id per repeat, so a repeat is never served from the cache.
REPEAT_ID_STRIDE = 1_000_000


@dataclass
class Row:
    mode: str
    workload: str
    runs: list[tuple[int, float]]  # (promises created, seconds) per run

    @staticmethod
    def _rate(run: tuple[int, float]) -> float:
        promises, seconds = run
        return promises / seconds if seconds else 0.0

    @property
    def rates(self) -> list[float]:
        return [self._rate(r) for r in self.runs]

    @property
    def rate(self) -> float:
        """The median run's promises per second."""
        return statistics.median(self.rates)

    @property
    def median_run(self) -> tuple[int, float]:
        return sorted(self.runs, key=self._rate)[(len(self.runs) - 1) // 2]

    @property
    def spread(self) -> str:
        rates = self.rates
        return f"{min(rates):.0f}-{max(rates):.0f}" if len(rates) > 1 else ""


@dataclass(frozen=True)
class Workload:
    label: str
    pattern: str
    args: tuple[Any, ...]
    repeats: int

    def args_for(self, repeat: int) -> tuple[Any, ...]:
        """The arguments of one repeat: fan-out ids shifted so nothing is cached."""
        if repeat == 0 or self.pattern == "factorial":
            return self.args
        return ([i + repeat * REPEAT_ID_STRIDE for i in self.args[0]],)


def workloads(quick: bool) -> list[Workload]:
    """The measured workloads; ids are offset so nothing is served from a cache.

    factorial runs once: its ``factorial-{n}`` promises are a permanent cache,
    so a second run in the same store would create nothing.
    """
    out = [
        Workload("factorial(200) rpc", "factorial", (200,), 1),
        Workload("fan-out 1000 run", "enrich_batch", (list(range(0, 1000)),), REPEATS),
        Workload("fan-out 1000 rpc", "parallel_enrich", (list(range(1000, 2000)),), REPEATS),
    ]
    if not quick:
        out += [
            Workload("fan-out 10000 run", "enrich_batch", (list(range(10_000, 20_000)),), 1),
            Workload("fan-out 10000 rpc", "parallel_enrich", (list(range(20_000, 30_000)),), 1),
        ]
    return out


async def measure(
    mode: str,
    work: Workload,
    call: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
    stored: Callable[[], Awaitable[int]],
    out: Any,
    *,
    repeats: int | None = None,
) -> Row:
    """Run ``work`` (``repeats`` times) and count the promises each run stored."""
    row = Row(mode, work.label, [])
    for repeat in range(work.repeats if repeats is None else repeats):
        before = await stored()
        started = time.perf_counter()
        await call(work.pattern, work.args_for(repeat))
        seconds = time.perf_counter() - started
        row.runs.append((await stored() - before, seconds))
    spread = f"  (runs {row.spread})" if row.spread else ""
    out(f"  {mode:<9} {work.label:<20} {row.rate:10.0f} promises/s{spread}")
    return row


# -- stock SDK embedded ------------------------------------------------------


class StockRuntime:
    """The SDK's stock embedded mode with every pattern registered."""

    def __init__(self, settings: Settings) -> None:
        metrics = WorkerMetrics(settings.group)
        self.local = LocalConnection(group=settings.group)
        self.resonate = Resonate(
            network=self.local,
            group=settings.group,
            ttl=timedelta(0),
            retry_policy=Never(),
            subscription_refresh_secs=0,
        )
        register_all(self.resonate)
        self.resonate.with_dependency(Telemetry(metrics))
        links = SyntheticGraph(settings.synthetic_pages, settings.synthetic_links)
        self.resonate.with_dependency(
            PatternDeps(settings=settings, promises=self.resonate.promises, links=links)
        )

    def stored(self) -> int:
        return len(self.local.state.promises)

    async def call(self, name: str, args: tuple[Any, ...]) -> None:
        await (
            self.resonate.options(target="workers")
            .rpc(pattern(name).keyed_id(args), name, *args)
            .result()
        )

    async def stop(self) -> None:
        await self.resonate.stop()


async def run_stock(settings: Settings, quick: bool, rows: list[Row], out: Any) -> None:
    runtime = StockRuntime(settings)

    async def stored() -> int:
        return runtime.stored()

    for work in workloads(quick):
        if "10000" in work.label:
            out(
                f"  stock     {work.label:<20} skipped (the stock state scans the store per"
                " settle: quadratic, tens of minutes)"
            )
            continue
        # One run each: the stock fan-out via run alone takes about 20 s.
        rows.append(await measure("stock", work, runtime.call, stored, out, repeats=1))
    await runtime.stop()


# -- this project's embedded mode -------------------------------------------------


@contextlib.asynccontextmanager
async def embedded_client(
    settings: Settings,
) -> AsyncIterator[
    tuple[Callable[[str, tuple[Any, ...]], Awaitable[None]], Callable[[], Awaitable[int]]]
]:
    """This project's embedded mode: ``(call, stored)`` for :func:`measure`, stopped on exit."""
    runtime = build_runtime(settings, role="client")
    runtime.start()
    assert runtime.embedded is not None
    state = runtime.embedded.engine.state

    async def call(name: str, args: tuple[Any, ...]) -> None:
        await invoke(runtime, pattern(name), args)

    async def stored() -> int:
        return len(state.promises)

    try:
        yield call, stored
    finally:
        await runtime.stop()


async def run_embedded(settings: Settings, quick: bool, rows: list[Row], out: Any) -> None:
    async with embedded_client(settings) as (call, stored):
        for work in workloads(quick):
            rows.append(await measure("embedded", work, call, stored, out))


# -- local server + worker processes -----------------------------------------------


async def measure_on(stack: Stack, client: Runtime, mode: str, work: Workload, out: Any) -> Row:
    """:func:`measure` on a running local stack, invoking through ``client``."""

    async def call(name: str, args: tuple[Any, ...]) -> None:
        await invoke(client, pattern(name), args, wait_seconds=900)

    async def stored() -> int:
        return await stored_on(stack.plan.url)

    return await measure(mode, work, call, stored, out)


async def run_server(workers: int, quick: bool, rows: list[Row], out: Any) -> list[float]:
    mode = f"server-{workers}"
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), workers)
        client = client_for(stack.plan.url)
        try:
            for work in workloads(quick):
                rows.append(await measure_on(stack, client, mode, work, out))
            latencies: list[float] = []
            if workers == 1:
                for _ in range(300):
                    hit = await invoke(client, pattern("factorial"), (200,))
                    assert hit.cached
                    latencies.append(hit.elapsed_ms)
            return latencies
        finally:
            await client.stop()
            await stack.stop()


def cli_wall_ms(url: str, runs: int = 5) -> list[float]:
    """Wall time of the whole ``resonate-patterns call`` command (process start included)."""
    out = []
    env = {**os.environ, "RESONATE_URL": url}
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "service", "call", "factorial", "200", "--json"],
            env=env,
            check=True,
            capture_output=True,
        )
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run_scaling(quick: bool, rows: list[Row], out: Any) -> None:
    sizes = [0, 10_000] if quick else [0, 10_000, 100_000]
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            stack = await prefilled_stack(Path(tmp), size)
            client = client_for(stack.plan.url)
            try:
                work = Workload(
                    f"fan-out 1000 run @{size // 1000}k",
                    "enrich_batch",
                    (list(range(50_000, 51_000)),),
                    REPEATS,
                )
                rows.append(await measure_on(stack, client, "server-1", work, out))
            finally:
                await client.stop()
                await stack.stop()


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r.workload for r in rows))
    modes = list(dict.fromkeys(r.mode for r in rows))
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, mode in enumerate(modes):
        values = []
        for label in labels:
            match = [r.rate for r in rows if r.mode == mode and r.workload == label]
            values.append(match[0] if match else 0)
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=mode)
    ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("durable promises / s")
    ax.set_yscale("log")
    ax.set_title("resonate-patterns throughput (2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 10000-child and 100k runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--modes", default="stock,embedded,server-1,server-3")
    args = parser.parse_args()
    setup_logging("warning", "json")
    os.environ.setdefault("RESONATE_PATTERNS_LOG_LEVEL", "info")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    settings = load_settings({})
    reference_before = cpu_reference_ms()
    rows: list[Row] = []
    latencies: list[float] = []
    modes = args.modes.split(",")
    if "stock" in modes:
        await run_stock(settings, args.quick, rows, say)
    if "embedded" in modes:
        await run_embedded(settings, args.quick, rows, say)
    if "server-1" in modes:
        latencies = await run_server(1, args.quick, rows, say)
    if "server-3" in modes:
        await run_server(3, args.quick, rows, say)
    if "server-1" in modes:
        await run_scaling(args.quick, rows, say)
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), 1)
        try:
            await invoke(client := client_for(stack.plan.url), pattern("factorial"), (200,))
            await client.stop()
            wall = cli_wall_ms(stack.plan.url)
        finally:
            await stack.stop()

    reference_after = cpu_reference_ms()
    say("")
    say(
        f"{'mode':<10} {'workload':<24} {'promises':>9} {'seconds':>9} {'promises/s':>11}"
        f"  {'runs (min-max)'}"
    )
    for r in rows:
        promises, seconds = r.median_run
        say(
            f"{r.mode:<10} {r.workload:<24} {promises:>9} {seconds:>9.3f} {r.rate:>11.0f}"
            f"  {r.spread}"
        )
    if latencies:
        say("")
        say(
            f"cache hit (factorial-200, running client, n={len(latencies)}): "
            f"p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms"
        )
    say(
        f"cache hit (whole `resonate-patterns call` command, n={len(wall)}): "
        f"median {statistics.median(wall):.0f} ms (mostly Python start-up)"
    )
    say(
        f"host speed reference (lower is faster): {reference_before:.0f} ms before,"
        f" {reference_after:.0f} ms after"
    )
    results = {
        "cpu_reference_ms": {"before": reference_before, "after": reference_after},
        "rows": [
            {"mode": r.mode, "workload": r.workload, "runs": r.runs, "rate": r.rate} for r in rows
        ],
        "cache_hit_ms": {
            "p50": percentile(latencies, 0.5) if latencies else None,
            "p99": percentile(latencies, 0.99) if latencies else None,
            "cli_median": statistics.median(wall),
        },
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(rows, out_dir / "throughput.png")
    say(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
