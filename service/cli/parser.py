"""The command line's grammar: every subcommand, its flags and their help.

Only parsing lives here; what a flag's value may be is checked by the
command (through :mod:`service.config`'s loader), so a flag and the variable
it overrides fail with the same message.
"""

from __future__ import annotations

import argparse

from service import __version__
from service.cli.common import Parser
from service.patterns.registry import PATTERNS

#: Most invocations ``ls`` may list in one go.
LS_MAX = 1000


def patterns_help() -> str:
    lines = ["patterns:"]
    for p in PATTERNS:
        lines.append(f"  {p.name} {p.usage}\n      {p.summary}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resonate-patterns",
        description="Durable recursive workloads on Resonate.",
        epilog="Configuration comes from the environment; see `resonate-patterns config`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    sub.add_parser("worker", help="join RESONATE_GROUP and run every pattern until SIGTERM")

    call = sub.add_parser(
        "call",
        help="invoke a pattern and print its result",
        epilog=patterns_help(),
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
    call.add_argument(
        "--summary",
        action="store_true",
        help="print a large result compactly: counts and first items "
        "(the full result stays in the store: resonate-patterns get ID --json)",
    )
    call.add_argument(
        "--api",
        metavar="URL",
        help="send the call to a worker's HTTP API (POST URL/v1/patterns/NAME) "
        "instead of speaking Resonate",
    )

    get = sub.add_parser(
        "get",
        help="show one promise: state, value or error, timing, children counts",
        description="Show one promise (a call's id, or any id under it) from the server "
        "(RESONATE_URL) or the embedded store (RESONATE_PATTERNS_EMBEDDED_STORE).",
    )
    get.add_argument("promise_id", metavar="ID", help="promise id, e.g. factorial-20")
    get.add_argument("--json", action="store_true", help="print one JSON object (full value)")

    ls = sub.add_parser(
        "ls",
        help="list recent invocations, newest first, one line each",
        description="List top-level invocations from the server (RESONATE_URL) or the "
        "embedded store (RESONATE_PATTERNS_EMBEDDED_STORE), newest first.",
    )
    ls.add_argument("--pending", action="store_true", help="only invocations still running")
    ls.add_argument("--pattern", metavar="NAME", help="only invocations of this pattern")
    ls.add_argument(
        "--limit", type=int, default=20, help=f"most invocations to list (20; 1..{LS_MAX})"
    )
    ls.add_argument("--json", action="store_true", help="print one JSON array")

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

    sub.add_parser(
        "backlog-api",
        help="serve every worker group's backlog over HTTP (for KEDA's metrics-api trigger)",
    )
    sub.add_parser("demo", help="run a short tour of every pattern and print the results")
    sub.add_parser("config", help="print every setting with its current value")
    return parser
