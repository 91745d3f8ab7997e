"""How long work stranded on a killed worker's stream waits before it runs elsewhere.

The official Resonate server re-sends the ``execute`` of a pending task only
when ``tasks.retry_timeout`` (30 s by default) passes; an ``execute`` written
to a worker that then dies is lost until then. The local server can also
re-send such work the moment the dead worker's stream closes. This measures
both.

Each scenario: a local stack (server + 2 workers),
``RESONATE_PATTERNS_STEP_DELAY_MS=200`` and ``RESONATE_PATTERNS_MAX_CONCURRENT_TASKS=8``
(each worker runs 8 steps at a time, so most work sent to a worker waits in
it unacquired, which is when a crash strands it), one ``parallel_enrich`` of
100 ids, and ``kill -9`` of worker-1 one second in. *Stranded* tasks are the
ones the server had written to the dead worker's stream and nobody had
acquired (listed by the server's ``worker_disconnected`` log event); a task's
*wait* runs from the kill to its ``execution_started`` on the surviving
worker, so it includes that worker's own queue (at most ~100 x 200 ms / 8).

Scenarios: the retry timer alone at 30000 ms (the official default) and at
500 ms (the official docs' Kubernetes example), and each timer plus the
re-send on stream close (the local server's default is 30000 ms + re-send).

Usage: python bench/resend_wait.py [--ids 100] [--step-ms 200] [--concurrency 8]
                                   [--kill-after 1.0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from service.client import invoke
from service.config import load_settings
from service.local.supervisor import Stack, plan_stack
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from service.runtime import Runtime, build_runtime
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    name: str
    retry_ms: int
    resend_on_close: bool

    @property
    def server_args(self) -> list[str]:
        args = ["--retry-ms", str(self.retry_ms)]
        return args if self.resend_on_close else [*args, "--no-resend-on-close"]


SCENARIOS = (
    Scenario("retry timer 30000 ms only (official default)", 30_000, False),
    Scenario("retry timer 500 ms only", 500, False),
    Scenario("timer 30000 ms + resend on stream close", 30_000, True),
    Scenario("timer 500 ms + resend on stream close", 500, True),
)


@dataclass
class Result:
    scenario: Scenario
    stranded: int
    released: int
    waits: list[float]  # seconds from the kill, one per stranded task
    finished_after: float  # seconds from the kill to the workflow's result
    executes: int  # execute messages the server sent in the whole run
    refused_acquires: int  # task.acquire answered 409 (a duplicate execute lost the race)


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def _server_counts(url: str) -> tuple[int, int]:
    """(execute messages sent, task.acquire 409s) from the server's metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    executes = refused = 0.0
    for line in text.splitlines():
        if line.startswith('resonate_devserver_messages_total{kind="execute"'):
            if 'outcome="delivered"' in line or 'outcome="held"' in line:
                executes += float(line.rsplit(" ", 1)[1])
        elif line.startswith('resonate_devserver_requests_total{kind="task.acquire",status="409"}'):
            refused += float(line.rsplit(" ", 1)[1])
    return int(executes), int(refused)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _disconnect_event(path: Path, within: float = 10.0) -> dict[str, Any]:
    """The server's ``worker_disconnected`` event (log lines may reach the file late)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for event in _events(path):
            if event.get("event") == "worker_disconnected":
                return event
        await asyncio.sleep(0.05)
    msg = f"no worker_disconnected event in {path}"
    raise RuntimeError(msg)


async def run_one(scenario: Scenario, args: argparse.Namespace, run: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"RESONATE_PATTERNS_DATA_DIR": tmp})
        plan = plan_stack(settings, workers=2, port=0, data=None, group=None)
        stack = Stack(
            plan,
            out=lambda _: None,
            extra_env={
                "RESONATE_PATTERNS_STEP_DELAY_MS": str(args.step_ms),
                "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS": str(args.concurrency),
            },
            server_args=scenario.server_args,
        )
        await stack.start()
        client: Runtime = build_runtime(
            load_settings({"RESONATE_URL": stack.plan.url}), role="client"
        )
        client.start()
        try:
            ids = [run * 1_000_000 + i for i in range(args.ids)]
            work = asyncio.create_task(invoke(client, pattern("parallel_enrich"), (ids,)))
            await asyncio.sleep(args.kill_after)
            if work.done():
                msg = "the workload finished before the kill; raise --ids or lower --kill-after"
                raise RuntimeError(msg)
            victim, survivor = stack.workers
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            result = await asyncio.wait_for(work, 600)
            finished_after = time.time() - killed_at
            if result.result != [enrich_record(i) for i in ids]:
                msg = "wrong result"
                raise RuntimeError(msg)
            gone = await _disconnect_event(stack.logs_dir / "server.log")
            stranded = set(gone["unacquired_task_ids"])
            first_start: dict[str, float] = {}
            for event in _events(survivor.log_path):
                pid = event.get("promise_id")
                if (
                    event.get("event") == "execution_started"
                    and isinstance(pid, str)
                    and pid in stranded
                ):
                    at = _epoch(event["timestamp"])
                    if at >= killed_at:
                        first_start.setdefault(pid, at)
            if set(first_start) != stranded:
                msg = f"{len(stranded - set(first_start))} stranded task(s) never ran elsewhere"
                raise RuntimeError(msg)
            executes, refused = await _server_counts(stack.plan.url)
            return Result(
                scenario,
                stranded=int(gone["unacquired_tasks"]),
                released=int(gone["leased_tasks"]),
                waits=sorted(t - killed_at for t in first_start.values()),
                finished_after=finished_after,
                executes=executes,
                refused_acquires=refused,
            )
        finally:
            await client.stop()
            await stack.stop()


def _table(results: list[Result]) -> str:
    head = (
        f"{'scenario':<46} {'stranded':>8} {'in-flight':>9} {'wait min':>9} "
        f"{'p50':>7} {'max':>7} {'done after kill':>15} {'executes':>8} {'409s':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        waits = r.waits or [float("nan")]
        lines.append(
            f"{r.scenario.name:<46} {r.stranded:>8} {r.released:>9} {min(waits):>8.2f}s "
            f"{statistics.median(waits):>6.2f}s {max(waits):>6.2f}s {r.finished_after:>14.2f}s "
            f"{r.executes:>8} {r.refused_acquires:>5}"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=100, help="parallel_enrich fan-out (100)")
    parser.add_argument("--step-ms", type=int, default=200, help="leaf step delay (200)")
    parser.add_argument("--concurrency", type=int, default=8, help="steps per worker (8)")
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds before kill (1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per scenario (1)")
    args = parser.parse_args()
    setup_logging("warning", "console")
    results: list[Result] = []
    for scenario in SCENARIOS:
        for run in range(args.repeats):
            print(f"running: {scenario.name} (run {run + 1}/{args.repeats})", file=sys.stderr)
            results.append(await run_one(scenario, args, run))
    print(
        f"parallel_enrich of {args.ids} ids, 2 workers, step {args.step_ms} ms, "
        f"{args.concurrency} steps per worker, kill -9 of one worker {args.kill_after:g} s in"
    )
    print("stranded: written to the dead worker's stream, not acquired; in-flight: acquired")
    print("(released at once by the local server); wait: kill -> execution on the survivor;")
    print("executes: execute messages sent in the run; 409s: acquires lost to a duplicate")
    print()
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
