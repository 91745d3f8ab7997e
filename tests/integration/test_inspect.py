"""``get`` and ``ls`` against a real local stack, checked against the server's own records.

The truth each test compares with is read here with raw ``promise.search``
envelopes over HTTP (every record, values decoded by hand), not through
:mod:`service.inspect`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import sys
from typing import Any

import aiohttp
import pytest

from service.client import invoke
from service.connector.envelopes import SETTLED_STATES, request_envelope
from service.patterns.enrich import enrich_record
from service.patterns.registry import pattern
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m service ARGS`` awaited (the test's event loop keeps running)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _decode(value: dict[str, Any]) -> Any:
    data = value.get("data")
    return json.loads(base64.b64decode(data)) if data else None


async def store_records(url: str) -> dict[str, dict[str, Any]]:
    """Every promise on the server by id, values decoded (raw protocol, all pages)."""
    records: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            data: dict[str, Any] = {"limit": 1000}
            if cursor:
                data["cursor"] = cursor
            envelope = request_envelope("promise.search", data, origin="test")
            async with session.post(url + "/", json=envelope) as resp:
                reply = await resp.json()
            for rec in reply["data"]["promises"]:
                rec["param"] = _decode(rec.get("param") or {})
                rec["value"] = _decode(rec.get("value") or {})
                records[rec["id"]] = rec
            cursor = reply["data"].get("cursor")
            if not cursor:
                return records


def expected_description(records: dict[str, dict[str, Any]], promise_id: str) -> dict[str, Any]:
    """What ``get --json`` must print for ``promise_id``, derived from the raw records."""
    rec = records[promise_id]
    prefix = promise_id + ("." if ":" in promise_id else ":")
    under = [r for i, r in records.items() if i.startswith(prefix)]
    settled = sum(r["state"] in SETTLED_STATES for r in under)
    param = rec["param"] or {}
    resolved = rec["state"] == "resolved"
    args = json.dumps(param["args"]) if "args" in param else None
    if args is not None and len(args) > 120:
        args = args[:119] + "…"
    return {
        "id": promise_id,
        "root": promise_id.split(":")[0],
        "kind": "child" if ":" in promise_id else "invocation",
        "state": rec["state"],
        "pattern": param.get("func"),
        "args": args,
        "value": rec["value"] if resolved else None,
        "error": None if resolved else rec["value"]["message"],
        "created_at": rec["createdAt"],
        "settled_at": rec.get("settledAt"),
        "timeout_at": rec["timeoutAt"],
        "duration_ms": rec["settledAt"] - rec["createdAt"],
        "children": {"created": len(under), "settled": settled, "pending": len(under) - settled},
    }


async def test_get_and_ls__server_stack__exact_fields_as_the_store_has_them(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(1)
    url = stack.plan.url
    client = clients(url)
    env = {"RESONATE_URL": url}
    await invoke(client, pattern("factorial"), (6,))
    await asyncio.sleep(0.01)
    batch = await invoke(client, pattern("enrich_batch"), (list(range(40)),))
    await asyncio.sleep(0.01)
    with pytest.raises(Exception, match="missing-2"):
        await invoke(client, pattern("enrich_batch"), ([1, "missing-2"],))
    failed_id = pattern("enrich_batch").keyed_id(([1, "missing-2"],))

    got = {pid: await cli("get", pid, "--json", env=env) for pid in ("factorial-6", batch.id)}
    got_failed = await cli("get", failed_id, "--json", env=env)
    # Level 6's rpc child (its one durable call: the cache reads and writes are inline).
    got_child = await cli("get", "factorial-6:1", "--json", env=env)
    listed = await cli("ls", "--json", env=env)
    listed_batches = await cli("ls", "--pattern", "enrich_batch", "--json", env=env)
    records = await store_records(url)

    for pid, (code, out, err) in got.items():
        assert code == 0, err
        assert json.loads(out) == expected_description(records, pid)
    assert json.loads(got["factorial-6"][1])["value"] == math.factorial(6)
    batch_view = json.loads(got[batch.id][1])
    assert batch_view["value"] == [enrich_record(i) for i in range(40)]
    assert batch_view["children"] == {"created": 40, "settled": 40, "pending": 0}
    failed = json.loads(got_failed[1])
    assert failed == expected_description(records, failed_id)
    assert (failed["state"], failed["error"]) == (
        "rejected",
        "cannot enrich 'missing-2': no such record",
    )
    assert json.loads(got_child[1]) == expected_description(records, "factorial-6:1")

    roots = sorted(
        (r for i, r in records.items() if ":" not in i and r["tags"].get("resonate:origin") == i),
        key=lambda r: -r["createdAt"],
    )
    assert [e["id"] for e in json.loads(listed[1])] == [r["id"] for r in roots]
    assert [e["id"] for e in json.loads(listed[1])] == [failed_id, batch.id, "factorial-6"]
    assert [e["id"] for e in json.loads(listed_batches[1])] == [failed_id, batch.id]
    newest = json.loads(listed[1])[0]
    assert newest == {
        "id": failed_id,
        "state": "rejected",
        "pattern": "enrich_batch",
        "args": '[[1, "missing-2"]]',
        "created_at": records[failed_id]["createdAt"],
        "settled_at": records[failed_id]["settledAt"],
        "duration_ms": records[failed_id]["settledAt"] - records[failed_id]["createdAt"],
    }


async def test_get__unknown_id_on_a_server__exit_1_one_line(stacks: Any) -> None:
    stack = await stacks(0)
    code, out, err = await cli("get", "factorial-99", env={"RESONATE_URL": stack.plan.url})
    assert (code, out) == (1, "")
    assert err == (
        "resonate-patterns: error: no promise 'factorial-99' on the Resonate server at "
        f"{stack.plan.url}\n"
    )


async def test_get_ls__running_fanout__pending_with_partial_children_then_resolved(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(1, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "400"})
    env = {"RESONATE_URL": stack.plan.url}
    client = clients(stack.plan.url)
    items = list(range(24))
    target = pattern("process_bounded")
    pid = target.keyed_id((items, 2))
    call = asyncio.create_task(invoke(client, target, (items, 2)))
    await asyncio.sleep(0.6)

    running = await cli("get", pid, "--json", env=env)
    running_human = await cli("get", pid, env=env)
    pending = await cli("ls", "--pending", "--json", env=env)
    assert not call.done(), "the call finished before it could be watched"
    await call
    done = await cli("get", pid, "--json", env=env)
    pending_after = await cli("ls", "--pending", env=env)

    view = json.loads(running[1])
    assert (view["state"], view["value"], view["settled_at"], view["duration_ms"]) == (
        "pending",
        None,
        None,
        None,
    )
    assert 0 < view["children"]["settled"] <= view["children"]["created"]
    assert view["children"]["pending"] == view["children"]["created"] - view["children"]["settled"]
    assert "  running   for " in running_human[1]
    assert [e["id"] for e in json.loads(pending[1])] == [pid]
    final = json.loads(done[1])
    assert final["state"] == "resolved"
    assert final["value"] == [i * i for i in items]
    assert final["children"]["pending"] == 0
    assert final["children"]["created"] > view["children"]["created"]
    assert pending_after[1] == "no invocations pending\n"
