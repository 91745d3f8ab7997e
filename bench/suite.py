"""The benchmark suite: every figure of issue [12] side by side in one run.

Figures (each run several times; the table shows the median and the range):

* **factorial chain**: levels per second, milliseconds per level and durable
  promises per second of ``factorial`` via rpc, in the SDK's stock embedded
  mode, this project's embedded mode and on the local server with 1 worker
  (and 3 workers in the full suite). Each run computes 200 *new* levels
  (``factorial(200)``, then ``(400)`` reaching the cached ``factorial-200``,
  ...), so no run is served whole from the cross-run cache.
* **fan-out throughput**: promises per second of a 1000-child fan-out via
  ``run`` (``enrich_batch``) and via ``rpc`` (``parallel_enrich``) per mode.
* **fan-out width**: ``enrich_batch`` of 100 to 50,000 children on the local
  server with 1 worker: wall time, and the peak RSS (``VmHWM``) of the worker
  and of the server. Every run starts a fresh stack, so a peak belongs to its
  width.
* **stored promises**: promises per second of a 1000-child fan-out via run
  with 1k to 1M resolved promises already in the server's store; the
  server's peak RSS once it has loaded them, and that growth per promise.
* **cache hit**: p50 and p99 of a ``call`` of an already-computed
  ``factorial-200`` from a client that is already running (300 calls a run).
* **operator reaction**: the local autoscaler (``up --autoscale``: the
  operator's policy over local worker processes, polling every 2 s) with one
  worker; a backlog appears (``parallel_enrich`` of slow leaves); measured from
  the moment a 20 ms watcher first sees more tasks than one worker's target
  to the autoscaler's scale-up call (*decision*) and to the new workers being
  up (*capacity*). Runs start at phases spread over the poll interval.
* **factorial level** (per-level cost): from ``bench/factorial_level.py``,
  when present (its ``measure(quick)`` rows, as it reports them).

Prints the host (cores, load average, a speed reference before and after,
versions), a line per measurement as it goes, then one markdown table.
Writes ``results.md``, ``results.json`` and a PNG per figure into ``--out``.

Exits non-zero if any benchmark fails or yields no numbers; it asserts no
performance target (hosts differ).

Usage: python bench/suite.py [--quick] [--out bench/results] [--only SECTION,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    ROOT,
    Measure,
    client_for,
    cores,
    cpu_model,
    cpu_reference_ms,
    load_average,
    peak_rss_mb,
    percentile,
    prefilled_stack,
    start_stack,
    stored_on,
    utc_now,
    versions,
)
from throughput import StockRuntime, Workload, embedded_client, measure, measure_on

from service.client import invoke
from service.config import load_settings
from service.local.autoscale import autoscale_local
from service.local.supervisor import Stack, plan_stack
from service.operator.backlog import BacklogReader
from service.operator.policy import PolicySpec
from service.patterns.registry import pattern
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


#: Runs behind every median (one run on a shared 2-core VM swings by +-20%).
RUNS = 3
#: New factorial levels per run (the issue's "3 runs of 200 new levels each").
LEVELS = 200
#: Children of the fan-out used for throughput and for the stored-promises figure.
FANOUT = 1000
#: The autoscaler's poll interval: the default of ``resonate-patterns up --autoscale --poll``.
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Plan:
    """What one suite run measures (``--quick`` shrinks it, never changes what it is)."""

    quick: bool
    modes: tuple[str, ...]
    widths: tuple[int, ...]
    stored: tuple[int, ...]
    reaction_runs: int


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(
            True, ("stock", "embedded", "server-1"), (100, 1000, 10_000), (1000, 10_000, 100_000), 3
        )
    return Plan(
        False,
        ("stock", "embedded", "server-1", "server-3"),
        (100, 1000, 10_000, 50_000),
        (1000, 10_000, 100_000, 1_000_000),
        5,
    )


def _quiet(say: Callable[[str], None], m: Measure) -> None:
    say(f"  {m.figure:<20} {m.case:<34} {m.fmt(m.median):>12} {m.unit:<12} {m.spread}")


# -- factorial chain ----------------------------------------------------------------------


async def _chain(
    mode: str,
    call: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
    stored: Callable[[], Awaitable[int]],
) -> list[Measure]:
    levels_s = Measure("factorial chain", f"{mode}: levels/s", "levels/s", digits=0)
    ms_level = Measure("factorial chain", f"{mode}: ms/level", "ms/level", digits=2)
    promises_s = Measure("factorial chain", f"{mode}: promises/s", "promises/s", digits=0)
    previous = -1  # factorial(0) is a level of its own
    for run in range(1, RUNS + 1):
        n = LEVELS * run
        before = await stored()
        started = time.perf_counter()
        await call("factorial", (n,))
        seconds = time.perf_counter() - started
        created = await stored() - before
        levels = n - previous
        previous = n
        levels_s.values.append(levels / seconds)
        ms_level.values.append(seconds * 1000 / levels)
        promises_s.values.append(created / seconds)
    return [levels_s, ms_level, promises_s]


async def _fanouts(
    mode: str,
    call: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
    stored: Callable[[], Awaitable[int]],
    *,
    via_run: bool = True,
) -> list[Measure]:
    out: list[Measure] = []
    works = [Workload(f"fan-out {FANOUT} rpc", "parallel_enrich", (list(range(1000, 2000)),), RUNS)]
    if via_run:
        works.insert(
            0, Workload(f"fan-out {FANOUT} run", "enrich_batch", (list(range(FANOUT)),), RUNS)
        )
    for work in works:
        row = await measure(mode, work, call, stored, lambda _: None)
        out.append(
            Measure("fan-out throughput", f"{mode}: {work.label}", "promises/s", row.rates, 0)
        )
    return out


async def _stock_figures() -> list[Measure]:
    stock = StockRuntime(load_settings({}))

    async def stored() -> int:
        return stock.stored()

    try:
        found = await _chain("stock", stock.call, stored)
        # The stock state scans the whole store on every settle: its fan-out via
        # run takes about 20 s a run; the rpc one is measured.
        return found + await _fanouts("stock", stock.call, stored, via_run=False)
    finally:
        await stock.stop()


async def _embedded_figures() -> list[Measure]:
    async with embedded_client(load_settings({})) as (call, stored):
        found = await _chain("embedded", call, stored)
        return found + await _fanouts("embedded", call, stored)


async def _server_figures(workers: int) -> list[Measure]:
    mode = f"server-{workers}"
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), workers)
        client = client_for(stack.plan.url)

        async def call(name: str, args: tuple[Any, ...]) -> None:
            await invoke(client, pattern(name), args, wait_seconds=900)

        async def stored() -> int:
            return await stored_on(stack.plan.url)

        try:
            found = await _chain(mode, call, stored)
            return found + await _fanouts(mode, call, stored)
        finally:
            await client.stop()
            await stack.stop()


async def modes_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure]:
    """The factorial chain and the 1000-child fan-outs, mode by mode."""
    found: list[Measure] = []
    for mode in plan.modes:
        if mode == "stock":
            more = await _stock_figures()
        elif mode == "embedded":
            more = await _embedded_figures()
        else:
            more = await _server_figures(int(mode.split("-")[1]))
        for m in more:
            _quiet(say, m)
        found += more
    return found


# -- fan-out width -------------------------------------------------------------------------


async def width_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure]:
    """Wall time and peak RSS of one ``enrich_batch`` per width, a fresh stack per run."""
    found: list[Measure] = []
    env = {"RESONATE_PATTERNS_MAX_FANOUT": str(max(plan.widths))}
    for width in plan.widths:
        wall = Measure("fan-out width", f"{width:,} children: wall", "s", digits=2)
        worker = Measure("fan-out width", f"{width:,} children: worker peak RSS", "MB", digits=0)
        server = Measure("fan-out width", f"{width:,} children: server peak RSS", "MB", digits=0)
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory() as tmp:
                stack = await start_stack(Path(tmp), 1, extra_env=env)
                client = client_for(stack.plan.url, env)
                try:
                    started = time.perf_counter()
                    result = await invoke(
                        client, pattern("enrich_batch"), (list(range(width)),), wait_seconds=900
                    )
                    wall.values.append(time.perf_counter() - started)
                    if len(result.result) != width:
                        msg = f"enrich_batch of {width} returned {len(result.result)} records"
                        raise RuntimeError(msg)
                    worker.values.append(peak_rss_mb(stack.workers[0].pid))
                    server.values.append(peak_rss_mb(stack.server.pid))
                finally:
                    await client.stop()
                    await stack.stop()
        for m in (wall, worker, server):
            _quiet(say, m)
            found.append(m)
    return found


# -- stored promises -------------------------------------------------------------------------


async def stored_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure]:
    """Fan-out throughput with ``size`` resolved promises already in the store.

    Also the server's resident memory once it has loaded them (one start per
    size, so one value each), and from the smallest and largest size the
    memory per stored promise.
    """
    found: list[Measure] = []
    memory: list[tuple[int, float]] = []
    for size in plan.stored:
        with tempfile.TemporaryDirectory() as tmp:
            stack = await prefilled_stack(Path(tmp), size)
            client = client_for(stack.plan.url)
            try:
                loaded = peak_rss_mb(stack.server.pid)
                # Unmeasured: the first call after a start pays for connections and warm-up.
                await invoke(client, pattern("enrich_batch"), (list(range(90_000, 90_100)),))
                work = Workload(
                    f"fan-out {FANOUT} run", "enrich_batch", (list(range(50_000, 51_000)),), RUNS
                )
                row = await measure_on(stack, client, "server-1", work, lambda _: None)
            finally:
                await client.stop()
                await stack.stop()
        m = Measure("stored promises", f"{size:,} stored: fan-out {FANOUT} run", "promises/s")
        m.values, m.digits = row.rates, 0
        rss = Measure(
            "stored memory", f"{size:,} stored: server peak RSS after loading", "MB", [loaded], 0
        )
        memory.append((size, loaded))
        for one in (m, rss):
            _quiet(say, one)
            found.append(one)
    (small, small_mb), (large, large_mb) = memory[0], memory[-1]
    if large > small:
        per = (large_mb - small_mb) * 1024 * 1024 / (large - small) / 1000
        each = Measure(
            "stored memory",
            f"server peak RSS per stored promise ({small:,} -> {large:,})",
            "KB",
            [per],
            2,
        )
        _quiet(say, each)
        found.append(each)
    return found


# -- cache hit ------------------------------------------------------------------------------


async def cache_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure]:
    """p50 and p99 of a cached ``call`` from a running client, per run of 300."""
    p50 = Measure("cache hit", "factorial-200 from a running client: p50", "ms", digits=2)
    p99 = Measure("cache hit", "factorial-200 from a running client: p99", "ms", digits=2)
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), 1)
        client = client_for(stack.plan.url)
        try:
            first = await invoke(client, pattern("factorial"), (200,))
            if first.cached:
                msg = "factorial-200 was cached in a fresh store"
                raise RuntimeError(msg)
            for _ in range(RUNS):
                latencies: list[float] = []
                for _ in range(300):
                    hit = await invoke(client, pattern("factorial"), (200,))
                    if not hit.cached:
                        msg = "a repeated factorial-200 was computed again"
                        raise RuntimeError(msg)
                    latencies.append(hit.elapsed_ms)
                p50.values.append(percentile(latencies, 0.5))
                p99.values.append(percentile(latencies, 0.99))
        finally:
            await client.stop()
            await stack.stop()
    for m in (p50, p99):
        _quiet(say, m)
    return [p50, p99]


# -- operator reaction ------------------------------------------------------------------------


class TimedStack(Stack):
    """A stack that notes when it is told to scale and when the new workers are up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decided: float | None = None
        self.ready: float | None = None

    async def scale(self, replicas: int) -> None:
        grows = replicas > len(self.workers)
        if grows and self.decided is None:
            self.decided = time.monotonic()
        await super().scale(replicas)
        if grows and self.ready is None:
            self.ready = time.monotonic()


