"""Same-origin heartbeats against a local server that enforces the official rule.

From resonatehq/resonate PR #1119 on, a ``task.heartbeat`` whose tasks come
from more than one origin is refused (400 ``All tasks must belong to the
same origin``) and extends no lease. A worker holding tasks of two roots must
therefore beat once per origin, or a step longer than the TTL loses its lease
and runs again. Here one worker with a 2 s TTL runs two 5 s steps of two
different roots at once; each must keep its lease and run exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from resonate_base import PROTOCOL_VERSION

from service.client import invoke
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.integration.conftest import log_events, scrape, total

pytestmark = pytest.mark.slow

STEP_MS = 5000


async def _post(url: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    body = {"kind": kind, "head": {"corrId": "t", "version": PROTOCOL_VERSION}, "data": data}
    async with aiohttp.ClientSession() as session, session.post(url + "/", json=body) as resp:
        out: dict[str, Any] = await resp.json()
    return out


async def test_step_longer_than_ttl_with_two_roots_held__keeps_its_lease_and_runs_once(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(
        1,
        env={
            "RESONATE_PATTERNS_TASK_TTL_SECONDS": "2",
            "RESONATE_PATTERNS_STEP_DELAY_MS": str(STEP_MS),
        },
    )
    url = stack.plan.url
    client = clients(url)
    runs = [
        asyncio.create_task(invoke(client, pattern("enrich_batch"), ([record],)))
        for record in (1, 2)
    ]
    # Both roots are held by the one worker while their steps sleep.
    held: list[dict[str, Any]] = []
    for _ in range(200):
        page = await _post(url, "task.search", {"state": "acquired"})
        held = page["data"]["tasks"]
        if len(held) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(held) == 2, held
    # The rule is in force on this server: the same beat as one request is refused.
    mixed = await _post(
        url,
        "task.heartbeat",
        {"pid": held[0]["pid"], "tasks": [{"id": t["id"], "version": t["version"]} for t in held]},
    )
    assert (mixed["head"]["status"], mixed["data"]) == (
        400,
        "All tasks must belong to the same origin",
    )
    results = await asyncio.wait_for(asyncio.gather(*runs), 30)
    assert [r.result for r in results] == [[enrich_record(1)], [enrich_record(2)]]
    # Each 5 s step ran exactly once: no lease lapsed at 2 s.
    log = stack.workers[0].log_path
    started = [
        e
        for e in log_events(log)
        if e["event"] == "execution_started" and e["function"] in ("enrich_batch", "enrich_one")
    ]
    by_function = sorted((e["function"], e["attempt"]) for e in started)
    assert by_function == [("enrich_batch", 1)] * 2 + [("enrich_one", 1)] * 2, started
    samples = await scrape(url + "/metrics")
    beats_ok = total(
        samples, "resonate_devserver_requests_total", kind="task.heartbeat", status="200"
    )
    beats_refused = total(
        samples, "resonate_devserver_requests_total", kind="task.heartbeat", status="400"
    )
    assert beats_ok >= 2 * 3, "one beat per origin per second, for about 5 s"
    assert beats_refused == 1, "only the test's own mixed beat was refused"
