"""The local stack: a port is named by the user or reported by its process; exits are awaited."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

from service.local.children import Child, reported_port
from service.local.supervisor import Stack, child_env, plan_stack
from tests.conftest import make_settings

if TYPE_CHECKING:
    from pathlib import Path


def test_plan_stack__port_zero__every_process_picks_its_own(tmp_path: Path) -> None:
    settings = make_settings(RESONATE_PATTERNS_DATA_DIR=str(tmp_path))
    plan = plan_stack(settings, workers=3, port=0, data=None, group=None)
    assert plan.server_port == 0
    assert plan.worker_ports == [0, 0, 0]


def test_plan_stack__fixed_port__workers_count_up_from_the_metrics_port(tmp_path: Path) -> None:
    settings = make_settings(
        RESONATE_PATTERNS_DATA_DIR=str(tmp_path), RESONATE_PATTERNS_HTTP_PORT="9400"
    )
    plan = plan_stack(settings, workers=3, port=8001, data=None, group=None)
    assert plan.server_port == 8001
    assert plan.worker_ports == [9400, 9401, 9402]


def test_plan_stack__fixed_server_port_and_metrics_port_zero__workers_pick(tmp_path: Path) -> None:
    settings = make_settings(
        RESONATE_PATTERNS_DATA_DIR=str(tmp_path), RESONATE_PATTERNS_HTTP_PORT="0"
    )
    plan = plan_stack(settings, workers=2, port=8001, data=None, group=None)
    assert (plan.server_port, plan.worker_ports) == (8001, [0, 0])


def test_reported_port__only_the_named_event_with_a_valid_port() -> None:
    line = json.dumps({"event": "worker_started", "http_port": 41234, "level": "info"}).encode()
    assert reported_port(line, "worker_started", "http_port") == 41234
    assert reported_port(line, "server_started", "port") is None
    for bad in (
        b"worker_started on 41234",
        b'{"event": "worker_started", "http_port": 0}',
        b'{"event": "worker_started", "http_port": "41234"}',
        b'{"event": "worker_started"',
        b'["worker_started"]',
    ):
        assert reported_port(bad, "worker_started", "http_port") is None


def test_child_env__json_logs_at_a_level_that_writes_the_start_line() -> None:
    quiet = child_env({"RESONATE_PATTERNS_LOG_LEVEL": "warning"}, RESONATE_GROUP="g")
    assert quiet["RESONATE_PATTERNS_LOG_LEVEL"] == "info"
    assert quiet["RESONATE_PATTERNS_LOG_FORMAT"] == "json"
    assert quiet["RESONATE_GROUP"] == "g"
    assert child_env({"RESONATE_PATTERNS_LOG_LEVEL": "debug"})["RESONATE_PATTERNS_LOG_LEVEL"] == (
        "debug"
    )


def _script_child(tmp_path: Path, code: str) -> Child:
    return Child(
        "probe",
        [sys.executable, "-c", code],
        {},
        tmp_path / "probe.log",
        0,
        started_event="probe_started",
        port_key="port",
    )


async def test_child__learns_the_port_from_this_runs_start_line(tmp_path: Path) -> None:
    (tmp_path / "probe.log").write_text('{"event": "probe_started", "port": 1111}\n')
    child = _script_child(
        tmp_path,
        "import json, sys, time; print('starting'); "
        "print(json.dumps({'event': 'probe_started', 'port': 2222}), flush=True); time.sleep(30)",
    )
    await child.spawn()
    try:
        assert await child.learn_port(within=10) == 2222, "the earlier run's line is not read"
        assert child.port == 2222
    finally:
        await child.terminate(grace=5)


async def test_child__exits_before_reporting__none_at_once(tmp_path: Path) -> None:
    child = _script_child(tmp_path, "raise SystemExit(3)")
    await child.spawn()
    assert await asyncio.wait_for(child.learn_port(within=30), 10) is None
    assert await child.terminate(grace=1) == 3


async def test_supervise__retired_child_exits__not_restarted__returns_on_stop(
    tmp_path: Path,
) -> None:
    settings = make_settings(RESONATE_PATTERNS_DATA_DIR=str(tmp_path))
    stack = Stack(plan_stack(settings, workers=0, port=0, data=None, group=None), out=str)
    lived = _script_child(tmp_path, "import time; time.sleep(0.3)")
    lived.retired = True  # seen exiting, never restarted
    stack.server = lived
    await lived.spawn()
    stop = asyncio.Event()
    supervisor = asyncio.create_task(stack.supervise(stop))
    await asyncio.wait_for(lived.proc.wait(), 10)  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    assert not supervisor.done()
    assert lived.restarts == 0
    stop.set()
    await asyncio.wait_for(supervisor, 1)