async def _reaction_once(phase: float) -> tuple[float, float]:
    spec = PolicySpec(
        min_replicas=1,
        max_replicas=3,
        target_tasks_per_replica=10,
        stabilization_seconds=60,
        cooldown_seconds=60,
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"RESONATE_PATTERNS_DATA_DIR": tmp})
        plan = plan_stack(settings, workers=1, port=0, data=None, group=None)
        # Slow leaves, few at a time: the backlog stays until the autoscaler acts.
        env = {
            "RESONATE_PATTERNS_STEP_DELAY_MS": "2000",
            "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS": "4",
        }
        stack = TimedStack(plan, out=lambda _: None, extra_env=env)
        await stack.start()
        client = client_for(stack.plan.url)
        stop = asyncio.Event()
        scaler = asyncio.create_task(
            autoscale_local(stack, spec, stop, lambda _: None, interval=POLL_SECONDS)
        )
        reader = BacklogReader(stack.plan.url)
        work: asyncio.Task[Any] | None = None
        try:
            await asyncio.sleep(phase)
            work = asyncio.create_task(
                invoke(client, pattern("parallel_enrich"), (list(range(60)),))
            )
            deadline = time.monotonic() + 30
            while (await reader.read(stack.plan.group)).total <= spec.target_tasks_per_replica:
                if time.monotonic() > deadline:
                    msg = "no backlog appeared within 30 s"
                    raise RuntimeError(msg)
                await asyncio.sleep(0.02)
            seen = time.monotonic()
            while stack.ready is None:
                if time.monotonic() > deadline or scaler.done():
                    msg = "the autoscaler did not scale up within 30 s"
                    raise RuntimeError(msg)
                await asyncio.sleep(0.01)
            assert stack.decided is not None
            return stack.decided - seen, stack.ready - seen
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scaler, 10)
            if work is not None:
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            await reader.close()
            await client.stop()
            await stack.stop_quietly()


