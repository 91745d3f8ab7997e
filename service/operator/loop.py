"""The life of one WorkerAutoscaler: poll, decide, scale, report, until it is deleted.

Run by a kopf daemon (one per object) until kopf stops it (operator exiting
or paused by a peer) or the object is deleted: the DELETED watch event (see
:meth:`OperatorContext.deleted`) or a 404 on the status write ends it, since
no finalizer holds the object. Every ``pollingIntervalSeconds`` it
reads the live spec, runs :func:`~service.operator.autoscaler.autoscale_step`,
posts a Kubernetes Event when it scales (reason ``ScaledUp``, ``ScaledDown``
or ``Fallback`` with the policy's explanation), and writes the status. A bad
spec or a missing Deployment is reported in the status (``Ready=False``) and
retried every poll, so fixing either needs no operator restart. The policy
state (stabilization window, cooldown clock, failure count) lives in the
status, so it survives operator restarts and leader changes.

A server that refuses the backlog searches (unknown request kind, refused
token) sets ``BacklogReadable=False`` and posts one Warning Event
(``BacklogUnsupported``, ``BacklogUnauthorized`` or ``BacklogForbidden``)
per change, not per poll; when it answers again, one Normal
``BacklogReadable`` Event. Replicas are held (or go to ``fallbackReplicas``)
meanwhile, never to zero.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kopf
from kubernetes_asyncio import client as k8s

from service.operator.autoscaler import Identity, autoscale_step
from service.operator.backlog import BacklogReader, SharedScan
from service.operator.kube import DeploymentScale, TargetMissingError, patch_status
from service.operator.peering import Peering, keep_peering
from service.operator.policy import PolicySpec, PolicyState
from service.operator.status import (
    error_status,
    is_paused,
    readable_change,
    step_status,
)
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.telemetry.metrics import OperatorMetrics

#: Shortest poll interval honoured, whatever the spec says.
MIN_POLL_SECONDS = 0.05


@dataclass
class OperatorContext:
    """What every autoscaler loop shares: clients, metrics and readers per server."""

    api_config: k8s.Configuration
    metrics: OperatorMetrics
    #: Overrides every spec's pollingIntervalSeconds (tests and local demos).
    poll_seconds: float | None = None
    #: Token for the Resonate servers (RESONATE_TOKEN); None sends no auth.
    token: str | None = None
    #: Longest one scan of a server is reused by every autoscaler reading it.
    scan_seconds: float = 2.0
    readers: dict[str, SharedScan] = field(default_factory=dict)
    api: k8s.ApiClient | None = None
    #: Set when the WorkerAutoscaler with this uid is deleted; one per running loop.
    gone: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Recreates the peering object if it goes away (peering on only).
    peering_keeper: asyncio.Task[None] | None = None

    def client(self) -> k8s.ApiClient:
        if self.api is None:
            self.api = k8s.ApiClient(self.api_config)
        return self.api

    def reader(self, url: str) -> SharedScan:
        """One shared scan per server: N autoscalers (groups) cost one scan per interval."""
        if url not in self.readers:
            age = self.scan_seconds
            if self.poll_seconds is not None:  # never staler than the forced poll
                age = min(age, self.poll_seconds)
            self.readers[url] = SharedScan(BacklogReader(url, token=self.token), age)
        return self.readers[url]

    async def start_peering(self, peering: Peering) -> list[str]:
        """Create the peering object now (raises if it cannot be), then keep it."""
        async with k8s.ApiClient(self.api_config) as api:
            created = await peering.ensure(k8s.CustomObjectsApi(api))
        if self.peering_keeper is None:
            self.peering_keeper = asyncio.create_task(keep_peering(peering, self.api_config))
        return created

    def deleted(self, uid: str) -> None:
        """The WorkerAutoscaler ``uid`` is gone: its loop stops before its next step."""
        event = self.gone.get(uid)
        if event is not None:
            event.set()

    async def close(self) -> None:
        if self.peering_keeper is not None:
            self.peering_keeper.cancel()
            await asyncio.gather(self.peering_keeper, return_exceptions=True)
            self.peering_keeper = None
        for reader in self.readers.values():
            await reader.close()
        self.readers.clear()
        if self.api is not None:
            await self.api.close()
            self.api = None


def _interval(spec: dict[str, Any], ctx: OperatorContext) -> float:
    if ctx.poll_seconds is not None:
        return max(ctx.poll_seconds, MIN_POLL_SECONDS)
    raw = spec.get("pollingIntervalSeconds", 5)
    return float(raw) if isinstance(raw, int | float) and raw >= 1 else 5.0


async def _pause(stopped: kopf.DaemonStopped, gone: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if kopf stops the daemon or the object is deleted."""
    waits = [asyncio.ensure_future(stopped.wait(seconds)), asyncio.ensure_future(gone.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _readable_event(
    body: kopf.Body, before: dict[str, Any], after: dict[str, Any], log: Any
) -> None:
    """One Event when the server starts or stops refusing the backlog searches."""
    change = readable_change(before, after)
    if change is None:
        return
    if change.readable:
        kopf.info(body, reason=change.reason, message=change.message)
        log.info("backlog_readable", detail=change.message)
    else:
        kopf.warn(body, reason=f"Backlog{change.reason}", message=change.message)
        log.warning("backlog_unreadable", reason=change.reason, detail=change.message)


def _scale_event(body: kopf.Body, result: Any, target: str) -> None:
    decision = result.decision
    reason = (
        "Fallback"
        if decision.fallback
        else ("ScaledUp" if result.direction == "up" else "ScaledDown")
    )
    message = f"{target}: {result.current_before} -> {result.current} replicas; {decision.reason}"
    if decision.fallback:
        kopf.warn(body, reason=reason, message=message)
    else:
        kopf.info(body, reason=reason, message=message)


async def run_autoscaler(
    body: kopf.Body, stopped: kopf.DaemonStopped, ctx: OperatorContext, logger: Any
) -> None:
    """Poll and scale until the daemon is stopped (operator exiting) or the object is deleted.

    ``logger`` (kopf's per-object logger) is not used: its message is free
    text and, at the operator's posting level, an Event per line; lines go
    through structlog with constant event names instead, and the Events that
    matter are posted explicitly (``_scale_event``, ``_readable_event``).
    """
    name = body.metadata.name or ""
    namespace = body.metadata.namespace or ""
    log = get_logger("service.operator").bind(namespace=namespace, autoscaler=name)
    uid = body.metadata.uid or ""
    gone = ctx.gone[uid] = asyncio.Event()
    status: dict[str, Any] = dict(body.get("status") or {})
    state = PolicyState.from_status(status.get("policy"))
    custom = k8s.CustomObjectsApi(ctx.client())
    apps = k8s.AppsV1Api(ctx.client())
    group = ""
    try:
        while not stopped and not gone.is_set():
            spec: dict[str, Any] = dict(body.spec)
            generation = body.metadata.get("generation")
            group = str(spec.get("group", ""))
            target_name = str((spec.get("scaleTargetRef") or {}).get("name", ""))
            paused = is_paused(spec, dict(body.metadata.annotations))
            try:
                policy = PolicySpec.from_resource(spec)
                if not group or not target_name or not spec.get("resonateUrl"):
                    msg = "spec needs group, resonateUrl and scaleTargetRef.name"
                    raise ValueError(msg)
            except (ValueError, TypeError, KeyError) as exc:
                status = error_status(status, generation, "InvalidSpec", str(exc), time.time())
                log.error("autoscaler_spec_invalid", error=str(exc))
            else:
                who = Identity(namespace, name, group)
                target = DeploymentScale(apps, namespace, target_name)
                try:
                    result = await autoscale_step(
                        who,
                        policy,
                        state,
                        ctx.reader(str(spec["resonateUrl"])),
                        target,
                        ctx.metrics,
                        paused=paused,
                    )
                except TargetMissingError as exc:
                    status = error_status(
                        status, generation, "TargetMissing", str(exc), time.time()
                    )
                    log.warning("scale_target_missing", target=target_name, error=str(exc))
                except k8s.ApiException as exc:
                    message = f"scaling {target_name} failed: {exc.status} {exc.reason}"
                    status = error_status(status, generation, "ScaleFailed", message, time.time())
                    log.warning(
                        "scale_failed", target=target_name, status=exc.status, reason=exc.reason
                    )
                else:
                    state = result.decision.state
                    before = status
                    status = step_status(
                        result, status, generation, activation_tasks=policy.activation_tasks
                    )
                    _readable_event(body, before, status, log.bind(group=group))
                    if result.scaled:
                        _scale_event(body, result, target_name)
                        log.info(
                            "autoscaler_scaled",
                            group=group,
                            target=target_name,
                            direction=result.direction,
                            replicas_before=result.current_before,
                            replicas=result.current,
                            reason=result.decision.reason,
                        )
            try:
                await patch_status(custom, namespace, name, status)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return  # the autoscaler is gone
                log.warning("status_update_failed", status=exc.status, reason=exc.reason)
            await _pause(stopped, gone, _interval(spec, ctx))
    finally:
        if ctx.gone.get(uid) is gone:
            del ctx.gone[uid]
        if group:
            ctx.metrics.forget(namespace, name, group)
