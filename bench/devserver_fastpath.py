"""Does the local server's ``POST /`` fast path pay for itself? On vs off, same requests.

The request mix is a real factorial run's: ``factorial(N)`` is computed once
in embedded mode while every protocol request the SDK sends is recorded.
Each measured run starts a fresh local server in its own process (SQLite
store, uvloop, as ``resonate-patterns server`` runs) with the fast path on
or off, and replays that recording over the workers' own HTTP connector
(:class:`~service.connector.http.PooledHttpNetwork`, keep-alive): ``C``
clients at once, each a copy of the run under its own ids, each sending its
requests one after another as a worker does. Runs alternate on/off so that
drift on a shared host hits both alike; the table shows medians. Server CPU
per request is the server process's on-CPU time over the replay (all its
threads, from ``/proc/<pid>/task/*/schedstat``, nanoseconds; 0 where that
file does not exist), divided by the requests sent.

Usage: python bench/devserver_fastpath.py [--n 60] [--runs 5] [--concurrency 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.client import invoke  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.connector.http import PooledHttpNetwork  # noqa: E402
from service.devserver.engine import Engine  # noqa: E402
from service.patterns.registry import pattern  # noqa: E402
from service.runtime import build_runtime  # noqa: E402
from service.telemetry.logging import setup_logging  # noqa: E402

#: What every copy's ids start with; each client replaces it to get its own ids.
ID_ROOT = b"factorial-"


async def record(n: int) -> list[bytes]:
    """The request bodies the SDK sends while computing ``factorial(n)`` from scratch."""
    bodies: list[bytes] = []
    original = Engine.request

    async def recording(self: Engine, envelope: object) -> object:
        bodies.append(msgspec.json.encode(envelope))
        return await original(self, envelope)

    Engine.request = recording  # type: ignore[method-assign,assignment]
    try:
        runtime = build_runtime(load_settings({}), role="client")
        runtime.start()
        try:
            result = await invoke(runtime, pattern("factorial"), (n,), wait_seconds=120)
        finally:
            await runtime.stop()
    finally:
        Engine.request = original  # type: ignore[method-assign]
    assert not result.cached
    return bodies


def serve(port: int, data: str, fast_path: bool) -> None:
    """Run a local server until stdin closes (the child process's entry point)."""
    from service.devserver.server import DevServer, ServerOptions

    async def main() -> None:
        server = DevServer(ServerOptions(data=data, fast_path=fast_path))
        bound = await server.start("127.0.0.1", port)
        sys.stdout.write(f"{bound}\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop()

    setup_logging("warning", "json")
    asyncio.run(main(), loop_factory=uvloop.new_event_loop)


async def replay(url: str, copies: list[list[bytes]]) -> tuple[float, list[float], dict[int, int]]:
    """Send each copy's requests in order, the copies at once; (seconds, latencies, statuses)."""
    network = PooledHttpNetwork(url, conn_limit=len(copies))
    await network.start()
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()

    async def client(bodies: list[bytes]) -> None:
        for body in bodies:
            started = time.perf_counter()
            reply = await network.send(body.decode())
            latencies.append(time.perf_counter() - started)
            statuses[msgspec.json.decode(reply)["head"]["status"]] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in copies))
    elapsed = time.perf_counter() - started
    await network.stop()
    return elapsed, latencies, dict(statuses)


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of process ``pid`` so far (0 when unknown)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


async def measure(
    bodies: list[bytes], fast_path: bool, concurrency: int, run: int
) -> tuple[float, float, float, float, dict[int, int]]:
    """One run on a fresh server: (requests/s, median and p99 latency µs, server CPU µs/request,
    statuses)."""
    copies = [
        [b.replace(ID_ROOT, b"r%dc%d-%s" % (run, i, ID_ROOT)) for b in bodies]
        for i in range(concurrency)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            "on" if fast_path else "off",
            "--data",
            str(Path(tmp) / "server.db"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            port = int(await child.stdout.readline())
            cpu_before = cpu_ns(child.pid)
            elapsed, latencies, statuses = await replay(f"http://127.0.0.1:{port}", copies)
            cpu = cpu_ns(child.pid) - cpu_before
        finally:
            child.stdin.close()
            await asyncio.wait_for(child.wait(), 30)
    total = sum(len(c) for c in copies)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    cpu_us = cpu / total / 1e3
    return total / elapsed, statistics.median(latencies) * 1e6, p99 * 1e6, cpu_us, statuses


async def main(args: argparse.Namespace) -> None:
    setup_logging("warning", "json")
    bodies = await record(args.n)
    kinds = collections.Counter(msgspec.json.decode(b)["kind"] for b in bodies)
    mix = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    print(f"factorial({args.n}): {len(bodies)} requests ({mix})")
    print(f"host: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.runs} runs each\n")
    print(
        "| clients | fast path | requests/s | median latency (µs) | p99 latency (µs) "
        "| server CPU (µs/request) |"
    )
    print("|---:|:---|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        results: dict[bool, list[tuple[float, float, float, float]]] = {True: [], False: []}
        seen: collections.Counter[int] = collections.Counter()
        for run in range(args.runs):
            # Alternate which goes first, so neither always runs on a warmer host.
            order = (True, False) if run % 2 == 0 else (False, True)
            for fast in order:
                rps, p50, p99, cpu, statuses = await measure(bodies, fast, concurrency, run)
                assert statuses.get(500, 0) == 0, statuses
                seen.update(statuses)
                results[fast].append((rps, p50, p99, cpu))
        for fast in (True, False):
            rps = statistics.median(r[0] for r in results[fast])
            p50 = statistics.median(r[1] for r in results[fast])
            p99 = statistics.median(r[2] for r in results[fast])
            cpu = statistics.median(r[3] for r in results[fast])
            label = "on" if fast else "off"
            print(
                f"| {concurrency} | {label} | {rps:,.0f} | {p50:,.0f} | {p99:,.0f} | {cpu:,.1f} |"
            )
        on = statistics.median(r[0] for r in results[True])
        off = statistics.median(r[0] for r in results[False])
        print(f"| {concurrency} | gain | {on / off - 1:+.0%} | | | |")
        replies = ", ".join(f"{status}: {count}" for status, count in sorted(seen.items()))
        print(f"<!-- {concurrency} clients, reply statuses over all runs: {replies} -->")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="factorial(n) to record (default 60)")
    parser.add_argument("--runs", type=int, default=5, help="runs per setting (default 5)")
    parser.add_argument(
        "--concurrency",
        type=lambda raw: [int(x) for x in raw.split(",")],
        default=[1, 4],
        help="clients at once, comma-separated (default 1,4)",
    )
    parser.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve is not None:
        serve(0, arguments.data, arguments.serve == "on")
    else:
        asyncio.run(main(arguments), loop_factory=uvloop.new_event_loop)
