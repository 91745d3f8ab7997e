"""Every Prometheus metric of the worker, defined once.

Metric names are the module-level ``*_NAME`` constants (the dashboard, the
alert rules and the docs use exactly these; a test cross-checks them) and
each process builds one :class:`WorkerMetrics` holding the live objects in its
own registry. Domain code never touches a metric object directly; it calls
the small helpers on :class:`WorkerMetrics`.

Labels come from fixed sets only: ``function`` (a registered pattern name),
``group`` (this worker's group), ``outcome``, ``kind`` and ``direction``.
Never promise ids, inputs or URLs: those would make the series unbounded.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

PREFIX = "resonate_patterns_"

#: Durable calls answered by a promise already settled before the call asked (no body ran).
CACHE_HITS_NAME = PREFIX + "promise_cache_hits_total"
#: Durable calls that needed a body to run; each call counted once, replays never.
CACHE_MISSES_NAME = PREFIX + "promise_cache_misses_total"
#: Depth below its root at which each function execution runs.
EXECUTION_DEPTH_NAME = PREFIX + "execution_depth"
#: Deepest execution this process has run, per function (a high-water mark).
EXECUTION_DEPTH_MAX_NAME = PREFIX + "execution_depth_max"
#: Deepest execution seen under each root, observed when the root finishes.
ROOT_MAX_DEPTH_NAME = PREFIX + "root_max_depth"
#: Function executions by outcome.
EXECUTIONS_NAME = PREFIX + "executions_total"
#: Wall time of one function execution (one run of the body).
EXECUTION_DURATION_NAME = PREFIX + "execution_duration_seconds"
#: Function bodies running right now in this process.
IN_FLIGHT_NAME = PREFIX + "executions_in_flight"
#: Children spawned by one fan-out execution.
FANOUT_WIDTH_NAME = PREFIX + "fanout_width"
#: Executions whose lease was gone: a fenced write inside the body was refused (409).
LEASES_LOST_NAME = PREFIX + "leases_lost_total"
#: Task executions started at a task version above 1 (resumed or re-delivered).
TASKS_REDELIVERED_NAME = PREFIX + "tasks_redelivered_total"
#: Background jobs of the Resonate SDK that failed with nobody awaiting them.
SDK_BACKGROUND_FAILURES_NAME = PREFIX + "sdk_background_failures_total"
#: Records and messages the Resonate SDK could not read and discarded, by reason.
SDK_DROPPED_NAME = PREFIX + "sdk_dropped_total"
#: Worker identity (version, group, pid); value is always 1.
WORKER_INFO_NAME = PREFIX + "worker_info"
#: 1 once the worker is connected and registered, 0 while starting/draining.
WORKER_READY_NAME = PREFIX + "worker_ready"
#: 1 while the process's event stream from the server is open, 0 while it is not.
STREAM_CONNECTED_NAME = PREFIX + "event_stream_connected"
#: Times the event stream was opened again after it closed or failed.
STREAM_RECONNECTS_NAME = PREFIX + "event_stream_reconnects_total"
#: Lease heartbeats the server refused or that never reached it, by reason.
HEARTBEAT_FAILURES_NAME = PREFIX + "heartbeat_failures_total"

# -- the autoscaling operator's metrics (see service.operator) ----------------------
#: Tasks of a group waiting to run or running, as read from the Resonate server.
AUTOSCALER_BACKLOG_NAME = PREFIX + "autoscaler_backlog_tasks"
#: Replicas the policy wants for the worker Deployment.
AUTOSCALER_DESIRED_NAME = PREFIX + "autoscaler_desired_replicas"
#: Replicas the worker Deployment has now.
AUTOSCALER_CURRENT_NAME = PREFIX + "autoscaler_current_replicas"
#: Scale operations performed, by direction.
AUTOSCALER_SCALES_NAME = PREFIX + "autoscaler_scale_events_total"
#: Failed attempts to read the backlog from the Resonate server.
AUTOSCALER_READ_FAILURES_NAME = PREFIX + "autoscaler_backlog_read_failures_total"
#: Backlog reads the server refused in a way retrying cannot fix, by reason.
AUTOSCALER_CAPABILITY_ERRORS_NAME = PREFIX + "autoscaler_backlog_capability_errors_total"
#: Label values of ``reason`` on the capability-error counter: the search kind is
#: unknown to the server (or 404/501), the token was refused (401), or it may not search (403).
AUTOSCALER_CAPABILITY_REASONS = ("unsupported", "unauthorized", "forbidden")
#: The backlog API (KEDA's metrics-api source): scans of the server and what they found.
BACKLOG_SCANS_NAME = PREFIX + "backlog_scans_total"
BACKLOG_SCAN_DURATION_NAME = PREFIX + "backlog_scan_duration_seconds"
BACKLOG_GROUP_TASKS_NAME = PREFIX + "backlog_group_tasks"
#: Outcomes of one backlog scan: read, failed (retry may help), refused (it will not).
BACKLOG_SCAN_OUTCOMES = ("ok", "failed", "refused")

Outcome = Literal["resolved", "rejected", "suspended", "retried"]
#: Why a heartbeat failed: an error status from the server (``rejected``;
#: e.g. 400 for tasks of several origins, 401/403 for auth) or no reply at all.
HeartbeatFailure = Literal["rejected", "unreachable"]
CacheKind = Literal["invocation", "child", "lookup"]
#: Label values of ``reason`` on the SDK drop counter: the SDK's drop sites
#: (a preloaded promise record, a record in a search page, an incoming push
#: message) and ``other`` for a site a later SDK adds.
SDK_DROP_REASONS = ("preload-record", "search-record", "incoming-message", "other")

#: Depth buckets: one per level for shallow trees, coarser for deep recursion
#: (factorial(n) reaches depth n).
DEPTH_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)
WIDTH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class MetricDoc:
    """One row of the metrics reference table."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


