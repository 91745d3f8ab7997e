"""Every Prometheus metric of the project, defined once: name, type, help, labels, buckets.

The metric classes (:mod:`service.telemetry.metrics`) build their live
objects from these definitions, the dashboard (:mod:`service.telemetry.dashboard`)
queries the ``*_NAME`` constants, and the docs tables (``scripts/docs.py``,
docs/metrics.md) are rendered from them; a test checks each class exports
exactly the metrics listed here, and the alert rules and dashboards are tested
against a real Prometheus.

Labels come from fixed sets only: ``function`` (a registered pattern name),
``group`` (a worker group), ``outcome``, ``kind``, ``cause``, ``reason``,
``direction`` and ``state``. Never promise ids, inputs or URLs: those would
make the series unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "resonate_patterns_"

MetricType = Literal["counter", "gauge", "histogram", "info"]


@dataclass(frozen=True)
class Metric:
    """One metric as Prometheus serves it and the reference table shows it.

    ``name`` is the exposed name (counters end in ``_total``, the info metric
    in ``_info``); for the info metric ``labels`` are the keys of its value.
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def counter(self, registry: CollectorRegistry) -> Counter:
        assert self.type == "counter", self.name
        return Counter(self.name, self.help, self.labels, registry=registry)

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        assert self.type == "gauge", self.name
        return Gauge(self.name, self.help, self.labels, registry=registry)

    def histogram(self, registry: CollectorRegistry) -> Histogram:
        assert self.type == "histogram", self.name
        return Histogram(self.name, self.help, self.labels, buckets=self.buckets, registry=registry)

    def info(self, registry: CollectorRegistry) -> Info:
        assert self.type == "info", self.name
        # prometheus_client appends the ``_info`` suffix itself.
        return Info(self.name.removesuffix("_info"), self.help, registry=registry)


# -- label values (fixed sets) ------------------------------------------------------

Outcome = Literal["resolved", "rejected", "suspended", "retried"]
#: Why a heartbeat failed: an error status from the server (``rejected``;
#: e.g. 400 for tasks of several origins, 401/403 for auth) or no reply at all.
HeartbeatFailure = Literal["rejected", "unreachable"]
HEARTBEAT_FAILURE_REASONS: tuple[HeartbeatFailure, ...] = ("rejected", "unreachable")
CacheKind = Literal["invocation", "child", "lookup"]
#: Label values of ``reason`` on the SDK drop counter: the SDK's drop sites
#: (a preloaded promise record, a record in a search page, an incoming push
#: message) and ``other`` for a site a later SDK adds.
SDK_DROP_REASONS = ("preload-record", "search-record", "incoming-message", "other")
#: Why the previous event stream ended, on the reconnect counter.
STREAM_RECONNECT_CAUSES = ("idle", "closed", "error")
#: Label values of ``reason`` on the capability-error counter: the search kind is
#: unknown to the server (or 404/501), the token was refused (401), or it may not search (403).
AUTOSCALER_CAPABILITY_REASONS = ("unsupported", "unauthorized", "forbidden")
#: Outcomes of one backlog scan: read, failed (retry may help), refused (it will not).
BACKLOG_SCAN_OUTCOMES = ("ok", "failed", "refused")
#: A backlog split by task state (``total`` = both).
BACKLOG_STATES = ("pending", "acquired", "total")

# -- buckets --------------------------------------------------------------------------

#: Depth buckets: one per level for shallow trees, coarser for deep recursion
#: (factorial(n) reaches depth n).
DEPTH_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)
WIDTH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# -- the worker -------------------------------------------------------------------------

_FG = ("function", "group")

