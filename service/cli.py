"""The ``resonate-patterns`` command line (also ``python -m service``).

Subcommands: ``worker`` (join a group and run every pattern), ``call``
(invoke one pattern and print its result), ``demo`` (the README's first
command), ``server`` (the local development Resonate server), ``up`` (the
local stack: server plus a worker group) and ``operator`` (the autoscaler).

Exit codes: 0 success; 1 the invocation was rejected or timed out; 2 bad
usage, bad input or bad configuration. Errors are one line on stderr, never
a traceback. Results go to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from service import __version__
from service.config import Settings, load_settings, settings_table, specs
from service.errors import ConfigError, InputError, ResonatePatternsError, UsageError
from service.patterns.registry import PATTERNS, pattern
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

    from service.operator.policy import PolicySpec

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _run[T](main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (faster I/O), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return asyncio.run(main, loop_factory=uvloop.new_event_loop)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"resonate-patterns: error: {text}\n")
    sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def _patterns_help() -> str:
    lines = ["patterns:"]
    for p in PATTERNS:
        lines.append(f"  {p.name} {p.usage}\n      {p.summary}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resonate-patterns",
        description="Durable recursive workloads on Resonate.",
        epilog="Configuration comes from the environment; see `resonate-patterns config`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("worker", help="join RESONATE_GROUP and run every pattern until SIGTERM")

    call = sub.add_parser(
        "call",
        help="invoke a pattern and print its result",
        epilog=_patterns_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("pattern", help="pattern name (see below)")
    call.add_argument("args", nargs="*", help="pattern arguments")
    call.add_argument("--id", dest="promise_id", help="promise id (default: keyed by input)")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument(
        "--args-json",
        help="the pattern's arguments as a JSON array, instead of positional words",
    )
    call.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the result (600)"
    )

    server = sub.add_parser("server", help="run the local Resonate server (development and tests)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    server.add_argument("--port", type=int, default=8001, help="port for API and streams (8001)")
    server.add_argument(
        "--data",
        help="SQLite file for the store, or :memory: "
        "(default: RESONATE_PATTERNS_DATA_DIR/server.db)",
    )
    server.add_argument(
        "--fsync", action="store_true", help="fsync every commit (survives power loss, slower)"
    )
    server.add_argument(
        "--no-release-on-disconnect",
        action="store_true",
        help="leave a disconnected worker's tasks to lease expiry instead of releasing them",
    )
    server.add_argument(
        "--release-grace-seconds",
        type=float,
        default=1.5,
        help="release a disconnected worker's tasks only if it has not reconnected (same "
        "process id) within this many seconds, so a dropped stream costs no leases; "
        "0 releases them as the stream closes (1.5)",
    )
    server.add_argument(
        "--retry-ms",
        type=int,
        default=None,
        help="re-send the execute of a task nobody acquired this often, in ms "
        "(default: RESONATE_TASKS__RETRY_TIMEOUT, else 30000 like the official server)",
    )
    server.add_argument(
        "--no-resend-on-close",
        action="store_true",
        help="leave work written to a stream that closed unacquired to the retry timer "
        "instead of re-sending it at once (the official server's behaviour)",
    )
    server.add_argument(
        "--keepalive-seconds", type=float, default=15.0, help="idle stream ping interval (15)"
    )
    server.add_argument(
        "--auth-public-key",
        "--auth-publickey",
        dest="auth_public_key",
        metavar="PEM",
        help="verify JWTs with this public key (RSA, EC or Ed25519 PEM; 'none': unsigned "
        "mode) like the official server; default RESONATE_AUTH__PUBLICKEY, else auth off",
    )
    server.add_argument(
        "--auth-iss", metavar="ISS", help="required iss claim (default RESONATE_AUTH__ISS)"
    )
    server.add_argument(
        "--auth-aud", metavar="AUD", help="required aud claim (default RESONATE_AUTH__AUD)"
    )

    up = sub.add_parser("up", help="run the local stack: server plus a worker group")
    up.add_argument("--workers", type=int, default=3, help="worker processes (3)")
    up.add_argument("--group", help="worker group (default: RESONATE_GROUP)")
    up.add_argument("--port", type=int, default=8001, help="server port; 0 picks free ports")
    up.add_argument("--data", help="server store (default: RESONATE_PATTERNS_DATA_DIR/server.db)")
    up.add_argument(
        "--autoscale",
        action="store_true",
        help="grow and shrink the workers by the group's backlog (the operator's policy)",
    )
    up.add_argument("--min-workers", type=int, default=1, help="autoscale: fewest workers (1)")
    up.add_argument("--max-workers", type=int, default=6, help="autoscale: most workers (6)")
    up.add_argument(
        "--target-tasks", type=int, default=10, help="autoscale: backlog per worker (10)"
    )
    up.add_argument(
        "--scale-down-window",
        type=float,
        default=30.0,
        help="autoscale: stabilization window before scaling down, seconds (30)",
    )
    up.add_argument(
        "--cooldown", type=float, default=60.0, help="autoscale: idle time before zero (60)"
    )
    up.add_argument("--poll", type=float, default=2.0, help="autoscale: poll interval (2)")

    operator = sub.add_parser(
        "operator", help="run the autoscaling operator (scales worker Deployments by backlog)"
    )
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", help="watch this namespace (default: the pod's own)")
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch WorkerAutoscalers cluster-wide"
    )

    sub.add_parser("demo", help="run a short tour of every pattern and print the results")
    sub.add_parser("config", help="print every setting with its current value")
    return parser


def _load(**overrides: str) -> Settings:
    return load_settings(os.environ, **overrides)


def _client_logging(settings: Settings) -> None:
    # A one-shot command keeps stderr quiet unless the user asked for a level.
    level = settings.log_level if "RESONATE_PATTERNS_LOG_LEVEL" in os.environ else "warning"
    setup_logging(level, settings.log_format)


def _call_args(ns: argparse.Namespace) -> tuple[Any, ...]:
    target = pattern(ns.pattern)
    if ns.args_json is not None:
        if ns.args:
            raise UsageError("give the arguments either as words or as --args-json, not both")
        try:
            parsed = json.loads(ns.args_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--args-json is not valid JSON: {exc.msg}") from None
        if not isinstance(parsed, list):
            raise UsageError("--args-json must be a JSON array of arguments")
        return tuple(parsed)
    return target.parse(list(ns.args))


def _human(value: Any) -> str:
    if isinstance(value, dict | list):
        compact = json.dumps(value)
        return compact if len(compact) <= 100 else json.dumps(value, indent=2)
    return str(value)


async def _call(settings: Settings, ns: argparse.Namespace) -> int:
    from service.client import invoke
    from service.runtime import build_runtime

    target = pattern(ns.pattern)
    args = _call_args(ns)
    # Checked here too (invoke checks again) so bad input fails before a store
    # is opened or a server connected to.
    target.validate(settings, args)
    runtime = build_runtime(settings, role="client")
    runtime.start()
    try:
        result = await invoke(
            runtime, target, args, promise_id=ns.promise_id, wait_seconds=ns.timeout
        )
    finally:
        await runtime.stop()
    if ns.json:
        _out(json.dumps(result.as_dict()))
    else:
        how = "cached" if result.cached else "computed"
        _out(f"{result.id} = {_human(result.result)}")
        _out(f"({how} in {result.elapsed_ms:.1f} ms)")
    return EXIT_OK


def _autoscale_spec(ns: argparse.Namespace) -> PolicySpec | None:
    """The local autoscaler's policy from ``up`` flags (None without --autoscale)."""
    from service.operator.policy import PolicySpec

    if not ns.autoscale:
        return None
    if ns.poll <= 0:
        raise UsageError("--poll must be positive")
    try:
        return PolicySpec(
            min_replicas=ns.min_workers,
            max_replicas=ns.max_workers,
            target_tasks_per_replica=ns.target_tasks,
            stabilization_seconds=ns.scale_down_window,
            cooldown_seconds=ns.cooldown,
        )
    except ValueError as exc:
        raise UsageError(f"autoscale: {exc}") from None