class LabelledChildren:
    """Each metric's child per label values, resolved once.

    Resolving label values costs more than the update itself, and every
    execution (worker) or request (local server) updates several series, so
    the children are kept. Callers pass bounded label values only.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class WorkerMetrics:
    """The live metric objects of one worker process, in their own registry."""

    def __init__(self, group: str, *, registry: CollectorRegistry | None = None) -> None:
        self.group = group
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter(
            CACHE_HITS_NAME,
            "Durable calls (kind: invocation, child, lookup) answered by a promise that was "
            "already settled before the call asked for it: served from the store, no body ran.",
            ["function", "group", "kind"],
            registry=r,
        )
        self.cache_misses = Counter(
            CACHE_MISSES_NAME,
            "Durable calls (kind: invocation, child, lookup) that needed a body to run; "
            "each call is counted once, a replay of a call already made never.",
            ["function", "group", "kind"],
            registry=r,
        )
        self.execution_depth = Histogram(
            EXECUTION_DEPTH_NAME,
            "Depth below its root promise at which a function execution ran.",
            ["function", "group"],
            buckets=DEPTH_BUCKETS,
            registry=r,
        )
        self.execution_depth_max = Gauge(
            EXECUTION_DEPTH_MAX_NAME,
            "Deepest execution this process has run since it started.",
            ["function", "group"],
            registry=r,
        )
        self.root_max_depth = Histogram(
            ROOT_MAX_DEPTH_NAME,
            "Deepest execution this worker saw under a root, observed when the root resolves.",
            ["function", "group"],
            buckets=DEPTH_BUCKETS,
            registry=r,
        )
        self.executions = Counter(
            EXECUTIONS_NAME,
            "Function executions by outcome (resolved, rejected, suspended, retried).",
            ["function", "group", "outcome"],
            registry=r,
        )
        self.execution_duration = Histogram(
            EXECUTION_DURATION_NAME,
            "Wall time of one run of a function body.",
            ["function", "group"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            IN_FLIGHT_NAME,
            "Function bodies executing in this process right now.",
            ["function", "group"],
            registry=r,
        )
        self.fanout_width = Histogram(
            FANOUT_WIDTH_NAME,
            "Children spawned by one fan-out execution.",
            ["function", "group"],
            buckets=WIDTH_BUCKETS,
            registry=r,
        )
        self.leases_lost = Counter(
            LEASES_LOST_NAME,
            "Task executions that lost their lease: a fenced write made by the body (a child "
            "create or settle) was refused with 409. A refused closing fulfill or suspend is "
            "an SDK background failure instead.",
            ["group"],
            registry=r,
        )
        self.tasks_redelivered = Counter(
            TASKS_REDELIVERED_NAME,
            "Task executions started at a task version above 1: the task was acquired before "
            "(resumed after its awaited promises settled, or re-delivered after a release, an "
            "expired lease or a crash).",
            ["group"],
            registry=r,
        )
        self.sdk_background_failures = Counter(
            SDK_BACKGROUND_FAILURES_NAME,
            "Background jobs of the Resonate SDK (executions, creates, listener "
            "registrations) that failed with nobody awaiting them; each one is logged.",
            ["group"],
            registry=r,
        )
        self.sdk_dropped = Counter(
            SDK_DROPPED_NAME,
            "Records and messages the Resonate SDK could not decode and discarded, by reason "
            "(preload-record, search-record, incoming-message, other); each one is logged.",
            ["group", "reason"],
            registry=r,
        )
        self.worker_info = Info(
            WORKER_INFO_NAME.removesuffix("_info"),
            "Worker identity; the value is always 1.",
            registry=r,
        )
        self.worker_ready = Gauge(
            WORKER_READY_NAME,
            "1 when the worker is connected and accepting work, 0 while starting or draining.",
            ["group"],
            registry=r,
        )
        self.stream_connected = Gauge(
            STREAM_CONNECTED_NAME,
            "1 while the event stream from the Resonate server is open, 0 while it is not.",
            ["group"],
            registry=r,
        )
        self.stream_reconnects = Counter(
            STREAM_RECONNECTS_NAME,
            "Times the event stream was opened again, by why the previous one ended: idle "
            "(silent past the read timeout), closed (by the server) or error.",
            ["group", "cause"],
            registry=r,
        )
        self.heartbeat_failures = Counter(
            HEARTBEAT_FAILURES_NAME,
            "Lease heartbeats (one per origin) refused by the server or not answered.",
            ["group", "reason"],
            registry=r,
        )
        self._deepest: dict[str, int] = {}
        self._child = LabelledChildren()
        # Pre-create label sets that must exist from the first scrape, so
        # rate() and absent() queries work before the first event.
        self.leases_lost.labels(group)
        self.tasks_redelivered.labels(group)
        self.sdk_background_failures.labels(group)
        for reason in SDK_DROP_REASONS:
            self.sdk_dropped.labels(group, reason)
        self.worker_ready.labels(group).set(0)
        self.stream_connected.labels(group).set(0)
        for cause in ("idle", "closed", "error"):
            self.stream_reconnects.labels(group, cause)
        for reason in ("rejected", "unreachable"):
            self.heartbeat_failures.labels(group, reason)

    def add_process_collectors(self) -> None:
        """Register process (CPU, memory, fds) and Python platform metrics."""
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def set_identity(self, version: str, pid: str) -> None:
        """Publish this worker's version, group and pid as the info metric."""
        self.worker_info.info(
            {"version": version, "group": self.group, "pid": pid, "os_pid": str(os.getpid())}
        )

    # -- helpers called by domain code ---------------------------------------------

    def cache_result(self, function: str, kind: CacheKind, *, hit: bool) -> None:
        """Count one durable call as a hit or a miss (see docs/metrics.md for which)."""
        metric = self.cache_hits if hit else self.cache_misses
        self._child(metric, function, self.group, kind).inc()

    def declare_cache(self, function: str, kind: CacheKind) -> None:
        """Create the hit and miss series of ``function``/``kind`` at 0.

        A hit ratio over a window with no hit yet is then 0 rather than no
        data, and ``rate()`` sees the first increment.
        """
        for metric in (self.cache_hits, self.cache_misses):
            self._child(metric, function, self.group, kind)

    def lease_lost(self) -> None:
        """Count one execution whose fenced write was refused (its lease had moved on)."""
        self._child(self.leases_lost, self.group).inc()

    def task_redelivered(self) -> None:
        """Count one task execution started at a version above 1."""
        self._child(self.tasks_redelivered, self.group).inc()

    def sdk_background_failed(self) -> None:
        """Count one failed SDK background job."""
        self._child(self.sdk_background_failures, self.group).inc()

    def sdk_dropped_one(self, reason: str) -> None:
        """Count one record or message the SDK discarded (unknown reasons as ``other``)."""
        label = reason if reason in SDK_DROP_REASONS else "other"
        self._child(self.sdk_dropped, self.group, label).inc()

    def execution_finished(
        self, function: str, depth: int, outcome: Outcome, seconds: float
    ) -> None:
        """Record one finished run of a function body."""
        group = self.group
        self._child(self.executions, function, group, outcome).inc()
        self._child(self.execution_depth, function, group).observe(depth)
        if depth > self._deepest.get(function, -1):
            self._deepest[function] = depth
            self.execution_depth_max.labels(function, group).set(depth)
        self._child(self.execution_duration, function, group).observe(seconds)

    def in_flight_for(self, function: str) -> Any:
        """The in-flight gauge of ``function`` in this group."""
        return self._child(self.in_flight, function, self.group)

    def fanout(self, function: str, width: int) -> None:
        """Record the number of children one fan-out spawned."""
        self.fanout_width.labels(function, self.group).observe(width)

    def root_finished(self, function: str, max_depth: int) -> None:
        """Record the deepest execution seen under a root that just resolved."""
        self.root_max_depth.labels(function, self.group).observe(max_depth)

    def stream_state(self, connected: bool, cause: str | None = None) -> None:
        """Record the event stream opening or closing; ``cause``: why the previous one ended."""
        self.stream_connected.labels(self.group).set(1 if connected else 0)
        if cause is not None:
            self.stream_reconnects.labels(self.group, cause).inc()

    def heartbeat_failed(self, reason: HeartbeatFailure) -> None:
        """Count one heartbeat request that extended no lease."""
        self.heartbeat_failures.labels(self.group, reason).inc()