CACHE_HITS = Metric(
    PREFIX + "promise_cache_hits_total",
    "counter",
    "Durable calls (kind: invocation, child, lookup) answered by a promise that was "
    "already settled before the call asked for it: served from the store, no body ran.",
    ("function", "group", "kind"),
)
CACHE_MISSES = Metric(
    PREFIX + "promise_cache_misses_total",
    "counter",
    "Durable calls (kind: invocation, child, lookup) that needed a body to run; "
    "each call is counted once, a replay of a call already made never.",
    ("function", "group", "kind"),
)
EXECUTION_DEPTH = Metric(
    PREFIX + "execution_depth",
    "histogram",
    "Depth below its root promise at which a function execution ran.",
    _FG,
    DEPTH_BUCKETS,
)
#: A high-water mark per function.
EXECUTION_DEPTH_MAX = Metric(
    PREFIX + "execution_depth_max",
    "gauge",
    "Deepest execution this process has run since it started.",
    _FG,
)
ROOT_MAX_DEPTH = Metric(
    PREFIX + "root_max_depth",
    "histogram",
    "Deepest execution this worker saw under a root, observed when the root resolves.",
    _FG,
    DEPTH_BUCKETS,
)
EXECUTIONS = Metric(
    PREFIX + "executions_total",
    "counter",
    "Function executions by outcome (resolved, rejected, suspended, retried).",
    ("function", "group", "outcome"),
)
EXECUTION_DURATION = Metric(
    PREFIX + "execution_duration_seconds",
    "histogram",
    "Wall time of one run of a function body.",
    _FG,
    DURATION_BUCKETS,
)
IN_FLIGHT = Metric(
    PREFIX + "executions_in_flight",
    "gauge",
    "Function bodies executing in this process right now.",
    _FG,
)
FANOUT_WIDTH = Metric(
    PREFIX + "fanout_width",
    "histogram",
    "Children spawned by one fan-out execution.",
    _FG,
    WIDTH_BUCKETS,
)
LEASES_LOST = Metric(
    PREFIX + "leases_lost_total",
    "counter",
    "Task executions that lost their lease: a fenced write made by the body (a child "
    "create or settle) was refused with 409. A refused closing fulfill or suspend is "
    "an SDK background failure instead.",
    ("group",),
)
TASKS_REDELIVERED = Metric(
    PREFIX + "tasks_redelivered_total",
    "counter",
    "Task executions started at a task version above 1: the task was acquired before "
    "(resumed after its awaited promises settled, or re-delivered after a release, an "
    "expired lease or a crash).",
    ("group",),
)
SDK_BACKGROUND_FAILURES = Metric(
    PREFIX + "sdk_background_failures_total",
    "counter",
    "Background jobs of the Resonate SDK (executions, creates, listener "
    "registrations) that failed with nobody awaiting them; each one is logged.",
    ("group",),
)
SDK_DROPPED = Metric(
    PREFIX + "sdk_dropped_total",
    "counter",
    "Records and messages the Resonate SDK could not decode and discarded, by reason "
    "(preload-record, search-record, incoming-message, other); each one is logged.",
    ("group", "reason"),
)
WORKER_INFO = Metric(
    PREFIX + "worker_info",
    "info",
    "Worker identity; the value is always 1.",
    ("version", "group", "pid", "os_pid"),
)
WORKER_READY = Metric(
    PREFIX + "worker_ready",
    "gauge",
    "1 when the worker is connected and accepting work, 0 while starting or draining.",
    ("group",),
)
STREAM_CONNECTED = Metric(
    PREFIX + "event_stream_connected",
    "gauge",
    "1 while the event stream from the Resonate server is open, 0 while it is not.",
    ("group",),
)
STREAM_RECONNECTS = Metric(
    PREFIX + "event_stream_reconnects_total",
    "counter",
    "Times the event stream was opened again, by why the previous one ended: idle "
    "(silent past the read timeout), closed (by the server) or error.",
    ("group", "cause"),
)
HEARTBEAT_FAILURES = Metric(
    PREFIX + "heartbeat_failures_total",
    "counter",
    "Lease heartbeats (one per origin) refused by the server or not answered.",
    ("group", "reason"),
)

#: Every worker metric, in registration (and docs table) order.
WORKER_METRICS = (
    CACHE_HITS,
    CACHE_MISSES,
    EXECUTION_DEPTH,
    EXECUTION_DEPTH_MAX,
    ROOT_MAX_DEPTH,
    EXECUTIONS,
    EXECUTION_DURATION,
    IN_FLIGHT,
    FANOUT_WIDTH,
    LEASES_LOST,
    TASKS_REDELIVERED,
    SDK_BACKGROUND_FAILURES,
    SDK_DROPPED,
    WORKER_INFO,
    WORKER_READY,
    STREAM_CONNECTED,
    STREAM_RECONNECTS,
    HEARTBEAT_FAILURES,
)

# -- the autoscaling operator (one series set per WorkerAutoscaler) ------------------

_AUTOSCALER = ("namespace", "autoscaler", "group")

AUTOSCALER_BACKLOG = Metric(
    PREFIX + "autoscaler_backlog_tasks",
    "gauge",
    "Tasks of the group waiting (pending), running (acquired) and both (total).",
    (*_AUTOSCALER, "state"),
)
AUTOSCALER_DESIRED = Metric(
    PREFIX + "autoscaler_desired_replicas",
    "gauge",
    "Replicas the policy wants for the worker Deployment.",
    _AUTOSCALER,
)
AUTOSCALER_CURRENT = Metric(
    PREFIX + "autoscaler_current_replicas",
    "gauge",
    "Replicas the worker Deployment has.",
    _AUTOSCALER,
)
AUTOSCALER_SCALES = Metric(
    PREFIX + "autoscaler_scale_events_total",
    "counter",
    "Scale operations performed, by direction (up, down).",
    (*_AUTOSCALER, "direction"),
)
AUTOSCALER_READ_FAILURES = Metric(
    PREFIX + "autoscaler_backlog_read_failures_total",
    "counter",
    "Failed attempts to read the group's backlog from the Resonate server.",
    _AUTOSCALER,
)
AUTOSCALER_CAPABILITY_ERRORS = Metric(
    PREFIX + "autoscaler_backlog_capability_errors_total",
    "counter",
    "Backlog reads the Resonate server refused in a way retrying cannot fix "
    "(also counted as read failures), by reason (unsupported, unauthorized, forbidden).",
    (*_AUTOSCALER, "reason"),
)

