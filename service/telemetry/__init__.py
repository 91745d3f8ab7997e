"""Metrics, logs and dashboards: what the services report about themselves.

:mod:`~service.telemetry.names` is the one definition of every metric (name,
help, labels, buckets) that the chart, the docs and the dashboards use;
:mod:`~service.telemetry.metrics` builds the collectors from it;
:mod:`~service.telemetry.logging` configures structlog's JSON lines.
"""
