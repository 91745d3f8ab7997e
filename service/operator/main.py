"""``resonate-patterns operator``: run the autoscaling operator until SIGTERM.

Watches WorkerAutoscalers in one namespace (the operator's own by default,
``RESONATE_PATTERNS_WATCH_NAMESPACE`` or ``--namespace``) or in all of them
(``*`` / ``--all-namespaces``), serves ``/healthz``, ``/readyz`` and
``/metrics`` on ``RESONATE_PATTERNS_HTTP_PORT``, and coordinates with other
replicas through kopf peering (``RESONATE_PATTERNS_OPERATOR_PEERING``) so only
one acts at a time: each replica takes a random peering priority, the highest
acts and the others wait until it is gone (replicas of equal priority would
all pause, kopf's rule for conflicting operators). With
``RESONATE_PATTERNS_OPERATOR_SELECTOR`` it acts only on the WorkerAutoscalers
carrying those labels (the chart passes its release's instance label), so
several releases' operators share a namespace.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf
import structlog
from prometheus_client import ProcessCollector

from service import __version__
from service.errors import UsageError
from service.operator.handlers import build_registry, make_memo
from service.operator.kube import load_api_config, service_account_of
from service.operator.loop import OperatorContext
from service.operator.peering import Peering
from service.signals import stop_on_signals
from service.telemetry.http import health_app, serve_http
from service.telemetry.logging import get_logger
from service.telemetry.metrics import OperatorMetrics

if TYPE_CHECKING:
    from service.config import Settings

#: Peering priorities are drawn from 1..PRIORITIES; two replicas draw the same one
#: with odds of about one in a billion (kopf docs, "Multi-pod operators").
PRIORITIES = 1 << 30

#: Where Kubernetes mounts the pod's namespace.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str:
    """The namespace this pod runs in, or ``default`` outside a cluster."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def watch_scope(
    settings: Settings, namespace: str | None, all_namespaces: bool
) -> tuple[bool, list[str]]:
    """(clusterwide, namespaces) from flags, then settings, then the pod's namespace."""
    if all_namespaces or (namespace is None and settings.watch_namespace == "*"):
        return True, []
    return False, [namespace or settings.watch_namespace or own_namespace()]


async def _api_config_or_usage_error() -> Any:
    """The cluster's API config; no credentials at all is one line (exit 2), not a traceback."""
    import logging

    from kubernetes_asyncio.config.config_exception import ConfigException

    # Its "Config not found" warning would only repeat the error line below.
    kube_log = logging.getLogger("kubernetes_asyncio.config.kube_config")
    level = kube_log.level
    kube_log.setLevel(logging.ERROR)
    try:
        return await load_api_config()
    except (ConfigException, FileNotFoundError) as exc:
        msg = (
            "no Kubernetes credentials: not running in a cluster and no usable kubeconfig "
            f"({exc}); set KUBECONFIG or run the operator in a pod"
        )
        raise UsageError(msg) from None
    finally:
        kube_log.setLevel(level)


async def run_operator(
    settings: Settings,
    *,
    namespace: str | None = None,
    all_namespaces: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when given)."""
    metrics = OperatorMetrics()
    ProcessCollector(registry=metrics.registry)
    ready = asyncio.Event()
    if stop is None:
        stop = stop_on_signals()
    api_config = await _api_config_or_usage_error()
    runner, port = await serve_http(
        health_app(metrics.registry, ready.is_set), settings.http_host, settings.http_port
    )
    clusterwide, namespaces = watch_scope(settings, namespace, all_namespaces)
    name = settings.operator_peering
    peering = (
        None
        if name is None or name == "standalone"
        else Peering(
            name,
            () if clusterwide else tuple(namespaces),
            labels=settings.operator_selector or (),
            owner=service_account_of(api_config),
        )
    )
    priority = 0 if peering is None else random.SystemRandom().randint(1, PRIORITIES)
    log = get_logger("service.operator")
    structlog.contextvars.bind_contextvars(component="operator")
    log.info(
        "operator_started",
        version=__version__,
        clusterwide=clusterwide,
        namespaces=namespaces,
        peering=peering.name if peering else "standalone",
        priority=priority,
        selector=dict(settings.operator_selector or ()),
        http_port=port,
    )
    context = OperatorContext(
        api_config=api_config,
        metrics=metrics,
        token=settings.token,
        scan_seconds=settings.backlog_scan_seconds,
    )
    try:
        await kopf.operator(
            registry=build_registry(peering=peering, selector=settings.operator_selector),
            clusterwide=clusterwide,
            namespaces=namespaces,
            standalone=peering is None,
            peering_name=peering.name if peering else None,
            priority=priority,
            memo=make_memo(context),
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        await runner.cleanup()
        log.info("operator_stopped")