#: Every operator metric, in registration (and docs table) order.
OPERATOR_METRICS = (
    AUTOSCALER_BACKLOG,
    AUTOSCALER_DESIRED,
    AUTOSCALER_CURRENT,
    AUTOSCALER_SCALES,
    AUTOSCALER_READ_FAILURES,
    AUTOSCALER_CAPABILITY_ERRORS,
)

# -- the backlog API (KEDA's metrics-api source; labels: group, never a task) ----------

BACKLOG_SCANS = Metric(
    PREFIX + "backlog_scans_total",
    "counter",
    "Scans of the Resonate server's backlog, by outcome (ok, failed, refused).",
    ("outcome",),
)
BACKLOG_SCAN_DURATION = Metric(
    PREFIX + "backlog_scan_duration_seconds",
    "histogram",
    "Seconds one scan of every group's backlog took.",
    buckets=DURATION_BUCKETS,
)
BACKLOG_GROUP_TASKS = Metric(
    PREFIX + "backlog_group_tasks",
    "gauge",
    "Tasks of each group with work at the last scan: waiting (pending), running "
    "(acquired) and both (total).",
    ("group", "state"),
)

#: Every backlog API metric, in registration (and docs table) order.
BACKLOG_METRICS = (BACKLOG_SCANS, BACKLOG_SCAN_DURATION, BACKLOG_GROUP_TASKS)

# -- names, as the dashboard, the alert rules and the tests spell them ---------------

CACHE_HITS_NAME = CACHE_HITS.name
CACHE_MISSES_NAME = CACHE_MISSES.name
EXECUTION_DEPTH_NAME = EXECUTION_DEPTH.name
EXECUTION_DEPTH_MAX_NAME = EXECUTION_DEPTH_MAX.name
ROOT_MAX_DEPTH_NAME = ROOT_MAX_DEPTH.name
EXECUTIONS_NAME = EXECUTIONS.name
EXECUTION_DURATION_NAME = EXECUTION_DURATION.name
IN_FLIGHT_NAME = IN_FLIGHT.name
FANOUT_WIDTH_NAME = FANOUT_WIDTH.name
LEASES_LOST_NAME = LEASES_LOST.name
TASKS_REDELIVERED_NAME = TASKS_REDELIVERED.name
SDK_BACKGROUND_FAILURES_NAME = SDK_BACKGROUND_FAILURES.name
SDK_DROPPED_NAME = SDK_DROPPED.name
WORKER_INFO_NAME = WORKER_INFO.name
WORKER_READY_NAME = WORKER_READY.name
STREAM_CONNECTED_NAME = STREAM_CONNECTED.name
STREAM_RECONNECTS_NAME = STREAM_RECONNECTS.name
HEARTBEAT_FAILURES_NAME = HEARTBEAT_FAILURES.name
AUTOSCALER_BACKLOG_NAME = AUTOSCALER_BACKLOG.name
AUTOSCALER_DESIRED_NAME = AUTOSCALER_DESIRED.name
AUTOSCALER_CURRENT_NAME = AUTOSCALER_CURRENT.name
AUTOSCALER_SCALES_NAME = AUTOSCALER_SCALES.name
AUTOSCALER_READ_FAILURES_NAME = AUTOSCALER_READ_FAILURES.name
AUTOSCALER_CAPABILITY_ERRORS_NAME = AUTOSCALER_CAPABILITY_ERRORS.name
BACKLOG_SCANS_NAME = BACKLOG_SCANS.name
BACKLOG_SCAN_DURATION_NAME = BACKLOG_SCAN_DURATION.name
BACKLOG_GROUP_TASKS_NAME = BACKLOG_GROUP_TASKS.name

# -- the reference tables in the docs ---------------------------------------------------


def _table(metrics: tuple[Metric, ...]) -> str:
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """The worker metrics reference as a Markdown table (embedded in the docs)."""
    return _table(WORKER_METRICS)


def operator_metrics_table() -> str:
    """The operator metrics reference as a Markdown table (embedded in the docs)."""
    return _table(OPERATOR_METRICS)


def backlog_metrics_table() -> str:
    """The backlog API metrics reference as a Markdown table (embedded in the docs)."""
    return _table(BACKLOG_METRICS)