def _docs(collectors: list[Any]) -> list[MetricDoc]:
    docs: list[MetricDoc] = []
    for collector in collectors:
        for family in collector.describe():
            name = family.name
            if family.type == "counter":
                name += "_total"
            elif family.type == "info":
                name += "_info"
            labels = tuple(getattr(collector, "_labelnames", ()))
            if family.type == "info":
                labels = ("version", "group", "pid", "os_pid")
            docs.append(MetricDoc(name, family.type, labels, family.documentation))
    return docs


def metric_docs() -> list[MetricDoc]:
    """Describe every metric a worker exports, read from the live definitions."""
    m = WorkerMetrics("docs")
    return _docs(
        [
            m.cache_hits,
            m.cache_misses,
            m.execution_depth,
            m.execution_depth_max,
            m.root_max_depth,
            m.executions,
            m.execution_duration,
            m.in_flight,
            m.fanout_width,
            m.leases_lost,
            m.tasks_redelivered,
            m.sdk_background_failures,
            m.sdk_dropped,
            m.worker_info,
            m.worker_ready,
            m.stream_connected,
            m.stream_reconnects,
            m.heartbeat_failures,
        ]
    )


def operator_metric_docs() -> list[MetricDoc]:
    """Describe every metric the autoscaling operator exports."""
    m = OperatorMetrics()
    return _docs([m.backlog, m.desired, m.current, m.scales, m.read_failures, m.capability_errors])


