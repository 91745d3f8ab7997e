"""What the ``instrumented`` wrapper costs an execution, and how much is on the critical path.

A worker runs each body inside :func:`service.telemetry.instrument.instrumented`:
two log lines (``execution_started``, ``execution_finished``), the execution
context bound for the body, the execution metrics. In a chain of durable calls
(a factorial level) everything the wrapper does between "the SDK hands over
the task" and "the body sends its first request", and between "the body
returns" and "the SDK sends the result", is on the critical path; what runs in
a later loop iteration (the sink's flush) overlaps the wait for the server.

Each run is a fresh process (logging is process-wide state) configured as a
worker is (``setup_logging("info", "json")``, ``worker_pid`` and ``group``
bound, uvloop when installed), stderr into a file as the benchmarks' workers
have it. It runs ``--executions`` wrapped bodies one after the other, each body
returning at once, with promise ids as long as a factorial level's at depth
``--depth`` (lineage ids grow 2 characters per level), and times:

* ``critical``: the wrapper call itself (the body returns without awaiting, so
  the whole wrapper runs in one go; the sink's flush is not in it);
* ``total``: the call plus the loop iteration after it, where the sink writes
  (all the CPU the wrapper costs).

Variants: ``bare`` (the undecorated body: subtracted from the others),
``quiet`` (the wrapper with the log level at warning: metrics and bookkeeping
only), ``logged`` (the wrapper as a worker runs it). Runs are interleaved
round by round; medians and ranges are printed in µs per execution.

Usage: python bench/execution_telemetry.py [--executions 20000] [--rounds 5] [--depth 150]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "quiet", "logged")


@dataclass
class _Info:
    id: str
    parent_id: str
    origin_id: str


class _Ctx:
    """What the wrapper reads from a resonate ``Context``: ``info`` and one dependency."""

    def __init__(self, telemetry: Any, promise_id: str, origin_id: str) -> None:
        self.info = _Info(promise_id, promise_id, origin_id)
        self._telemetry = telemetry

    def get_dependency(self, _: type[Any]) -> Any:
        return self._telemetry


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _workload(variant: str, executions: int, depth: int) -> tuple[float, float]:
    import structlog

    from service.telemetry.instrument import Telemetry, instrumented
    from service.telemetry.logging import setup_logging
    from service.telemetry.metrics import WorkerMetrics

    setup_logging("warning" if variant == "quiet" else "info", "json")
    structlog.contextvars.bind_contextvars(worker_pid="bench-1", group="workers")
    telemetry = Telemetry(WorkerMetrics("workers"))

    async def body(ctx: Any, n: int) -> int:
        return n

    fn = body if variant == "bare" else instrumented("factorial")(body)
    lineage = ".".join("1" * depth)
    ctxs = [
        _Ctx(telemetry, f"factorial-{i}:{lineage}", f"factorial-{i}")
        for i in range(executions + 1000)
    ]
    critical = 0.0
    clock = time.perf_counter
    for warm in (True, False):
        batch = ctxs[:1000] if warm else ctxs[1000:]
        critical = 0.0
        started = clock()
        for i, ctx in enumerate(batch):
            t0 = clock()
            await fn(ctx, i)
            critical += clock() - t0
            await asyncio.sleep(0)  # the loop iteration in which the sink writes
        total = clock() - started
    return critical, total


def child(variant: str, executions: int, depth: int) -> None:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        critical, total = runner.run(_workload(variant, executions, depth))
    sys.stderr.flush()
    sys.stdout.write(json.dumps({"critical": critical, "total": total}) + "\n")


def _run(variant: str, executions: int, depth: int) -> tuple[dict[str, float], int]:
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, str(executions), str(depth)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=300,
            check=False,
        )
        err.seek(0)
        log = err.read()
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{log.decode()[-2000:]}")
    return json.loads(done.stdout), log.count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depth", type=int, default=150, help="lineage segments per id")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "EXECUTIONS", "DEPTH"))
    args = parser.parse_args()
    if args.child:
        variant, executions, depth = args.child
        child(variant, int(executions), int(depth))
        return 0

    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            result, lines = _run(variant, args.executions, args.depth)
            expected = 2 * (args.executions + 1000) if variant == "logged" else 0
            assert lines == expected, (variant, lines, expected)
            runs[variant].append(result)

    def per_execution(variant: str, key: str) -> list[float]:
        return [run[key] / args.executions * 1e6 for run in runs[variant]]

    out = sys.stdout
    out.write(
        f"{args.executions} executions per run, {args.rounds} interleaved runs, "
        f"ids {len('factorial-0:') + 2 * args.depth - 1} characters; µs per execution, "
        "median (min-max), the bare median subtracted\n\n"
    )
    out.write(f"{'variant':<8} {'critical':>22} {'total':>22}\n")
    base = {k: statistics.median(per_execution("bare", k)) for k in ("critical", "total")}
    for variant in VARIANTS:
        cells = []
        for key in ("critical", "total"):
            values = per_execution(variant, key)
            median = statistics.median(values)
            less = 0.0 if variant == "bare" else base[key]
            low, high = min(values) - less, max(values) - less
            cells.append(f"{median - less:7.2f} ({low:.2f}-{high:.2f})")
        out.write(f"{variant:<8} {cells[0]:>22} {cells[1]:>22}\n")
    out.write("\ncritical: the wrapper call; total: plus the loop iteration the sink writes in\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
