"""The local stack with real processes: distribution, crashes, restarts, routing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.client import invoke
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.conftest import ROOT
from tests.integration.conftest import log_events, scrape, total, worker_url

pytestmark = pytest.mark.slow


async def _executed(stack: Any) -> list[float]:
    counts = []
    for i in range(len(stack.workers)):
        samples = await scrape(worker_url(stack, i))
        counts.append(total(samples, "resonate_patterns_executions_total"))
    return counts


async def _events_named(log: Path, name: str, within: float = 5.0) -> list[dict[str, Any]]:
    """The ``name`` events of a JSON log file, waiting up to ``within`` s for the first."""
    deadline = time.monotonic() + within
    while True:
        found = [e for e in log_events(log) if e["event"] == name]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_three_workers__factorial_and_500_rpc_fanout__correct_and_shared(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(3)
    client = clients(stack.plan.url)
    fact = await invoke(client, pattern("factorial"), (25,))
    assert fact.result == math.factorial(25)
    ids = list(range(500))
    fan = await invoke(client, pattern("parallel_enrich"), (ids,))
    assert fan.result == [enrich_record(i) for i in ids]
    counts = await _executed(stack)
    assert sum(counts) >= 500 + 25
    assert sum(1 for c in counts if c > 0) >= 2, f"work was not shared: {counts}"


async def test_kill_9_worker_mid_factorial__completes_within_5s(stacks: Any, clients: Any) -> None:
    stack = await stacks(3, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "40"})
    client = clients(stack.plan.url)
    n = 60
    run = asyncio.create_task(invoke(client, pattern("factorial"), (n,)))
    await asyncio.sleep(0.8)
    assert not run.done()
    victim = stack.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    result = await asyncio.wait_for(run, 30)
    finished_at = time.monotonic()
    assert result.result == math.factorial(n)
    # The remaining levels take about (levels left) x 40 ms; recovery must not
    # add a lease TTL (60 s) on top: the whole run ends within 5 s of the kill.
    # The dead worker's leases come back after the server's reconnect grace
    # (1.5 s by default), so that is inside these 5 s too.
    assert finished_at - killed_at < 5, f"took {finished_at - killed_at:.1f}s after the kill"
    # The server writes its log lines on its own schedule: wait for them.
    log = stack.logs_dir / "server.log"
    [gone] = await _events_named(log, "worker_disconnected")
    assert gone["release"] == "after_grace"
    [released] = await _events_named(log, "worker_released")
    assert released["pid"] == gone["pid"]
    assert released["released_tasks"] >= 0
    assert 1.4 < released["after_seconds"] < 3, "released once the grace ran out"


async def test_kill_9_server_mid_run__nothing_lost_and_cache_survives(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(2, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "25"})
    client = clients(stack.plan.url)
    before = await invoke(client, pattern("factorial"), (15,))
    assert not before.cached
    supervise = asyncio.Event()
    supervisor = asyncio.create_task(stack.supervise(supervise))
    try:
        run = asyncio.create_task(invoke(client, pattern("factorial"), (70,)))
        await asyncio.sleep(0.8)
        assert not run.done()
        os.kill(stack.server.pid, signal.SIGKILL)
        result = await asyncio.wait_for(run, 60)
        assert result.result == math.factorial(70)
    finally:
        supervise.set()
        await supervisor
    assert stack.server.restarts == 1
    again = await invoke(client, pattern("factorial"), (15,))
    assert (again.result, again.cached) == (math.factorial(15), True)
    for k in (0, 14, 42, 69):
        cached = await invoke(client, pattern("factorial"), (k,))
        assert (cached.result, cached.cached) == (math.factorial(k), True)


async def test_two_groups__rpc_targets__run_only_on_target_group(stacks: Any, clients: Any) -> None:
    routed = {
        "RESONATE_PATTERNS_FACTORIAL_TARGET": "beta",
        "RESONATE_PATTERNS_ENRICH_TARGET": "beta",
    }
    alpha = await stacks(2, group="alpha", env=routed, name="alpha")
    beta = await stacks(2, group="beta", server_url=alpha.plan.url, name="beta")
    client = clients(alpha.plan.url, RESONATE_GROUP="alpha")
    assert (await invoke(client, pattern("factorial"), (12,))).result == math.factorial(12)
    ids = list(range(40))
    assert (await invoke(client, pattern("parallel_enrich"), (ids,))).result == [
        enrich_record(i) for i in ids
    ]
    await asyncio.sleep(0.2)
    alpha_events = [e for w in alpha.workers for e in log_events(w.log_path)]
    beta_events = [e for w in beta.workers for e in log_events(w.log_path)]

    def started(events: list[dict[str, Any]], function: str) -> list[dict[str, Any]]:
        return [
            e for e in events if e["event"] == "execution_started" and e["function"] == function
        ]

    assert {e["depth"] for e in started(alpha_events, "factorial")} == {0}
    assert {e["depth"] for e in started(beta_events, "factorial")} == set(range(1, 13))
    assert started(alpha_events, "enrich_one") == []
    assert len({e["promise_id"] for e in started(beta_events, "enrich_one")}) == 40
    assert len(started(alpha_events, "parallel_enrich")) >= 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_up_killed_outright__server_and_workers_exit_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    env["RESONATE_PATTERNS_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "up", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest_path = tmp_path / "stack.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not manifest_path.exists():
        time.sleep(0.1)
    manifest = json.loads(manifest_path.read_text())
    children = [manifest["server"]["pid"], *(w["pid"] for w in manifest["workers"])]
    assert len(children) == 3
    assert all(_alive(pid) for pid in children)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], "orphans outlived the supervisor"