async def reaction_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure]:
    decision = Measure("operator reaction", "backlog seen -> scale decision", "s", digits=2)
    capacity = Measure("operator reaction", "backlog seen -> new workers up", "s", digits=2)
    runs = plan.reaction_runs
    for i in range(runs):
        # Start phases spread over the poll interval: the decision waits for the next poll.
        decided, ready = await _reaction_once(0.3 + POLL_SECONDS * i / runs)
        decision.values.append(decided)
        capacity.values.append(ready)
    for m in (decision, capacity):
        _quiet(say, m)
    return [decision, capacity]


# -- factorial level (bench/factorial_level.py) -------------------------------------------------


def _level_measures(rows: list[dict[str, Any]]) -> list[Measure]:
    """``factorial_level.measure`` rows as table rows: text fields name the case.

    A numeric field is one value; a list of numbers is one value per run.
    """
    found: list[Measure] = []
    for row in rows:
        label = " ".join(str(v) for v in row.values() if isinstance(v, str)) or "level"
        for key, value in row.items():
            if isinstance(value, bool | str):
                continue
            if isinstance(value, int | float):
                values = [float(value)]
            elif (
                isinstance(value, list)
                and value
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                values = [float(v) for v in value]
            else:
                continue
            whole = all(v.is_integer() for v in values)
            digits = 0 if whole or max(abs(v) for v in values) >= 100 else 2
            found.append(Measure("factorial level", f"{label}: {key}", key, values, digits))
    return found


async def level_figures(plan: Plan, say: Callable[[str], None]) -> list[Measure] | None:
    """Rows from ``bench/factorial_level.py`` (None: the script or its ``measure`` is absent)."""
    if not (ROOT / "bench" / "factorial_level.py").exists():
        say("  factorial level: skipped (bench/factorial_level.py is not present)")
        return None
    module = importlib.import_module("factorial_level")
    fn = getattr(module, "measure", None)
    if fn is None:
        say("  factorial level: skipped (bench/factorial_level.py has no measure(quick))")
        return None
    # It may drive its own event loop: run it in a thread of its own.
    rows = await asyncio.to_thread(fn, plan.quick)
    if inspect.isawaitable(rows):
        rows = await rows
    found = _level_measures(list(rows))
    for m in found:
        _quiet(say, m)
    return found


# -- output -------------------------------------------------------------------------------------


def table(measures: list[Measure]) -> list[str]:
    lines = [
        "| figure | case | median | range (min\N{EN DASH}max) | unit | runs |",
        "|---|---|---:|---|---|---:|",
    ]
    for m in measures:
        lines.append(
            f"| {m.figure} | {m.case} | {m.fmt(m.median)} | {m.spread} | {m.unit} |"
            f" {len(m.values)} |"
        )
    return lines


def _errorbar(ax: Any, xs: list[Any], ms: list[Measure], label: str, **kw: Any) -> None:
    med = [m.median for m in ms]
    ax.errorbar(
        xs,
        med,
        yerr=[[m.median - m.low for m in ms], [m.high - m.median for m in ms]],
        capsize=4,
        marker="o",
        label=label,
        **kw,
    )


def plots(measures: list[Measure], out: Path, title: str) -> list[Path]:
    """One PNG per figure, each point a median with its range (min to max) as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def by(figure: str) -> list[Measure]:
        return [m for m in measures if m.figure == figure]

    def save(fig: Any, name: str) -> None:
        fig.suptitle(f"{fig.axes[0].get_title()}\n{title}", fontsize=9)
        fig.axes[0].set_title("")
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def bars(ms: list[Measure], name: str, heading: str, ylabel: str, log: bool = False) -> None:
        if not ms:
            return
        fig, ax = plt.subplots(figsize=(10, 4.5))
        xs = list(range(len(ms)))
        ax.bar(xs, [m.median for m in ms], color="#4c72b0")
        _errorbar(ax, xs, ms, "median, min\N{EN DASH}max", linestyle="none", color="black")
        ax.set_xticks(xs)
        ax.set_xticklabels([m.case for m in ms], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(heading)
        save(fig, name)

    chain = by("factorial chain")
    if chain:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, unit in ((left, "levels/s"), (right, "ms/level")):
            ms = [m for m in chain if m.unit == unit]
            xs = list(range(len(ms)))
            ax.bar(xs, [m.median for m in ms], color="#4c72b0")
            _errorbar(ax, xs, ms, "median, min\N{EN DASH}max", linestyle="none", color="black")
            ax.set_xticks(xs)
            ax.set_xticklabels([m.case.split(":")[0] for m in ms])
            ax.set_ylabel(unit)
        left.set_title(f"factorial via rpc, {LEVELS} new levels a run")
        save(fig, "factorial_chain.png")

    bars(by("fan-out throughput"), "fanout_throughput.png", "1000-child fan-out", "promises/s")

    width = by("fan-out width")
    if width:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        walls = [m for m in width if m.unit == "s"]
        xs = [int(m.case.split()[0].replace(",", "")) for m in walls]
        _errorbar(left, xs, walls, "wall time")
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("children (enrich_batch via run)")
        left.set_ylabel("seconds")
        for who in ("worker", "server"):
            ms = [m for m in width if f"{who} peak RSS" in m.case]
            _errorbar(right, xs, ms, f"{who} peak RSS")
        right.set_xscale("log")
        right.set_xlabel("children (enrich_batch via run)")
        right.set_ylabel("MB")
        right.legend()
        left.set_title("fan-out width on the local server, 1 worker")
        save(fig, "fanout_width.png")

    stored = by("stored promises")
    if stored:
        fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.5))
        xs = [int(m.case.split()[0].replace(",", "")) for m in stored]
        _errorbar(ax, xs, stored, "fan-out 1000 via run")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("promises already stored")
        ax.set_ylabel("promises/s")
        ax.set_title("throughput against stored promises (local server, 1 worker)")
        loaded = [m for m in by("stored memory") if m.unit == "MB"]
        if len(loaded) == len(xs):
            _errorbar(mem, xs, loaded, "server peak RSS after loading")
            mem.set_xscale("log")
            mem.set_xlabel("promises already stored")
            mem.set_ylabel("MB")
            mem.legend()
        save(fig, "stored_promises.png")

    bars(by("cache hit"), "cache_hit.png", "cache hit: call of a computed factorial-200", "ms")
    bars(
        by("operator reaction"),
        "operator_reaction.png",
        f"local autoscaler reaction (poll every {POLL_SECONDS:g} s)",
        "seconds",
    )
    level = by("factorial level")
    if level:
        # One panel per unit: milliseconds and requests per level side by side
        # for the three variants (levels/s is the first panel's inverse).
        fig, panels = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, unit in zip(panels, ("ms/level", "requests/level"), strict=True):
            ms = [m for m in level if m.unit == unit]
            xs = list(range(len(ms)))
            ax.bar(xs, [m.median for m in ms], color="#4c72b0")
            _errorbar(ax, xs, ms, "median, min\N{EN DASH}max", linestyle="none", color="black")
            ax.set_xticks(xs)
            ax.set_xticklabels([m.case.split(":")[0] for m in ms], fontsize=9)
            ax.set_ylabel(unit)
        panels[0].set_title(
            "factorial level: cached, plain rpc (same worker), stock SDK client (plain rpc)"
        )
        save(fig, "factorial_level.png")
    return written


# -- main -----------------------------------------------------------------------------------------

SECTIONS: list[tuple[str, Callable[[Plan, Callable[[str], None]], Awaitable[list[Measure] | None]]]]
SECTIONS = [
    ("factorial chain + fan-out throughput", modes_figures),
    ("fan-out width", width_figures),
    ("stored promises", stored_figures),
    ("cache hit", cache_figures),
    ("operator reaction", reaction_figures),
    ("factorial level", level_figures),
]


def _finite(measures: list[Measure]) -> bool:
    return bool(measures) and all(
        m.values and all(math.isfinite(v) for v in m.values) for m in measures
    )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the reduced suite (CI: bench-quick)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--only", default="", help="comma-separated section names to run (default: all)"
    )
    args = parser.parse_args()
    setup_logging("warning", "json")
    # Worker processes log at info, as they run by default.
    os.environ.setdefault("RESONATE_PATTERNS_LOG_LEVEL", "info")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_for(args.quick)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    started = time.monotonic()
    host = {
        "date": utc_now(),
        "cores": cores(),
        "cpu": cpu_model(),
        "load_before": load_average(),
        "reference_before_ms": cpu_reference_ms(),
        **versions(),
    }
    suite = "bench-quick (reduced)" if plan.quick else "bench (full)"
    say(f"resonate-patterns benchmark suite, {suite}, {host['date']}")
    say(
        f"cores {host['cores']} ({host['cpu']}); load average {_load(host['load_before'])}"
        " at the start"
    )
    say(
        f"python {host['python']}, resonate-sdk {host['resonate-sdk']},"
        f" resonate-patterns {host['resonate-patterns']}"
    )
    measures: list[Measure] = []
    failed: list[str] = []
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    for name, section in SECTIONS:
        if only and not any(n in name for n in only):
            continue
        say(f"== {name}")
        try:
            found = await section(plan, say)
        except Exception:  # a crashed benchmark fails the suite, after the others ran
            say(traceback.format_exc().rstrip())
            failed.append(f"{name}: crashed")
            continue
        if found is None:
            continue
        if not _finite(found):
            failed.append(f"{name}: no numbers")
        measures += [m for m in found if m.values]
    host["reference_after_ms"] = cpu_reference_ms()
    host["load_after"] = load_average()
    host["seconds"] = time.monotonic() - started

    heading = [
        f"{suite}, {host['date']}: {host['cores']} cores ({host['cpu']}), load average"
        f" {_load(host['load_before'])} before, {_load(host['load_after'])} after;"
        f" host speed reference {host['reference_before_ms']:.0f} ms before,"
        f" {host['reference_after_ms']:.0f} ms after (lower is faster);"
        f" python {host['python']}, resonate-sdk {host['resonate-sdk']},"
        f" resonate-patterns {host['resonate-patterns']}; {host['seconds']:.0f} s",
    ]
    lines = [*heading, "", *table(measures)]
    say("")
    for line in lines:
        say(line)
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(
        json.dumps({"host": host, "measures": [m.as_dict() for m in measures]}, indent=2) + "\n"
    )
    title = f"{host['date']}, {host['cores']} cores, resonate-patterns {host['resonate-patterns']}"
    written = plots(measures, out_dir, title)
    say(f"\nwrote {out_dir / 'results.md'}, results.json, " + ", ".join(p.name for p in written))
    if not measures:
        failed.append("no benchmark produced numbers")
    if failed:
        say("FAILED: " + "; ".join(failed))
        return 1
    return 0


def _load(load: Any) -> str:
    return "/".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
