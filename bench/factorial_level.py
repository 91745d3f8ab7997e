"""What one factorial level costs: the cached factorial against plain recursive rpc.

Three variants, against one local server (``python -m service server``, SQLite
file store, started here through :mod:`service.local.supervisor` with no
workers of its own), each served by one worker process started here:

  cached   this project's ``factorial`` (keyed cache: lookup + publish per
           level) on a project worker (``build_runtime(role="worker")``: the
           project connector, drain gate, heartbeats, telemetry, logging) on
           the event loop ``resonate-patterns worker`` runs (uvloop when
           installed, :func:`service.cli.common.run_loop`)
  plain    a plain recursive-rpc factorial (``ctx.rpc(self, n - 1)``, no cache,
           instrumented like ``factorial``) on that same worker process
  stock    the same plain factorial on the stock SDK client
           (``Resonate(url=...)``: its own HTTP connection, no project code)
           under ``asyncio.run``, as the seed ran it

Each round runs every variant once, interleaved, on about 200 new levels:
round r invokes ``factorial(5 + 200 r)`` (the 200 levels above the previous
round's are new; the lowest of them finds the previous round's value in the
cache) and the plain
variants ``n = 200`` under a new root id. The root is invoked by the worker
process itself (``rpc`` to its own group) and timed there, from the create to
the result. Requests per level are read from the server's own counter
(``resonate_devserver_requests_total``, by kind) around each run, and CPU
per level of the worker process and of the server from ``/proc/<pid>/stat``
(clock ticks: 10 ms resolution, about 2-5% of a run).

Usage: python bench/factorial_level.py [--rounds 3] [--levels 200] [--json PATH]
Prints a markdown table (median and range per variant, ms/level, levels/s,
requests/level, the ratios the targets are stated in), the core count, the
load average and the versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resonate.context import Context

ROOT = Path(__file__).resolve().parent.parent
#: Registered name of the plain factorial on the project worker.
PLAIN = "bench_plain_factorial"
#: Registered name (and group) of the plain factorial on the stock SDK worker.
STOCK = "bench_stock_factorial"
VARIANTS = ("cached", "plain", "stock")
#: The warm-up's factorial: the cached variant's rounds start above it.
WARM_N = 5
#: Longest wait for one variant's run.
RUN_TIMEOUT_SECONDS = 600.0


# -- worker processes --------------------------------------------------------------


async def _serve(handle: Any) -> None:
    """Read one JSON command per stdin line, run it, answer one JSON line on fd ``out``."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    # Whatever the worker logs goes to stderr, never into the answers.
    os.dup2(2, 1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out.write(json.dumps({"ready": True}) + "\n")
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd.get("stop"):
            break
        started = time.perf_counter()
        result = await handle(cmd)
        seconds = time.perf_counter() - started
        out.write(json.dumps({"seconds": seconds, "digits": len(str(result))}) + "\n")


async def project_worker(url: str) -> None:
    """A project worker (as ``service.worker`` builds it) that also serves :data:`PLAIN`."""
    from resonate.retry import Never

    from service.config import load_settings
    from service.patterns.deps import PatternDeps
    from service.runtime import build_runtime
    from service.telemetry.instrument import instrumented
    from service.telemetry.logging import setup_logging
    from service.telemetry.metrics import WorkerMetrics

    settings = load_settings({"RESONATE_URL": url, "RESONATE_PATTERNS_MAX_N": "1558"})
    setup_logging(settings.log_level, "json")

    @instrumented(PLAIN)
    async def plain(ctx: Context, n: int) -> int:
        if n == 0:
            return 1
        group = ctx.get_dependency(PatternDeps).settings.factorial_group
        sub = await ctx.options(target=group).rpc(PLAIN, n - 1)
        return n * int(sub)

    runtime = build_runtime(settings, role="worker", metrics=WorkerMetrics(settings.group))
    runtime.resonate.register(plain, name=PLAIN, retry_policy=Never())
    runtime.start()
    await runtime.opened()
    target = runtime.resonate.options(target=settings.group)

    async def handle(cmd: dict[str, Any]) -> Any:
        name = "factorial" if cmd["variant"] == "cached" else PLAIN
        return await target.rpc(cmd["id"], name, cmd["n"]).result()

    try:
        await _serve(handle)
    finally:
        await runtime.stop()


async def stock_worker(url: str) -> None:
    """The stock SDK client, ``Resonate(url=...)``, serving the plain factorial."""
    from resonate.resonate import Resonate
    from resonate.retry import Never

    resonate = Resonate(url=url, group=STOCK)

    async def plain(ctx: Context, n: int) -> int:
        if n == 0:
            return 1
        sub = await ctx.rpc(STOCK, n - 1)
        return n * int(sub)

    resonate.register(plain, name=STOCK, retry_policy=Never())
    await asyncio.sleep(0.5)  # its event stream connects in the background

    async def handle(cmd: dict[str, Any]) -> Any:
        return await resonate.rpc(cmd["id"], STOCK, cmd["n"]).result()

    try:
        await _serve(handle)
    finally:
        await resonate.stop()


# -- the driver --------------------------------------------------------------------


class Child:
    """A worker process driven over stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, role: str, url: str, log: Path) -> Child:
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                f"--{role}",
                url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=1 << 20,
            )
        child = cls(proc)
        assert (await child._answer())["ready"]
        return child

    async def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), RUN_TIMEOUT_SECONDS)
        if not line:
            msg = f"worker process exited ({self.proc.returncode}); see its log"
            raise RuntimeError(msg)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def run(self, **cmd: Any) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        seconds: float = (await self._answer())["seconds"]
        return seconds

    async def stop(self) -> None:
        if self.proc.stdin is not None and self.proc.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.proc.stdin.write(b'{"stop": true}\n')
                await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def requests_by_kind(url: str) -> Counter[str]:
    """The server's request counter, summed over statuses, per request kind."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("resonate_devserver_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            kind = labels.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] += int(float(value))
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


async def drive(rounds: int, levels: int) -> dict[str, Any]:
    from common import start_stack

    results: dict[str, dict[str, list[Any]]] = {
        v: {"ms": [], "requests": [], "kinds": [], "worker_cpu_ms": [], "server_cpu_ms": []}
        for v in VARIANTS
    }
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), workers=0)
        url = stack.plan.url
        workers: dict[str, Child] = {}
        try:
            project = await Child.spawn("project-worker", url, Path(tmp) / "project.log")
            stock = await Child.spawn("stock-worker", url, Path(tmp) / "stock.log")
            workers = {"cached": project, "plain": project, "stock": stock}
            # Warm-up: imports, connections, code paths (not measured).
            await project.run(variant="cached", id=f"factorial-{WARM_N}", n=WARM_N)
            await project.run(variant="plain", id="bench-plain-warm", n=5)
            await stock.run(variant="stock", id="bench-stock-warm", n=5)
            for r in range(1, rounds + 1):
                for variant in VARIANTS:
                    if variant == "cached":
                        n = WARM_N + levels * r
                        cmd: dict[str, Any] = {"id": f"factorial-{n}", "n": n}
                    else:
                        cmd = {"id": f"bench-{variant}-{r}", "n": levels}
                    before = await requests_by_kind(url)
                    worker_pid = workers[variant].proc.pid
                    cpu = (cpu_seconds(worker_pid), cpu_seconds(stack.server.pid))
                    seconds = await workers[variant].run(variant=variant, **cmd)
                    cpu_after = (cpu_seconds(worker_pid), cpu_seconds(stack.server.pid))
                    after = await requests_by_kind(url)
                    results[variant]["worker_cpu_ms"].append(
                        (cpu_after[0] - cpu[0]) * 1000 / levels
                    )
                    results[variant]["server_cpu_ms"].append(
                        (cpu_after[1] - cpu[1]) * 1000 / levels
                    )
                    kinds = after - before
                    # Every variant makes ``levels`` new levels per run (the
                    # plain ones one more: their level 0).
                    results[variant]["ms"].append(seconds * 1000 / levels)
                    results[variant]["requests"].append(sum(kinds.values()) / levels)
                    results[variant]["kinds"].append(
                        {k: round(v / levels, 2) for k, v in sorted(kinds.items())}
                    )
        finally:
            for child in {id(c): c for c in workers.values()}.values():
                await child.stop()
            await stack.stop()
    return results


