"""The Grafana dashboard, built from the metric definitions.

Every query names its metric through the constants in
:mod:`service.telemetry.names`, so a renamed metric cannot leave a panel
querying nothing. ``python -m service.telemetry.dashboard`` writes the JSON
that the Helm chart ships (``charts/resonate-patterns/dashboards/``); a test
checks the committed file matches this definition and evaluates every panel
query against a real Prometheus.

The dashboard has a datasource variable and ``namespace`` / ``group`` /
``function`` template variables; every query filters on ``namespace`` (the
release's namespace: several releases, or one autoscaler's namespace, share a
Prometheus), and ``$__rate_interval`` is Grafana's rate window.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.telemetry import names as m

DASHBOARD_UID = "resonate-patterns"
DASHBOARD_FILE = "resonate-patterns.json"

#: The namespace matcher every query starts with.
_NS = 'namespace=~"$namespace"'
_SEL = f'{_NS},group=~"$group",function=~"$function"'
_GROUP = f'{_NS},group=~"$group"'
_RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    #: (legend, PromQL expression) per target.
    targets: list[tuple[str, str]]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


def _quantiles(
    metric: str, selector: str, qs: tuple[float, ...], by: str = ""
) -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"{legend}p{round(q * 100)}",
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{{{selector}}}{_RATE})))",
        )
        for q in qs
    ]


#: Durable calls answered from the store, and all durable calls (hits + misses).
HITS = f"sum(rate({m.CACHE_HITS_NAME}{{{_SEL}}}{_RATE}))"
CALLS = f"({HITS} + sum(rate({m.CACHE_MISSES_NAME}{{{_SEL}}}{_RATE})))"
#: The hit-ratio panel's query (the real-Prometheus test evaluates exactly this).
HIT_RATIO = f"{HITS} / {CALLS}"

WORKER_PANELS: list[Panel] = [
    Panel(
        "Cache hit ratio",
        "Share of durable calls (invocations, children, factorial cache lookups) answered by "
        "a promise already settled before the call: no body ran. Each call counts once; "
        "replays never count (docs/metrics.md).",
        [("hit ratio", HIT_RATIO)],
        kind="stat",
        unit="percentunit",
        width=6,
    ),
    Panel(
        "Workers ready",
        "Worker processes connected and accepting work, per group.",
        [("{{group}}", f"sum by (group) ({m.WORKER_READY_NAME}{{{_GROUP}}})")],
        kind="stat",
        width=6,
    ),
    Panel(
        "Cache hits and misses / s",
        "By kind: invocations (counted where invoked: the worker serving the API, or a client), "
        "child calls (by the worker that runs the child) and factorial cache lookups.",
        [
            ("hits {{kind}}", f"sum by (kind) (rate({m.CACHE_HITS_NAME}{{{_SEL}}}{_RATE}))"),
            ("misses {{kind}}", f"sum by (kind) (rate({m.CACHE_MISSES_NAME}{{{_SEL}}}{_RATE}))"),
        ],
        unit="ops",
    ),
    Panel(
        "Recursion depth p50 / p95 / max",
        "Depth below the root at which executions run; max is the deepest seen by any worker.",
        [
            *_quantiles(m.EXECUTION_DEPTH_NAME, _SEL, (0.5, 0.95)),
            ("max", f"max({m.EXECUTION_DEPTH_MAX_NAME}{{{_SEL}}})"),
        ],
    ),
    Panel(
        "Deepest level per root (p95)",
        "Deepest execution a worker saw under each root, observed when the root resolves.",
        _quantiles(m.ROOT_MAX_DEPTH_NAME, _SEL, (0.95,), by="function"),
    ),
    Panel(
        "Executions / s by function and outcome",
        "resolved, rejected, suspended (waiting on children) "
        "and retried (released for redelivery).",
        [
            (
                "{{function}} {{outcome}}",
                f"sum by (function, outcome) (rate({m.EXECUTIONS_NAME}{{{_SEL}}}{_RATE}))",
            )
        ],
        unit="ops",
    ),
    Panel(
        "Execution latency p50 / p95 / p99",
        "Wall time of one run of a function body.",
        _quantiles(m.EXECUTION_DURATION_NAME, _SEL, (0.5, 0.95, 0.99)),
        unit="s",
    ),
    Panel(
        "In-flight executions per worker",
        "Function bodies running right now, per worker instance.",
        [("{{instance}}", f"sum by (instance) ({m.IN_FLIGHT_NAME}{{{_SEL}}})")],
    ),
    Panel(
        "Fan-out width p50 / p95",
        "Children spawned by one fan-out execution.",
        _quantiles(m.FANOUT_WIDTH_NAME, _SEL, (0.5, 0.95)),
    ),
    Panel(
        "Leases lost, tasks resumed or re-delivered, SDK failures / s",
        "Leases lost: executions whose fenced write was refused (another worker owns the "
        "task now). Resumed or re-delivered: task executions at a version above 1. SDK "
        "background failures and dropped records: what the SDK reports without raising "
        "(each one is also logged).",
        [
            ("leases lost", f"sum(rate({m.LEASES_LOST_NAME}{{{_GROUP}}}{_RATE}))"),
            (
                "resumed or re-delivered",
                f"sum(rate({m.TASKS_REDELIVERED_NAME}{{{_GROUP}}}{_RATE}))",
            ),
            (
                "SDK background failures",
                f"sum(rate({m.SDK_BACKGROUND_FAILURES_NAME}{{{_GROUP}}}{_RATE}))",
            ),
            (
                "SDK dropped {{reason}}",
                f"sum by (reason) (rate({m.SDK_DROPPED_NAME}{{{_GROUP}}}{_RATE}))",
            ),
        ],
        unit="ops",
    ),
    Panel(
        "Connection to the Resonate server",
        "Workers whose event stream is open, stream re-openings by why the previous one "
        "ended (idle: silent past the read timeout, normal against a server without "
        "keep-alives; closed; error), and lease heartbeats that extended nothing.",
        [
            ("streams open", f"sum({m.STREAM_CONNECTED_NAME}{{{_GROUP}}})"),
            (
                "re-opened {{cause}} / s",
                f"sum by (cause) (rate({m.STREAM_RECONNECTS_NAME}{{{_GROUP}}}{_RATE}))",
            ),
            (
                "heartbeats failed {{reason}} / s",
                f"sum by (reason) (rate({m.HEARTBEAT_FAILURES_NAME}{{{_GROUP}}}{_RATE}))",
            ),
        ],
    ),
    Panel(
        "Worker CPU and memory",
        "Process metrics of each worker.",
        [
            (
                "cpu {{instance}}",
                f"rate(process_cpu_seconds_total{_RATE}) * on (instance, job) "
                f"group_left (group) {m.WORKER_INFO_NAME}{{{_GROUP}}}",
            ),
            (
                "rss GiB {{instance}}",
                "process_resident_memory_bytes / 2^30 * on (instance, job) "
                f"group_left (group) {m.WORKER_INFO_NAME}{{{_GROUP}}}",
            ),
        ],
    ),
]

#: The operator's metrics carry the WorkerAutoscaler's namespace (the chart's scrape keeps it).
_AUTOSCALER = f'{_NS},group=~"$group"'

#: The autoscaling operator's panels (Kubernetes operator or `up --autoscale`).
OPERATOR_PANELS: list[Panel] = [
    Panel(
        "Backlog per group",
        "Tasks waiting for a worker (pending) and held by one (acquired), as the autoscaler reads "
        "them from the Resonate server.",
        [
            (
                "{{group}} {{state}}",
                f"sum by (group, state) ({m.AUTOSCALER_BACKLOG_NAME}"
                f'{{{_AUTOSCALER},state=~"pending|acquired"}})',
            )
        ],
    ),
    Panel(
        "Desired vs current replicas",
        "What the policy wants and what the worker Deployment has, per autoscaler.",
        [
            (
                "desired {{autoscaler}}",
                f"sum by (autoscaler) ({m.AUTOSCALER_DESIRED_NAME}{{{_AUTOSCALER}}})",
            ),
            (
                "current {{autoscaler}}",
                f"sum by (autoscaler) ({m.AUTOSCALER_CURRENT_NAME}{{{_AUTOSCALER}}})",
            ),
        ],
    ),
    Panel(
        "Scale events and backlog read failures",
        "Scale operations by direction, and failed reads of the Resonate server (fallback risk).",
        [
            (
                "scale {{direction}}",
                f"sum by (direction) (increase({m.AUTOSCALER_SCALES_NAME}{{{_AUTOSCALER}}}"
                f"{_RATE}))",
            ),
            (
                "read failures",
                f"sum(increase({m.AUTOSCALER_READ_FAILURES_NAME}{{{_AUTOSCALER}}}{_RATE}))",
            ),
        ],
    ),
]


def _grid(panels: list[Panel]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    x = y = row_height = 0
    for pid, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + row_height
            row_height = 0
        out.append(
            {
                "id": pid,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": panel.options,
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    }
                    for i, (legend, expr) in enumerate(panel.targets)
                ],
            }
        )
        x += panel.width
        row_height = max(row_height, panel.height)
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    """The dashboard as Grafana JSON."""
    return {
        "uid": DASHBOARD_UID,
        "title": "Resonate patterns",
        "description": "Cache hits, recursion depth, executions and workers of resonate-patterns.",
        "tags": ["resonate", "resonate-patterns"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable(
                    "namespace", "Namespace", f"label_values({m.WORKER_INFO_NAME}, namespace)"
                ),
                _variable("group", "Group", f"label_values({m.WORKER_INFO_NAME}{{{_NS}}}, group)"),
                _variable(
                    "function",
                    "Function",
                    f"label_values({m.EXECUTIONS_NAME}{{{_GROUP}}}, function)",
                ),
            ]
        },
        "panels": _grid(WORKER_PANELS + OPERATOR_PANELS),
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else Path("charts/resonate-patterns/dashboards")
    target.mkdir(parents=True, exist_ok=True)
    (target / DASHBOARD_FILE).write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
