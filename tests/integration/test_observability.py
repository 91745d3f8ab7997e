"""Dashboards and alerts against a real Prometheus, promtool, and restart metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest

from service.client import invoke
from service.local.autoscale import autoscale_local
from service.operator.policy import PolicySpec
from service.patterns.registry import pattern
from service.telemetry import dashboard
from service.telemetry.metrics import OperatorMetrics
from tests.conftest import ROOT, require_tool
from tests.integration.conftest import scrape, total, worker_url
from tests.integration.test_cache_metrics import cache_counts, children, stored
from tests.ports import free_port

pytestmark = pytest.mark.slow

RULES = ROOT / "charts/resonate-patterns/rules/alerts.yaml"
DASHBOARD = ROOT / "charts/resonate-patterns/dashboards" / dashboard.DASHBOARD_FILE
METRIC_RE = re.compile(r"\b(resonate_patterns_[a-z_]+|process_[a-z_]+|up)\b")
SCRAPE_SECONDS = 1


def panel_queries() -> list[tuple[str, str]]:
    data = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in data["panels"] for t in p["targets"]]


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def test_dashboard__committed_json_matches_definition() -> None:
    assert DASHBOARD.read_text() == dashboard.render(), (
        "regenerate: python -m service.telemetry.dashboard"
    )


def test_dashboard__variables_and_required_panels() -> None:
    data = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in data["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource"
    assert {"namespace", "group", "function"} <= set(names)
    titles = " | ".join(p["title"] for p in data["panels"])
    for needed in (
        "hit ratio",
        "hits and misses",
        "depth p50 / p95 / max",
        "by function and outcome",
        "latency p50 / p95 / p99",
        "In-flight executions per worker",
        "Fan-out width",
        "Workers ready",
    ):
        assert needed.lower() in titles.lower(), needed
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


def test_promtool__check_rules() -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


# The promtool unit tests (tests/promtool) run on the rules as the chart renders them for
# two releases: tests/chart/test_monitoring.py.


def _instantiate(expr: str, window: str) -> str:
    return (
        expr.replace("$__rate_interval", window)
        .replace('"$namespace"', '".*"')
        .replace('"$group"', '".*"')
        .replace('"$function"', '".*"')
    )


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Any]:
    binary = require_tool("prometheus")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    async def start(targets: dict[str, list[str]]) -> str:
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            return url
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(
            "prometheus did not start: " + (tmp_path / "prometheus.log").read_text()
        )

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def query(url: str, expr: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/api/v1/query", params={"query": expr}) as resp,
    ):
        return await resp.json()


async def test_real_prometheus__every_panel_query_returns_data(
    stacks: Any, clients: Any, prometheus: Any
) -> None:
    stack = await stacks(2)
    workers = [f"{stack.plan.host}:{w.port}" for w in stack.workers]
    # The autoscaler (the operator's code over the local stack) exports the
    # operator's metrics; min = max = 2 keeps the scrape targets fixed.
    scaler_port = free_port()
    stop_scaler = asyncio.Event()
    scaler = asyncio.create_task(
        autoscale_local(
            stack,
            PolicySpec(min_replicas=2, max_replicas=2),
            stop_scaler,
            lambda _: None,
            interval=0.5,
            metrics_port=scaler_port,
        )
    )
    url = await prometheus(
        {
            "rp-resonate-patterns-worker-workers": workers,
            "rp-resonate-patterns-server": [f"{stack.plan.host}:{stack.plan.server_port}"],
            "rp-resonate-patterns-operator": [f"{stack.plan.host}:{scaler_port}"],
        }
    )
    client = clients(stack.plan.url)
    # Wait until both workers are scraped.
    for _ in range(100):
        up = await query(url, 'up{job="rp-resonate-patterns-worker-workers"} == 1')
        if len(up["data"]["result"]) == 2:
            break
        await asyncio.sleep(0.2)
    # A workload that exercises every panel: computed and cached factorials,
    # fan-outs (local and rpc), a bounded fan-out and a crawl.
    deadline = asyncio.get_running_loop().time() + 8
    n = 30
    while asyncio.get_running_loop().time() < deadline:
        await invoke(client, pattern("factorial"), (n,))
        await invoke(client, pattern("factorial"), (n - 5,))
        await invoke(client, pattern("parallel_enrich"), (list(range(n * 100, n * 100 + 40)),))
        await invoke(client, pattern("enrich_tolerant"), ([n, -n, f"missing-{n}"],))
        await invoke(client, pattern("process_bounded"), (list(range(n)), 4))
        n += 1
        await asyncio.sleep(0.3)
    await asyncio.sleep(2 * SCRAPE_SECONDS + 0.5)
    empty: list[str] = []
    for title, expr in panel_queries():
        out = await query(url, _instantiate(expr, "30s"))
        assert out["status"] == "success", f"{title}: {expr} -> {out}"
        if not out["data"]["result"]:
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # Every rule expression parses in this Prometheus too.
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1/rules") as resp:
        rules = await resp.json()
    loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert loaded == {name for name, _ in rule_exprs()}
    assert all(r["health"] == "ok" for g in rules["data"]["groups"] for r in g["rules"])
    stop_scaler.set()
    await scaler


async def test_metric_names__dashboard_and_rules_exist_in_worker_or_operator_metrics(
    stacks: Any,
) -> None:
    stack = await stacks(1)
    async with aiohttp.ClientSession() as session, session.get(worker_url(stack, 0)) as resp:
        text = await resp.text()
    text += generate_latest(OperatorMetrics().registry).decode()
    # Declared families (# TYPE lines) count even before their first sample.
    exported: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            exported.add(line.partition("{")[0].partition(" ")[0])
    used: set[str] = set()
    for _, expr in panel_queries() + rule_exprs():
        used |= set(METRIC_RE.findall(expr))
    used -= {"up"}  # Prometheus's own
    missing = sorted(n for n in used if n not in exported)
    assert not missing, f"queried but exported neither by workers nor by the operator: {missing}"
    assert {n for n in used if n.startswith("resonate_patterns_autoscaler_")}, "operator panels"


async def test_worker_killed__replaying_parent_counts_only_children_created_after_restart(
    stacks: Any, clients: Any
) -> None:
    stack = await stacks(1, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "150"})
    client = clients(stack.plan.url)
    supervise = asyncio.Event()
    supervisor = asyncio.create_task(stack.supervise(supervise))
    try:
        # One child at a time (k=1), 150 ms each: about 3 s in all.
        run = asyncio.create_task(invoke(client, pattern("process_bounded"), (list(range(20)), 1)))
        await asyncio.sleep(1.2)
        assert not run.done()
        killed_at_ms = time.time_ns() // 1_000_000
        os.kill(stack.workers[0].pid, signal.SIGKILL)
        result = await asyncio.wait_for(run, 60)
    finally:
        supervise.set()
        await supervisor
    assert stack.workers[0].restarts == 1
    samples = await scrape(worker_url(stack, 0))
    # The restarted worker replays process_bounded: the children created before
    # the kill come from the store (the one in flight runs its body again) and
    # count nothing; only the children it creates itself are new calls. What
    # the killed worker counted died with it.
    made = children(await stored(stack.plan.url), result.id)
    assert len(made) == 20
    new = [r for r in made if r["createdAt"] > killed_at_ms]
    assert 0 < len(new) < 20
    assert cache_counts([samples]) == {("miss", "child", "process_one"): len(new)}
    ran = total(samples, "resonate_patterns_executions_total", function="process_one")
    assert ran - len(new) in (0, 1), "at most the child in flight at the kill ran again"
    assert total(samples, "resonate_patterns_tasks_redelivered_total") >= 1


async def test_real_prometheus__hit_ratio_panel__exact_ratio_of_scripted_workload(
    stacks: Any, prometheus: Any
) -> None:
    # One worker serving the HTTP API: it counts the invocations too, so every
    # hit and miss of the workload is in the one target Prometheus scrapes, and
    # rate() scales all of its series by the same extrapolation factor.
    stack = await stacks(1)
    worker = f"{stack.plan.host}:{stack.workers[0].port}"
    url = await prometheus({"rp-resonate-patterns-worker-workers": [worker]})
    # Scraped at least twice before the workload: every series starts at 0.
    for _ in range(100):
        out = await query(url, f"count_over_time(up{{instance={worker!r}}}[1m])")
        if out["data"]["result"] and float(out["data"]["result"][0]["value"][1]) >= 2:
            break
        await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    api = f"http://{worker}/v1/patterns"
    async with aiohttp.ClientSession() as session:
        for name, args in WORKLOAD:
            async with session.post(f"{api}/{name}", json={"args": args}) as resp:
                assert resp.status == 200, await resp.text()
    samples = await scrape(worker_url(stack, 0))
    # The worked example of docs/metrics.md plus a fan-out of 10, twice.
    assert cache_counts([samples]) == {
        ("miss", "invocation", "factorial"): 2,
        ("hit", "invocation", "factorial"): 1,
        ("miss", "lookup", "factorial"): 6,
        ("hit", "lookup", "factorial"): 1,
        ("miss", "child", "factorial"): 6,
        ("miss", "invocation", "enrich_batch"): 1,
        ("hit", "invocation", "enrich_batch"): 1,
        ("miss", "child", "enrich_one"): 10,
    }
    expected = 3 / (3 + 25)
    await asyncio.sleep(2 * SCRAPE_SECONDS + 0.5)
    window = f"{int(asyncio.get_running_loop().time() - started) + 30}s"
    out = await query(url, _instantiate(dashboard.HIT_RATIO, window))
    assert out["status"] == "success", out
    [series] = out["data"]["result"]
    assert float(series["value"][1]) == pytest.approx(expected, rel=1e-9)


#: The scripted workload of the hit-ratio test: (pattern, args), through the API.
WORKLOAD: list[tuple[str, list[Any]]] = [
    ("factorial", [5]),
    ("factorial", [3]),
    ("factorial", [7]),
    ("enrich_batch", [list(range(10))]),
    ("enrich_batch", [list(range(10))]),
]


async def test_worker_logs__json_lines_with_bound_context(stacks: Any, clients: Any) -> None:
    from tests.integration.conftest import log_events

    stack = await stacks(1)
    client = clients(stack.plan.url)
    await invoke(client, pattern("factorial"), (3,))
    await asyncio.sleep(0.2)
    raw = stack.workers[0].log_path.read_text().splitlines()
    assert raw, "worker wrote no log lines"
    assert all(line.startswith("{") for line in raw), "every line is JSON"
    events = log_events(stack.workers[0].log_path)
    started = [e for e in events if e["event"] == "execution_started"]
    finished = [e for e in events if e["event"] == "execution_finished"]
    assert started
    assert len(started) == len(finished)
    for e in started + finished:
        assert {
            "worker_pid",
            "group",
            "promise_id",
            "root_id",
            "function",
            "depth",
            "attempt",
            "level",
            "timestamp",
        } <= set(e)
        assert e["group"] == "workers"
    for e in finished:
        assert e["outcome"] in {"resolved", "rejected", "suspended", "retried"}
        assert e["duration_ms"] >= 0