def table(results: dict[str, Any], rounds: int, levels: int, load: tuple[float, ...]) -> str:
    ms = {v: statistics.median(results[v]["ms"]) for v in VARIANTS}
    labels = {
        "cached": "cached factorial (project worker)",
        "plain": "plain recursive rpc (project worker)",
        "stock": "plain recursive rpc (stock `Resonate(url=...)`)",
    }
    lines = [
        f"factorial level cost: local server (SQLite file), 1 worker process, "
        f"{rounds} interleaved rounds of {levels} new levels; median (min-max)",
        "",
        "| variant | ms/level | levels/s | requests/level | worker CPU ms/level "
        "| server CPU ms/level |",
        "|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        per_s = [1000 / m for m in results[v]["ms"]]
        lines.append(
            f"| {labels[v]} | {_spread(results[v]['ms'], '.2f')} | {_spread(per_s, '.0f')} "
            f"| {statistics.median(results[v]['requests']):.2f} "
            f"| {statistics.median(results[v]['worker_cpu_ms']):.2f} "
            f"| {statistics.median(results[v]['server_cpu_ms']):.2f} |"
        )
    lines += [
        "",
        f"- cached / plain (same worker): {ms['cached'] / ms['plain']:.2f}x (target <= 1.4x)",
        f"- cached / stock plain: {ms['cached'] / ms['stock']:.2f}x (target <= 1.0x)",
        f"- cached level: {ms['cached']:.2f} ms (target <= 3.0 ms)",
        "- requests per level by kind (median round): "
        + "; ".join(f"{v}: {results[v]['kinds'][len(results[v]['kinds']) // 2]}" for v in VARIANTS),
        f"- machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start; Python {platform.python_version()}, "
        f"resonate-sdk {version('resonate-sdk')}, resonate-patterns "
        f"{version('resonate-patterns')} from {ROOT}",
    ]
    return "\n".join(lines)


def measure(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``make bench`` (bench/suite.py): per variant, each run's ms/level and more."""
    rounds, levels = (2, 50) if quick else (3, 200)
    results = asyncio.run(drive(rounds, levels))
    return [
        {
            "variant": f"{v}: per level",
            "ms/level": results[v]["ms"],
            "levels/s": [1000 / m for m in results[v]["ms"]],
            "requests/level": results[v]["requests"],
        }
        for v in VARIANTS
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--project-worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--stock-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.project_worker:
        from service.cli.common import run_loop

        # On the loop a deployed worker runs on (``resonate-patterns worker``:
        # uvloop when installed); the stock worker on asyncio's, as the seed.
        run_loop(project_worker(args.project_worker))
        return 0
    if args.stock_worker:
        asyncio.run(stock_worker(args.stock_worker))
        return 0
    if WARM_N + args.levels * args.rounds > 1558:
        parser.error("--levels x --rounds must be at most 1558 (the largest factorial n)")
    load = os.getloadavg()
    results = asyncio.run(drive(args.rounds, args.levels))
    print(table(results, args.rounds, args.levels, load))
    if args.json is not None:
        args.json.write_text(json.dumps({"load": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
