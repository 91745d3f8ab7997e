"""Prometheus metrics of the local server, defined once.

Request counts and latency by kind, connected workers per group, pending and
acquired tasks per group, and store size. Task and store gauges are computed
at scrape time from the state's indexes (only the active tasks are visited,
never the whole store).
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.devserver.addresses import parse_address
from service.devserver.dispatch import KINDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from service.devserver.state import ServerState

PREFIX = "resonate_devserver_"
REQUESTS_NAME = PREFIX + "requests_total"
REQUEST_DURATION_NAME = PREFIX + "request_duration_seconds"
CONNECTED_WORKERS_NAME = PREFIX + "connected_workers"
TASKS_NAME = PREFIX + "tasks"
PROMISES_NAME = PREFIX + "promises"
MESSAGES_NAME = PREFIX + "messages_total"


def group_of(target: str | None) -> str:
    """The group a task is routed to, from its promise's ``resonate:target``."""
    if target is None:
        return ""
    address = parse_address(target)
    return address.group if address is not None else target


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], ServerState], connections: Callable[[], dict[str, int]]):
        self._state = state
        self._connections = connections

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state()
        tasks = GaugeMetricFamily(
            TASKS_NAME,
            "Tasks that are pending or acquired, per target group.",
            labels=["group", "state"],
        )
        for task_state in ("pending", "acquired", "suspended"):
            per_group: Tally[str] = Tally()
            for tid in state.tasks_by_state[task_state]:
                promise = state.promises.get(tid)
                per_group[group_of(promise.target if promise else None)] += 1
            for group, count in sorted(per_group.items()):
                tasks.add_metric([group, task_state], count)
        yield tasks
        promises = GaugeMetricFamily(
            PROMISES_NAME, "Stored promises by state (the store size).", labels=["state"]
        )
        for promise_state, ids in state.promises_by_state.items():
            promises.add_metric([promise_state], len(ids))
        yield promises
        workers = GaugeMetricFamily(
            CONNECTED_WORKERS_NAME,
            "Processes connected to the message stream, per group.",
            labels=["group"],
        )
        for group, count in sorted(self._connections().items()):
            workers.add_metric([group], count)
        yield workers


class ServerMetrics:
    """The local server's metric objects, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            REQUESTS_NAME,
            "Requests by kind and reply status.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            REQUEST_DURATION_NAME,
            "Time to apply and commit one request, by kind.",
            ["kind"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        #: (kind, status) -> the children updated per request, resolved once
        #: (resolving label values costs more than the update itself).
        self._per_status: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.messages = Counter(
            MESSAGES_NAME,
            "Push messages by kind and what happened to them.",
            ["kind", "outcome"],
            registry=self.registry,
        )

    def observe_request(self, kind: str, status: int, seconds: float) -> None:
        # Request kinds come from clients: only known ones become label values.
        kind = kind if kind in KINDS else "unknown"
        children = self._per_status.get((kind, status))
        if children is None:
            children = self._per_status[(kind, status)] = (
                self.requests.labels(kind, str(status)),
                self.request_duration.labels(kind),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch_state(
        self, state: Callable[[], ServerState], connections: Callable[[], dict[str, int]]
    ) -> None:
        """Export task, promise and connection gauges computed from the live state."""
        self.registry.register(_StateCollector(state, connections))