def backlog_metric_docs() -> list[MetricDoc]:
    """Describe every metric the backlog API exports."""
    m = BacklogMetrics()
    return _docs([m.scans, m.scan_duration, m.group_tasks])


def _table(docs: list[MetricDoc]) -> str:
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for d in docs:
        labels = ", ".join(f"`{label}`" for label in d.labels) or "-"
        rows.append(f"| `{d.name}` | {d.type} | {labels} | {d.help} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """The worker metrics reference as a Markdown table (embedded in the docs)."""
    return _table(metric_docs())


def operator_metrics_table() -> str:
    """The operator metrics reference as a Markdown table (embedded in the docs)."""
    return _table(operator_metric_docs())


def backlog_metrics_table() -> str:
    """The backlog API metrics reference as a Markdown table (embedded in the docs)."""
    return _table(backlog_metric_docs())


class BacklogMetrics:
    """The backlog API's metric objects, in their own registry (labels: ``group``, never a task)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scans = Counter(
            BACKLOG_SCANS_NAME,
            "Scans of the Resonate server's backlog, by outcome (ok, failed, refused).",
            ["outcome"],
            registry=r,
        )
        for outcome in BACKLOG_SCAN_OUTCOMES:
            self.scans.labels(outcome)
        self.scan_duration = Histogram(
            BACKLOG_SCAN_DURATION_NAME,
            "Seconds one scan of every group's backlog took.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.group_tasks = Gauge(
            BACKLOG_GROUP_TASKS_NAME,
            "Tasks of each group with work at the last scan: waiting (pending), running "
            "(acquired) and both (total).",
            ["group", "state"],
            registry=r,
        )
        self._groups: set[str] = set()

    def scanned(self, backlogs: dict[str, tuple[int, int]], seconds: float) -> None:
        """Record a successful scan: ``backlogs`` maps group -> (pending, acquired)."""
        self.scans.labels("ok").inc()
        self.scan_duration.observe(seconds)
        for group in self._groups - set(backlogs):  # drained since the last scan
            for state in ("pending", "acquired", "total"):
                self.group_tasks.labels(group, state).set(0)
        for group, (pending, acquired) in backlogs.items():
            for state, value in (
                ("pending", pending),
                ("acquired", acquired),
                ("total", pending + acquired),
            ):
                self.group_tasks.labels(group, state).set(value)
        self._groups |= set(backlogs)

    def scan_failed(self, *, refused: bool) -> None:
        self.scans.labels("refused" if refused else "failed").inc()


