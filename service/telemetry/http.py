"""The small HTTP endpoint every long-running process serves: health, readiness, metrics.

``/healthz`` answers 200 while the event loop is responsive (liveness),
``/readyz`` answers 200 only when the process accepts work (503 while
starting or draining), and ``/metrics`` is the Prometheus exposition of the
process's registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry


def add_health_routes(
    app: web.Application,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    *,
    aliases: bool = False,
) -> None:
    """Serve /healthz, /readyz (``is_ready()``) and /metrics on ``app``.

    ``aliases`` adds /health and /ready too (the official server's paths).
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = is_ready()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if aliases:
        app.router.add_get("/health", healthz)
        app.router.add_get("/ready", readyz)


def health_app(registry: CollectorRegistry, is_ready: Callable[[], bool]) -> web.Application:
    """An aiohttp app serving only /healthz, /readyz and /metrics."""
    app = web.Application()
    add_health_routes(app, registry, is_ready)
    return app


async def serve_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port``; return the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # The port the OS picked when ``port`` is 0 (``runner.addresses``: public API).
    bound = next((int(a[1]) for a in runner.addresses if isinstance(a, tuple)), port)
    return runner, bound
