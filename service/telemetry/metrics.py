"""The live Prometheus metrics of each process: the worker, the operator, the backlog API.

Each process builds one :class:`WorkerMetrics`, :class:`OperatorMetrics` or
:class:`BacklogMetrics` holding its metric objects in its own registry, built
from the definitions in :mod:`service.telemetry.names` (name, help, labels,
buckets: the one place the dashboard, the docs and the tests read them from).
Domain code never touches a metric object directly; it calls the small
helpers on these classes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from service.telemetry import names as n
from service.telemetry.names import (
    AUTOSCALER_CAPABILITY_REASONS,
    BACKLOG_SCAN_OUTCOMES,
    BACKLOG_STATES,
    HEARTBEAT_FAILURE_REASONS,
    HEARTBEAT_FAILURES_NAME,
    SDK_DROP_REASONS,
    STREAM_RECONNECT_CAUSES,
    STREAM_RECONNECTS_NAME,
    CacheKind,
    HeartbeatFailure,
    Outcome,
)

# The names other modules import from here (defined in service.telemetry.names).
__all__ = [
    "AUTOSCALER_CAPABILITY_REASONS",
    "HEARTBEAT_FAILURES_NAME",
    "STREAM_RECONNECTS_NAME",
    "BacklogMetrics",
    "ExecutionSeries",
    "HeartbeatFailure",
    "LabelledChildren",
    "OperatorMetrics",
    "Outcome",
    "WorkerMetrics",
]


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


class ExecutionSeries:
    """The series one function's executions update, resolved once per function.

    Every run of a body updates five (in flight up and down, the outcome
    count, the depth and duration histograms), and resolving a series by its
    label values cost about as much as the update. Each series is created
    when it is first updated, as before (in flight at the first start, the
    others at the first finish), so a scrape shows the same series.
    """

    def __init__(self, metrics: WorkerMetrics, function: str) -> None:
        self._metrics = metrics
        self._function = function
        self._in_flight: Any = None
        self._by_outcome: dict[str, Any] = {}
        self._depth: Any = None
        self._duration: Any = None
        self._deepest = -1

    @property
    def in_flight(self) -> Any:
        """The in-flight gauge (its series created on first use)."""
        gauge = self._in_flight
        if gauge is None:
            metrics = self._metrics
            gauge = self._in_flight = metrics.in_flight.labels(self._function, metrics.group)
        return gauge

    def finished(self, depth: int, outcome: Outcome, seconds: float) -> None:
        """Record one finished run of the body."""
        m, function, group = self._metrics, self._function, self._metrics.group
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = m.executions.labels(function, group, outcome)
        counter.inc()
        if self._depth is None:  # created here, at the first finish, as before
            self._depth = m.execution_depth.labels(function, group)
        self._depth.observe(depth)
        if depth > self._deepest:
            self._deepest = depth
            m.execution_depth_max.labels(function, group).set(depth)
        if self._duration is None:
            self._duration = m.execution_duration.labels(function, group)
        self._duration.observe(seconds)


class WorkerMetrics:
    """The live metric objects of one worker process, in their own registry."""

    def __init__(self, group: str, *, registry: CollectorRegistry | None = None) -> None:
        self.group = group
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Registration order is exposition order: n.WORKER_METRICS's.
        self.cache_hits = n.CACHE_HITS.counter(r)
        self.cache_misses = n.CACHE_MISSES.counter(r)
        self.execution_depth = n.EXECUTION_DEPTH.histogram(r)
        self.execution_depth_max = n.EXECUTION_DEPTH_MAX.gauge(r)
        self.root_max_depth = n.ROOT_MAX_DEPTH.histogram(r)
        self.executions = n.EXECUTIONS.counter(r)
        self.execution_duration = n.EXECUTION_DURATION.histogram(r)
        self.in_flight = n.IN_FLIGHT.gauge(r)
        self.fanout_width = n.FANOUT_WIDTH.histogram(r)
        self.leases_lost = n.LEASES_LOST.counter(r)
        self.tasks_redelivered = n.TASKS_REDELIVERED.counter(r)
        self.sdk_background_failures = n.SDK_BACKGROUND_FAILURES.counter(r)
        self.sdk_dropped = n.SDK_DROPPED.counter(r)
        self.worker_info = n.WORKER_INFO.info(r)
        self.worker_ready = n.WORKER_READY.gauge(r)
        self.stream_connected = n.STREAM_CONNECTED.gauge(r)
        self.stream_reconnects = n.STREAM_RECONNECTS.counter(r)
        self.heartbeat_failures = n.HEARTBEAT_FAILURES.counter(r)
        self._series: dict[str, ExecutionSeries] = {}
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
        for cause in STREAM_RECONNECT_CAUSES:
            self.stream_reconnects.labels(group, cause)
        for failure in HEARTBEAT_FAILURE_REASONS:
            self.heartbeat_failures.labels(group, failure)

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

    def execution_series(self, function: str) -> ExecutionSeries:
        """The execution series of ``function`` in this group (kept: resolve it once)."""
        series = self._series.get(function)
        if series is None:
            series = self._series[function] = ExecutionSeries(self, function)
        return series

    def execution_finished(
        self, function: str, depth: int, outcome: Outcome, seconds: float
    ) -> None:
        """Record one finished run of a function body."""
        self.execution_series(function).finished(depth, outcome, seconds)

    def in_flight_for(self, function: str) -> Any:
        """The in-flight gauge of ``function`` in this group."""
        return self.execution_series(function).in_flight

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


class BacklogMetrics:
    """The backlog API's metric objects, in their own registry (labels: ``group``, never a task)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scans = n.BACKLOG_SCANS.counter(r)
        for outcome in BACKLOG_SCAN_OUTCOMES:
            self.scans.labels(outcome)
        self.scan_duration = n.BACKLOG_SCAN_DURATION.histogram(r)
        self.group_tasks = n.BACKLOG_GROUP_TASKS.gauge(r)
        self._groups: set[str] = set()

    def scanned(self, backlogs: dict[str, tuple[int, int]], seconds: float) -> None:
        """Record a successful scan: ``backlogs`` maps group -> (pending, acquired)."""
        self.scans.labels("ok").inc()
        self.scan_duration.observe(seconds)
        for group in self._groups - set(backlogs):  # drained since the last scan
            for state in BACKLOG_STATES:
                self.group_tasks.labels(group, state).set(0)
        for group, (pending, acquired) in backlogs.items():
            for state, value in zip(
                BACKLOG_STATES, (pending, acquired, pending + acquired), strict=True
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
        self.backlog = n.AUTOSCALER_BACKLOG.gauge(r)
        self.desired = n.AUTOSCALER_DESIRED.gauge(r)
        self.current = n.AUTOSCALER_CURRENT.gauge(r)
        self.scales = n.AUTOSCALER_SCALES.counter(r)
        self.read_failures = n.AUTOSCALER_READ_FAILURES.counter(r)
        self.capability_errors = n.AUTOSCALER_CAPABILITY_ERRORS.counter(r)

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
        for state, value in zip(
            BACKLOG_STATES, (pending, acquired, pending + acquired), strict=True
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
        for state in BACKLOG_STATES:
            with contextlib.suppress(KeyError):
                self.backlog.remove(namespace, name, group, state)
        for direction in ("up", "down"):
            with contextlib.suppress(KeyError):
                self.scales.remove(namespace, name, group, direction)
        for reason in AUTOSCALER_CAPABILITY_REASONS:
            with contextlib.suppress(KeyError):
                self.capability_errors.remove(namespace, name, group, reason)
