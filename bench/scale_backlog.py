"""Does scaling up during a backlog help? Scale 1 -> N workers mid-run and time the rest.

Issue [8], D8: a worker that parks every ``execute`` it cannot start yet in
memory keeps the whole backlog to itself, so workers added later sit idle.
This runs one ``parallel_enrich`` of ``--ids`` leaves of ``--step-ms`` each on
one worker (``--capacity`` steps at a time), starts ``--to - 1`` more workers
``--scale-after`` seconds in, and reports:

* ``remaining``: seconds from the scale-up to the result;
* ``alone``: what one worker would have needed for the leaves left at the
  scale-up (``left / capacity x step``);
* ``speed-up``: ``alone / remaining`` (ideal: ``--to``);
* the leaves each worker ran (from each worker's own metrics).

Server: the project's local server by default, or the official Resonate
server with ``--official PATH`` (a ``resonate`` binary built from
resonatehq/resonate; ``--retry-ms`` sets its ``tasks.retry_timeout``, the chart
sets 1000 ms; ``messages.poll_interval`` is the chart's 10 ms).

Usage: python bench/scale_backlog.py [--official PATH] [--retry-ms 1000]
         [--ids 2000] [--step-ms 1000] [--capacity 64] [--scale-after 3] [--to 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from service.client import invoke
from service.config import load_settings
from service.local.supervisor import Stack, plan_stack
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from service.runtime import Runtime, build_runtime
from service.telemetry.logging import setup_logging


async def _leaves_run(session: aiohttp.ClientSession, url: str) -> int:
    """``enrich_one`` executions a worker resolved, from its ``/metrics``."""
    async with session.get(url) as resp:
        text = await resp.text()
    done = 0.0
    for line in text.splitlines():
        if (
            line.startswith("resonate_patterns_executions_total{")
            and 'function="enrich_one"' in line
            and 'outcome="resolved"' in line
        ):
            done += float(line.rsplit(" ", 1)[1])
    return int(done)


def _free_ports(count: int) -> list[int]:
    """Ports free right now, for the official server (it is told its ports; ours pick their own)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def _start_official(
    binary: str, tmp: Path, port: int, metrics_port: int, retry_ms: int
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "RESONATE_STORAGE__SQLITE__PATH": str(tmp / "resonate.db"),
        "RESONATE_TASKS__RETRY_TIMEOUT": str(retry_ms),
        "RESONATE_MESSAGES__POLL_INTERVAL": "10",
        "RESONATE_LEVEL": "warn",
    }
    log = (tmp / "official.log").open("ab")  # owned by the child
    return await asyncio.create_subprocess_exec(
        binary,
        "serve",
        "--server-port",
        str(port),
        "--observability-metrics-port",
        str(metrics_port),
        env=env,
        stdout=log,
        stderr=log,
    )


@dataclass(frozen=True)
class Run:
    left: int  # leaves not yet run when the scale-up began
    alone: float  # seconds one worker would need for them
    remaining: float  # seconds from the scale-up to the result
    per_worker: list[int]

    @property
    def speedup(self) -> float:
        return self.alone / self.remaining


async def run_once(args: argparse.Namespace) -> Run:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        settings = load_settings({"RESONATE_PATTERNS_DATA_DIR": tmpdir})
        plan = plan_stack(settings, workers=1, port=0, data=None, group=None)
        official = None
        if args.official:
            port, metrics_port = _free_ports(2)
            plan = dataclasses.replace(plan, server_port=port)
            official = await _start_official(args.official, tmp, port, metrics_port, args.retry_ms)
        stack = Stack(
            plan,
            out=lambda _: None,
            extra_env={
                "RESONATE_PATTERNS_STEP_DELAY_MS": str(args.step_ms),
                "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS": str(args.capacity),
            },
            server_args=["--retry-ms", str(args.retry_ms)],
            start_server=official is None,
            server_ready_path="/ready" if official else "/readyz",
        )
        await stack.start()
        client: Runtime = build_runtime(
            load_settings({"RESONATE_URL": stack.plan.url}), role="client"
        )
        client.start()
        try:
            async with aiohttp.ClientSession() as session:
                ids = list(range(args.ids))
                work = asyncio.create_task(invoke(client, pattern("parallel_enrich"), (ids,)))
                await asyncio.sleep(args.scale_after)
                first = f"http://{plan.host}:{stack.workers[0].port}/metrics"
                done_at_scale = await _leaves_run(session, first)
                await stack.scale(args.to)
                scaled_at = time.monotonic()
                result = await asyncio.wait_for(work, 900)
                remaining = time.monotonic() - scaled_at
                if result.result != [enrich_record(i) for i in ids]:
                    msg = "wrong result"
                    raise RuntimeError(msg)
                per_worker = [
                    await _leaves_run(session, f"http://{plan.host}:{w.port}/metrics")
                    for w in stack.workers
                ]
        finally:
            await client.stop()
            await stack.stop()
            if official is not None:
                official.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(official.wait(), 10)
                if official.returncode is None:
                    official.kill()
                    await official.wait()
        left = args.ids - done_at_scale
        return Run(left, left / args.capacity * args.step_ms / 1000, remaining, per_worker)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="path to an official `resonate` binary")
    parser.add_argument("--retry-ms", type=int, default=1000, help="server retry timeout (1000)")
    parser.add_argument("--ids", type=int, default=2000, help="parallel_enrich fan-out (2000)")
    parser.add_argument("--step-ms", type=int, default=1000, help="leaf step delay (1000)")
    parser.add_argument("--capacity", type=int, default=64, help="steps per worker (64)")
    parser.add_argument("--scale-after", type=float, default=3.0, help="seconds before (3)")
    parser.add_argument("--to", type=int, default=4, help="workers after scaling (4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs (1)")
    args = parser.parse_args()
    setup_logging("warning", "console")
    server = f"official {args.official}" if args.official else "local server"
    runs = []
    for run in range(args.repeats):
        print(f"run {run + 1}/{args.repeats} on the {server}", file=sys.stderr)
        runs.append(await run_once(args))
    print(
        f"parallel_enrich of {args.ids} leaves x {args.step_ms} ms, {args.capacity} per worker, "
        f"1 -> {args.to} workers after {args.scale_after:g} s, {server}, "
        f"retry timeout {args.retry_ms} ms"
    )
    head = f"{'run':>3} {'left':>5} {'alone':>7} {'remaining':>9} {'speed-up':>8}"
    print(f"{head}  leaves per worker")
    for i, r in enumerate(runs, 1):
        print(
            f"{i:>3} {r.left:>5} {r.alone:>6.1f}s {r.remaining:>8.1f}s "
            f"{r.speedup:>7.2f}x  {r.per_worker}"
        )
    if len(runs) > 1:
        print(f"median speed-up {statistics.median(r.speedup for r in runs):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