def _server(settings: Settings, ns: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from service.devserver.auth import Verifier, auth_options
    from service.devserver.server import ServerOptions, retry_ms_from_env, serve

    setup_logging(settings.log_level, settings.log_format)
    if not 0 <= ns.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    if ns.retry_ms is not None and ns.retry_ms < 1:
        raise UsageError("--retry-ms must be at least 1")
    if ns.keepalive_seconds <= 0:
        raise UsageError("--keepalive-seconds must be positive")
    if not 0 <= ns.release_grace_seconds < float("inf"):  # also refuses nan
        raise UsageError("--release-grace-seconds must be a number of seconds, 0 or more")
    retry_ms = ns.retry_ms if ns.retry_ms is not None else retry_ms_from_env(os.environ)
    auth = auth_options(ns.auth_public_key, ns.auth_iss, ns.auth_aud, os.environ)
    data = ns.data if ns.data is not None else str(Path(settings.data_dir) / "server.db")
    options = ServerOptions(
        data=data,
        fsync=ns.fsync,
        release_on_disconnect=not ns.no_release_on_disconnect,
        release_grace_seconds=ns.release_grace_seconds,
        resend_on_close=not ns.no_resend_on_close,
        keepalive_seconds=ns.keepalive_seconds,
        retry_ms=retry_ms,
        # Loaded before the loop starts, so a bad key file is one line, not a traceback.
        auth=Verifier.load(auth) if auth is not None else None,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, ns.host, ns.port, stop)

    try:
        _run(run())
    except OSError as exc:
        raise UsageError(f"cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}") from None
    return EXIT_OK


def _config(settings: Settings) -> int:
    _out(settings_table())
    _out("")
    secrets = {name for name, s in specs().items() if s.secret}
    for name, value in vars(settings).items():
        shown = ("(set)" if value is not None else None) if name in secrets else value
        _out(f"{name} = {shown!r}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from service.client import RejectedError, WaitTimeoutError

    try:
        ns = build_parser().parse_args(argv)
        settings = _load()
        if ns.command == "worker":
            from service.worker import run_worker

            setup_logging(settings.log_level, settings.log_format)
            _run(run_worker(settings))
            return EXIT_OK
        if ns.command == "call":
            _client_logging(settings)
            return asyncio.run(_call(settings, ns))
        if ns.command == "demo":
            from service.demo import run_demo

            _client_logging(settings)
            return asyncio.run(run_demo(settings, _out))
        if ns.command == "server":
            return _server(settings, ns)
        if ns.command == "up":
            from service.stack import run_stack

            setup_logging(settings.log_level, settings.log_format)
            if not 0 <= ns.workers <= 64:
                raise UsageError("--workers must be between 0 and 64")
            return _run(
                run_stack(
                    settings,
                    _out,
                    workers=ns.workers,
                    port=ns.port,
                    data=ns.data,
                    group=ns.group,
                    autoscale=_autoscale_spec(ns),
                    poll_seconds=ns.poll,
                )
            )
        if ns.command == "operator":
            from service.operator.main import run_operator

            setup_logging(settings.log_level, settings.log_format)
            _run(run_operator(settings, namespace=ns.namespace, all_namespaces=ns.all_namespaces))
            return EXIT_OK
        if ns.command == "config":
            return _config(settings)
        raise UsageError(f"unknown command {ns.command!r}")
    except (UsageError, ConfigError, InputError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (RejectedError, WaitTimeoutError) as exc:
        _err(str(exc))
        return EXIT_REJECTED
    except ResonatePatternsError as exc:
        _err(str(exc))
        return EXIT_REJECTED
    except KeyboardInterrupt:
        return 130