class OperatorMetrics:
    """The autoscaling operator's metric objects, in their own registry.

    Labels: the autoscaler's ``namespace`` and name (``autoscaler``) and its
    ``group``; one series set per WorkerAutoscaler object, never per task.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        keys = ["namespace", "autoscaler", "group"]
        self.backlog = Gauge(
            AUTOSCALER_BACKLOG_NAME,
            "Tasks of the group waiting (pending), running (acquired) and both (total).",
            [*keys, "state"],
            registry=r,
        )
        self.desired = Gauge(
            AUTOSCALER_DESIRED_NAME,
            "Replicas the policy wants for the worker Deployment.",
            keys,
            registry=r,
        )
        self.current = Gauge(
            AUTOSCALER_CURRENT_NAME, "Replicas the worker Deployment has.", keys, registry=r
        )
        self.scales = Counter(
            AUTOSCALER_SCALES_NAME,
            "Scale operations performed, by direction (up, down).",
            [*keys, "direction"],
            registry=r,
        )
        self.read_failures = Counter(
            AUTOSCALER_READ_FAILURES_NAME,
            "Failed attempts to read the group's backlog from the Resonate server.",
            keys,
            registry=r,
        )
        self.capability_errors = Counter(
            AUTOSCALER_CAPABILITY_ERRORS_NAME,
            "Backlog reads the Resonate server refused in a way retrying cannot fix "
            "(also counted as read failures), by reason (unsupported, unauthorized, forbidden).",
            [*keys, "reason"],
            registry=r,
        )

    def ensure(self, namespace: str, name: str, group: str) -> None:
        """Create an autoscaler's counters at 0, so rates and alerts see them from the start."""
        self.read_failures.labels(namespace, name, group)
        for direction in ("up", "down"):
            self.scales.labels(namespace, name, group, direction)
        for reason in AUTOSCALER_CAPABILITY_REASONS:
            self.capability_errors.labels(namespace, name, group, reason)

    def observed(
        self, namespace: str, name: str, group: str, *, pending: int, acquired: int
    ) -> None:
        for state, value in (
            ("pending", pending),
            ("acquired", acquired),
            ("total", pending + acquired),
        ):
            self.backlog.labels(namespace, name, group, state).set(value)

    def replicas(
        self, namespace: str, name: str, group: str, *, desired: int, current: int
    ) -> None:
        self.desired.labels(namespace, name, group).set(desired)
        self.current.labels(namespace, name, group).set(current)

    def scaled(self, namespace: str, name: str, group: str, *, up: bool) -> None:
        self.scales.labels(namespace, name, group, "up" if up else "down").inc()

    def read_failed(self, namespace: str, name: str, group: str) -> None:
        self.read_failures.labels(namespace, name, group).inc()

    def capability_error(self, namespace: str, name: str, group: str, *, reason: str) -> None:
        """Count a refused read (``reason``: Unsupported, Unauthorized or Forbidden)."""
        value = reason.lower()
        if value not in AUTOSCALER_CAPABILITY_REASONS:
            msg = f"unknown capability error reason {reason!r}"
            raise ValueError(msg)
        self.capability_errors.labels(namespace, name, group, value).inc()

    def forget(self, namespace: str, name: str, group: str) -> None:
        """Drop an autoscaler's series when it is deleted."""
        for metric in (self.desired, self.current, self.read_failures):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name, group)
        for state in ("pending", "acquired", "total"):
            with contextlib.suppress(KeyError):
                self.backlog.remove(namespace, name, group, state)
        for direction in ("up", "down"):
            with contextlib.suppress(KeyError):
                self.scales.remove(namespace, name, group, direction)
        for reason in AUTOSCALER_CAPABILITY_REASONS:
            with contextlib.suppress(KeyError):
                self.capability_errors.remove(namespace, name, group, reason)
