"""The long-running commands: ``worker``, ``server``, ``up``, ``operator``, ``backlog-api``.

Each sets up logging, checks its flags through the configuration loader
(:mod:`service.cli.options`), then runs until SIGTERM or SIGINT. A port the
user chose that is taken is one line and exit 2, before anything starts.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from service.cli.common import EXIT_OK, out, run_loop
from service.cli.options import ServerFlags, UpFlags, read_flags
from service.errors import UsageError
from service.ports import port_taken
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    import argparse

    from service.config import Settings
    from service.operator.policy import PolicySpec


def _check_worker_port(settings: Settings) -> None:
    """A worker whose HTTP port is taken stops before joining the group (one line, exit 2)."""
    why = port_taken(settings.http_host, settings.http_port)
    if why is not None:
        raise UsageError(
            f"RESONATE_PATTERNS_HTTP_PORT: {why}; give each worker on this host its own "
            "port (0 picks any)"
        )


def run_worker_command(settings: Settings) -> int:
    """``worker``: join RESONATE_GROUP and run every pattern until SIGTERM."""
    from service.worker import run_worker

    setup_logging(settings.log_level, settings.log_format)
    _check_worker_port(settings)
    try:
        run_loop(run_worker(settings))
    except OSError as exc:  # the port was taken between the check and the bind
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(
            f"RESONATE_PATTERNS_HTTP_PORT: {settings.http_host}:{settings.http_port} "
            "is already in use by another process"
        ) from None
    return EXIT_OK


def run_server_command(settings: Settings, ns: argparse.Namespace) -> int:
    """``server``: the local development Resonate server until SIGTERM."""
    from pathlib import Path

    from service.devserver.auth import Verifier, auth_options
    from service.devserver.server import ServerOptions, retry_ms_from_env, serve
    from service.signals import stop_on_signals

    setup_logging(settings.log_level, settings.log_format)
    flags = read_flags(ServerFlags, ns)
    retry_ms = flags.retry_ms if flags.retry_ms is not None else retry_ms_from_env(os.environ)
    auth = auth_options(ns.auth_public_key, ns.auth_iss, ns.auth_aud, os.environ)
    data = ns.data if ns.data is not None else str(Path(settings.data_dir) / "server.db")
    options = ServerOptions(
        data=data,
        fsync=ns.fsync,
        release_on_disconnect=not ns.no_release_on_disconnect,
        release_grace_seconds=flags.release_grace_seconds,
        resend_on_close=not ns.no_resend_on_close,
        keepalive_seconds=flags.keepalive_seconds,
        retry_ms=retry_ms,
        # Loaded before the loop starts, so a bad key file is one line, not a traceback.
        auth=Verifier.load(auth) if auth is not None else None,
    )

    async def run() -> None:
        await serve(options, ns.host, flags.port, stop_on_signals())

    try:
        run_loop(run())
    except OSError as exc:
        msg = f"cannot listen on {ns.host}:{flags.port}: {exc.strerror or exc}"
        raise UsageError(msg) from None
    return EXIT_OK


def _autoscale_spec(flags: UpFlags, autoscale: bool) -> PolicySpec | None:
    """The local autoscaler's policy from ``up`` flags (None without --autoscale)."""
    from service.operator.policy import PolicySpec

    if not autoscale:
        return None
    try:
        return PolicySpec(
            min_replicas=flags.min_workers,
            max_replicas=flags.max_workers,
            target_tasks_per_replica=flags.target_tasks,
            stabilization_seconds=flags.scale_down_window,
            cooldown_seconds=flags.cooldown,
        )
    except ValueError as exc:
        raise UsageError(f"autoscale: {exc}") from None


def run_up_command(settings: Settings, ns: argparse.Namespace) -> int:
    """``up``: the local stack in the foreground (``--group`` is already in ``settings``)."""
    from service.local.up import run_stack

    setup_logging(settings.log_level, settings.log_format)
    flags = read_flags(UpFlags, ns)
    return run_loop(
        run_stack(
            settings,
            out,
            workers=flags.workers,
            port=flags.port,
            data=ns.data,
            group=None,
            autoscale=_autoscale_spec(flags, ns.autoscale),
            poll_seconds=flags.poll,
        )
    )


def run_operator_command(settings: Settings, ns: argparse.Namespace) -> int:
    """``operator``: the autoscaling operator until SIGTERM."""
    from service.operator.main import run_operator

    setup_logging(settings.log_level, settings.log_format)
    run_loop(run_operator(settings, namespace=ns.namespace, all_namespaces=ns.all_namespaces))
    return EXIT_OK


def run_backlog_api_command(settings: Settings) -> int:
    """``backlog-api``: every group's backlog over HTTP until SIGTERM."""
    from service.operator.backlog_api import run_backlog_api

    setup_logging(settings.log_level, settings.log_format)
    run_loop(run_backlog_api(settings))
    return EXIT_OK
