"""The backlog API: every worker group's backlog over HTTP, for KEDA's ``metrics-api`` trigger.

For clusters that scale the workers with KEDA instead of this project's
operator: this process needs no Kubernetes API access and brings no CRDs.
It reads the Resonate server with :class:`~service.operator.backlog.SharedScan`
(one scan for every group, at most every ``RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS``),
refreshed in the background so that readiness and ``/metrics`` stay current,
however many ScaledObjects poll it.

* ``GET /backlog/{group}``: 200 ``{"group", "pending", "acquired", "total",
  "scannedAt"}`` (a group with no work has zeros); KEDA reads ``total``.
* ``GET /backlog``: 200 ``{"groups": {group: {...}}, "scannedAt"}``.
* A group name that is not a DNS label: 400 ``{"error": "..."}``.
* The server unreachable or refusing the searches: 503 ``{"error": "..."}``
  with the reason in one line; KEDA counts a failed poll and applies the
  ScaledObject's ``fallback``.
* ``/healthz``, ``/readyz`` (ready while the last scan succeeded), ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import ProcessCollector

from service.config import GROUP_RE
from service.errors import UsageError
from service.operator.backlog import (
    EMPTY,
    Backlog,
    BacklogCapabilityError,
    BacklogReader,
    BacklogReadError,
    SharedScan,
    Snapshot,
)
from service.signals import stop_on_signals
from service.telemetry.http import add_health_routes, serve_http
from service.telemetry.logging import get_logger
from service.telemetry.metrics import BacklogMetrics

if TYPE_CHECKING:
    from service.config import Settings

#: Shortest pause between background scans (a scan age of 0 still waits this long).
MIN_REFRESH_SECONDS = 1.0


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _body(group: str, backlog: Backlog) -> dict[str, Any]:
    return {
        "group": group,
        "pending": backlog.pending,
        "acquired": backlog.acquired,
        "total": backlog.total,
    }


class BacklogApi:
    """Serves a :class:`SharedScan` over HTTP and counts every scan in ``metrics``."""

    def __init__(self, scan: SharedScan, metrics: BacklogMetrics) -> None:
        self.scan = scan
        self.metrics = metrics
        self.ready = False
        self._log = get_logger("service.backlog_api")
        self._last_error: str | None = None

    async def snapshot(self) -> Snapshot:
        """The shared scan's snapshot (scanning when it is too old), counted and logged."""
        before = self.scan.scans
        try:
            snap = await self.scan.snapshot()
        except BacklogReadError as exc:
            self.ready = False
            refused = isinstance(exc, BacklogCapabilityError)
            self.metrics.scan_failed(refused=refused)
            if str(exc) != self._last_error:  # once per change, not per poll
                self._log.warning("backlog_scan_failed", error=str(exc), refused=refused)
                self._last_error = str(exc)
            raise
        if self.scan.scans != before:
            self.metrics.scanned(
                {g: (b.pending, b.acquired) for g, b in snap.backlogs.items()}, snap.duration
            )
            if not self.ready:
                self._log.info("backlog_scan_ok", groups=len(snap.backlogs), url=self.scan.url)
            self._last_error = None
        self.ready = True
        return snap

    async def refresh_forever(self, interval: float) -> None:
        """Keep the snapshot (and so readiness and the metrics) current."""
        while True:
            with contextlib.suppress(BacklogReadError):
                await self.snapshot()
            await asyncio.sleep(interval)

    async def group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if not GROUP_RE.match(group):
            return web.json_response(
                {"error": f"invalid group {group[:80]!r}: expected a lowercase DNS label"},
                status=400,
            )
        try:
            snap = await self.snapshot()
        except BacklogReadError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        body = _body(group, snap.backlogs.get(group, EMPTY))
        return web.json_response({**body, "scannedAt": _stamp(snap.scanned_at)})

    async def groups(self, _: web.Request) -> web.Response:
        try:
            snap = await self.snapshot()
        except BacklogReadError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        groups = {g: _body(g, b) for g, b in sorted(snap.backlogs.items())}
        return web.json_response({"groups": groups, "scannedAt": _stamp(snap.scanned_at)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/backlog", self.groups)
        app.router.add_get("/backlog/{group}", self.group)
        add_health_routes(app, self.metrics.registry, lambda: self.ready)
        return app


async def run_backlog_api(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until ``stop`` is set). Needs ``RESONATE_URL``."""
    if settings.resonate_url is None:
        msg = "backlog-api needs RESONATE_URL: the Resonate server whose backlog it serves"
        raise UsageError(msg)
    if stop is None:
        stop = stop_on_signals()
    metrics = BacklogMetrics()
    ProcessCollector(registry=metrics.registry)
    reader = BacklogReader(settings.resonate_url, token=settings.token)
    api = BacklogApi(SharedScan(reader, settings.backlog_scan_seconds), metrics)
    runner, port = await serve_http(api.app(), settings.http_host, settings.http_port)
    log = get_logger("service.backlog_api")
    log.info(
        "backlog_api_started",
        url=settings.resonate_url,
        http_port=port,
        scan_seconds=settings.backlog_scan_seconds,
    )
    started = time.monotonic()
    refresh = asyncio.create_task(
        api.refresh_forever(max(settings.backlog_scan_seconds, MIN_REFRESH_SECONDS))
    )
    try:
        await stop.wait()
    finally:
        refresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresh
        await runner.cleanup()
        await reader.close()
        log.info("backlog_api_stopped", ran_seconds=round(time.monotonic() - started, 1))
