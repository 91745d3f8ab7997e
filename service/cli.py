"""The ``resonate-patterns`` command line (also ``python -m service``).

Subcommands: ``worker`` (join a group and run every pattern), ``call``
(invoke one pattern and print its result; on a terminal, a progress line
while it waits), ``get`` (one promise: state, value or error, timing,
children), ``ls`` (recent invocations), ``demo`` (the README's first
command), ``server`` (the local development Resonate server), ``up`` (the
local stack: server plus a worker group) and ``operator`` (the autoscaler).

Exit codes: 0 success; 1 the invocation was rejected or timed out; 2 bad
usage, bad input or bad configuration. Errors are one line on stderr, never
a traceback. Results go to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from service import __version__
from service.config import Settings, load_settings, settings_table, specs
from service.errors import ConfigError, InputError, ResonatePatternsError, UsageError
from service.inspect import shorten
from service.patterns.registry import PATTERNS, pattern
from service.signals import stop_on_signals
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

    from service.operator.policy import PolicySpec

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2

#: Seconds a call runs before its progress line appears (a quick call prints none).
PROGRESS_AFTER_SECONDS = 0.3
#: Most invocations ``ls`` may list in one go.
LS_MAX = 1000


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


def _load(**overrides: str) -> Settings:
    return load_settings(os.environ, **overrides)


def _client_logging(settings: Settings) -> None:
    # A one-shot command keeps stderr quiet unless the user asked for a level.
    level = settings.log_level if "RESONATE_PATTERNS_LOG_LEVEL" in os.environ else "warning"
    setup_logging(level, settings.log_format)


def _call_args(ns: argparse.Namespace) -> tuple[Any, ...]:
    """The call's arguments: --args-json as given, else the pattern's words parsed."""
    if ns.args_json is not None:
        if ns.args:
            raise UsageError("give the arguments either as words or as --args-json, not both")
        try:
            parsed = json.loads(ns.args_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--args-json is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise UsageError("--args-json is nested too deeply") from None
        except ValueError as exc:  # e.g. a number of more than 4300 digits
            raise UsageError(f"--args-json cannot be read: {exc}") from None
        if not isinstance(parsed, list):
            raise UsageError("--args-json must be a JSON array of arguments")
        return tuple(parsed)
    return pattern(ns.pattern).parse(list(ns.args))


def _check_call_options(ns: argparse.Namespace) -> None:
    """Refuse a bad ``--timeout`` or ``--id`` before anything is stored or connected to.

    An id the server would refuse (too long, not UTF-8) would otherwise be
    retried until ``--timeout``; an id longer than :data:`MAX_ROOT_ID_CHARS`
    would leave no room for the ids the SDK mints below it.
    """
    from service.patterns.validation import MAX_ROOT_ID_CHARS

    if not 0 < ns.timeout < float("inf"):  # also refuses nan
        raise UsageError(f"--timeout must be positive (seconds), got {ns.timeout:g}")
    pid = ns.promise_id
    if pid is None:
        return
    if not pid:
        raise UsageError("--id must not be empty")
    if len(pid) > MAX_ROOT_ID_CHARS:
        raise UsageError(f"--id must have at most {MAX_ROOT_ID_CHARS} characters, got {len(pid)}")
    try:
        pid.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--id must be valid UTF-8 text (it holds a lone surrogate)") from None


def _human(value: Any) -> str:
    if isinstance(value, dict | list):
        compact = json.dumps(value)
        return compact if len(compact) <= 100 else json.dumps(value, indent=2)
    return str(value)


def _print_call(result: dict[str, Any], ns: argparse.Namespace, *, kept: bool = True) -> None:
    """Print a call's result object (``call --json``'s shape) as asked.

    ``kept``: the result outlives this process (a server or a store file), so
    a summary can say how to print it whole.
    """
    from service.inspect import (
        NOT_KEPT_HINT,
        full_result_command,
        full_result_hint,
        summarize,
        summary_lines,
    )

    if ns.summary and ns.json:
        compact = {k: v for k, v in result.items() if k != "result"}
        compact["summary"] = summarize(result["result"])
        compact["full"] = full_result_command(result["id"]) if kept else None
        _out(json.dumps(compact))
        return
    if ns.json:
        _out(json.dumps(result))
        return
    how = "cached" if result["cached"] else "computed"
    if ns.summary:
        lines = summary_lines(result["result"])
        _out(f"{result['id']} = {lines[0]}")
        for line in lines[1:]:
            _out(line)
    else:
        lines = []
        _out(f"{result['id']} = {_human(result['result'])}")
    _out(f"({how} in {result['elapsed_ms']:.1f} ms)")
    if len(lines) > 1:
        _out(full_result_hint(result["id"]) if kept else NOT_KEPT_HINT)


class _ProgressLine:
    """One status line on a terminal, rewritten in place (``\r``) and erased at the end."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = False

    def show(self, text: str) -> None:
        # A line wider than the terminal wraps, and "\r" could not take it back.
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            width = 0  # unknown: leave the line whole
        if width > 0:
            text = shorten(text, max(20, width - 1))
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def _wants_progress(ns: argparse.Namespace) -> bool:
    """A progress line only for people: stderr is a terminal and no --json."""
    return not ns.json and sys.stderr.isatty()


async def _watch(
    label: str, poll: Callable[[], Awaitable[tuple[int, int]]], line: _ProgressLine
) -> None:
    """Show ``label``'s children settled/created until cancelled (best effort)."""
    from service.inspect import poll_interval, progress_text

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(PROGRESS_AFTER_SECONDS)
    while True:
        began = loop.time()
        try:
            settled, created = await poll()
        except Exception:  # a progress line must never fail the call
            settled = created = -1
        if created >= 0:
            line.show(progress_text(label, settled, created, loop.time() - started))
        await asyncio.sleep(poll_interval(loop.time() - began))


@contextlib.asynccontextmanager
async def _progress(
    ns: argparse.Namespace, label: str, poll: Callable[[], Awaitable[tuple[int, int]]]
) -> AsyncIterator[None]:
    """While the body runs, a progress line on stderr if a person is watching."""
    if not _wants_progress(ns):
        yield
        return
    line = _ProgressLine(sys.stderr)
    task = asyncio.create_task(_watch(label, poll, line))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        line.clear()


async def _call(settings: Settings, ns: argparse.Namespace) -> int:
    from service.client import invoke, promise_id_for
    from service.inspect import progress
    from service.runtime import build_runtime

    _check_call_options(ns)
    if ns.api is not None:
        return await _call_api(ns)
    target = pattern(ns.pattern)
    args = _call_args(ns)
    # Checked here too (invoke checks again) so bad input fails before a store
    # is opened or a server connected to.
    target.validate(settings, args)
    pid = promise_id_for(target, args, ns.promise_id)
    runtime = build_runtime(settings, role="client")
    runtime.start()

    async def poll() -> tuple[int, int]:
        return await progress(runtime, pid)

    try:
        async with _progress(ns, pid, poll):
            result = await invoke(runtime, target, args, promise_id=pid, wait_seconds=ns.timeout)
    finally:
        await runtime.stop()
    _print_call(result.as_dict(), ns, kept=not _forgets(settings))
    return EXIT_OK


# ------------------------------------------------------------------- call --api


class ApiCallError(ResonatePatternsError):
    """A worker's HTTP API could not be reached, or answered with a failure (exit 1)."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


def _api_args(ns: argparse.Namespace) -> list[Any]:
    """The arguments to send; the worker validates them (400), so --args-json goes as given."""
    return list(_call_args(ns))


def _api_error(status: int, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {status}"


async def _call_api(ns: argparse.Namespace) -> int:
    """``call --api URL``: invoke through a worker's HTTP API and print as ``call`` does.

    200 prints the result; 400/404 are usage errors (exit 2); 422 is a
    rejection (exit 1); 202 polls ``GET /v1/promises/{id}`` until the promise
    settles or --timeout runs out. Connection failures are one line, exit 1.
    """
    import urllib.parse

    import aiohttp

    from service.api import MAX_WAIT_SECONDS
    from service.client import WaitTimeoutError

    if ns.timeout <= 0:
        raise UsageError("--timeout must be positive")
    body: dict[str, Any] = {"args": _api_args(ns)}
    if ns.promise_id is not None:
        body["id"] = ns.promise_id
    base = ns.api.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--api must be an http:// or https:// URL, got {ns.api!r}")
    url = f"{base}/v1/patterns/{urllib.parse.quote(ns.pattern, safe='')}"
    wait = min(ns.timeout, MAX_WAIT_SECONDS)
    started = time.perf_counter()
    deadline = time.monotonic() + ns.timeout
    # The worker holds the POST for up to `wait` seconds: read past that.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=wait + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(url, json=body, params={"timeout": f"{wait:g}"}) as resp:
                status, answer = resp.status, await _json_or_none(resp)
                location = resp.headers.get("Location")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiCallError(base, _unreachable(base, exc)) from None
        if status == 200 and isinstance(answer, dict):
            _print_call(answer, ns)
            return EXIT_OK
        if status in (400, 404):
            raise UsageError(_api_error(status, answer))
        if status == 422:
            raise ApiCallError(base, _api_error(status, answer), status)
        if status != 202 or not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise ApiCallError(
                base, f"the worker API answered {status}: {_api_error(status, answer)}", status
            )
        pid = answer["id"]
        path = location or answer.get("location") or f"/v1/promises/{urllib.parse.quote(pid)}"
        found = await _poll_api(session, urllib.parse.urljoin(base + "/", path), pid, deadline, ns)
    if found is None:
        raise WaitTimeoutError(pid, ns.timeout)
    if found.get("state") != "resolved":
        raise ApiCallError(base, f"{pid} was rejected: {found.get('error') or found.get('state')}")
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    result = {
        "id": pid,
        "pattern": ns.pattern,
        "result": found.get("value"),
        "cached": False,
        "elapsed_ms": elapsed_ms,
    }
    _print_call(result, ns)
    return EXIT_OK


async def _json_or_none(resp: Any) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


def _unreachable(base: str, exc: BaseException) -> str:
    import aiohttp

    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno is not None:
        reason = os.strerror(exc.os_error.errno)
    elif isinstance(exc, TimeoutError):
        reason = "no answer in time"
    return f"cannot reach the worker API at {base}: {reason}"


async def _poll_api(
    session: Any, url: str, pid: str, deadline: float, ns: argparse.Namespace
) -> dict[str, Any] | None:
    """GET ``url`` until the promise settles (its description) or ``deadline`` (None)."""
    import aiohttp

    latest: dict[str, int] = {"settled": 0, "created": 0}

    async def poll() -> tuple[int, int]:
        return latest["settled"], latest["created"]

    async with _progress(ns, pid, poll):
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    status, answer = resp.status, await _json_or_none(resp)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiCallError(url, _unreachable(url, exc)) from None
            if status == 200 and isinstance(answer, dict):
                children = answer.get("children")
                if isinstance(children, dict):
                    latest["settled"] = int(children.get("settled", 0))
                    latest["created"] = int(children.get("created", 0))
                if answer.get("state") != "pending":
                    return answer
            elif status not in (503, 504):  # 503: worker draining or server down; retry
                raise ApiCallError(
                    url,
                    f"polling {pid}: the worker API answered {status}: "
                    f"{_api_error(status, answer)}",
                    status,
                )
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return None


# ------------------------------------------------------------------- get and ls


def _forgets(settings: Settings) -> bool:
    """Whether the store ends with this process (embedded mode, in-memory store)."""
    from service.devserver.store import MEMORY

    return settings.resonate_url is None and settings.embedded_store == MEMORY


def _where(settings: Settings) -> str:
    """Where get/ls read, for a not-found message."""
    if settings.resonate_url is not None:
        return f"on the Resonate server at {settings.resonate_url}"
    if _forgets(settings):
        return (
            "(embedded mode with an in-memory store keeps nothing between commands: "
            "set RESONATE_URL or RESONATE_PATTERNS_EMBEDDED_STORE)"
        )
    return f"in the embedded store {settings.embedded_store}"


async def _get(settings: Settings, ns: argparse.Namespace) -> int:
    from service.inspect import PromiseNotFoundError, describe, describe_lines, reader

    if not ns.promise_id:
        raise UsageError("ID must not be empty")
    async with reader(settings) as runtime:
        found = await describe(runtime, ns.promise_id)
    if found is None:
        raise PromiseNotFoundError(ns.promise_id, _where(settings))
    if ns.json:
        _out(json.dumps(found))
    else:
        for line in describe_lines(found):
            _out(line)
    return EXIT_OK


async def _ls(settings: Settings, ns: argparse.Namespace) -> int:
    from service.inspect import LS_HEADER, invocation_line, list_invocations, reader

    if not 1 <= ns.limit <= LS_MAX:
        raise UsageError(f"--limit must be between 1 and {LS_MAX}")
    if ns.pattern is not None:
        pattern(ns.pattern)  # an unknown name is a usage error, not an empty list
    async with reader(settings) as runtime:
        found = await list_invocations(
            runtime, pending_only=ns.pending, pattern=ns.pattern, limit=ns.limit
        )
    if ns.json:
        _out(json.dumps(found))
    elif not found:
        _out(
            "no invocations"
            + (" pending" if ns.pending else "")
            + (f" {_where(settings)}" if _forgets(settings) else "")
        )
    else:
        _out(LS_HEADER)
        for entry in found:
            _out(invocation_line(entry))
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
        await serve(options, ns.host, ns.port, stop_on_signals())

    try:
        _run(run())
    except OSError as exc:
        raise UsageError(f"cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}") from None
    return EXIT_OK


#: Seconds ``call`` and ``demo`` wait for the Resonate server to accept a connection.
PROBE_SECONDS = 5.0


async def _probe_server(url: str, token: str | None = None, within: float = PROBE_SECONDS) -> None:
    """Refuse at once when no Resonate server answers at ``url`` (one line, exit 1).

    Without it the SDK retries a refused connection until ``--timeout`` (the
    call ends with "it keeps running" although nothing was ever sent), and a
    URL that reaches some other HTTP server ends in a traceback. The probe is
    one ``promise.get`` of an id nobody uses: any Resonate server (local or
    official) answers it with a reply envelope, whatever the status (a 401
    is still a Resonate server; the call then reports the refusal itself).
    """
    import aiohttp

    from service.connector.sdk import PROTOCOL_VERSION
    from service.errors import ServerUnreachableError

    head = {"corrId": "resonate-patterns-probe", "version": PROTOCOL_VERSION}
    if token is not None:  # as the SDK sends it, so an auth-on server logs no refusal
        head["auth"] = token
    probe = {"kind": "promise.get", "head": head, "data": {"id": "resonate-patterns-probe"}}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
            session.post(url.rstrip("/") + "/", json=probe) as resp,
        ):
            status = resp.status
            answer = await _json_or_none(resp)
    except TimeoutError:
        raise ServerUnreachableError(url, f"no answer within {within:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        reason = os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc)
        raise ServerUnreachableError(url, reason) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ServerUnreachableError(url, str(exc) or type(exc).__name__) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("head"), dict):
        raise ServerUnreachableError(url, f"it answers HTTP {status} but not as a Resonate server")


def _check_worker_port(settings: Settings) -> None:
    """A worker whose HTTP port is taken stops before joining the group (one line, exit 2)."""
    from service.stack import port_taken

    why = port_taken(settings.http_host, settings.http_port)
    if why is not None:
        raise UsageError(
            f"RESONATE_PATTERNS_HTTP_PORT: {why}; give each worker on this host its own "
            "port (0 picks any)"
        )


def _check_group_flag(group: str | None) -> None:
    from service.config import GROUP_ACCEPTED, GROUP_RE

    if group is not None and not GROUP_RE.match(group):
        raise UsageError(f"--group {group!r} is invalid: expected {GROUP_ACCEPTED}")


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
            _check_worker_port(settings)
            try:
                _run(run_worker(settings))
            except OSError as exc:  # the port was taken between the check and the bind
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise UsageError(
                    f"RESONATE_PATTERNS_HTTP_PORT: {settings.http_host}:{settings.http_port} "
                    "is already in use by another process"
                ) from None
            return EXIT_OK
        if ns.command == "call":
            _client_logging(settings)
            _check_call_options(ns)
            if settings.resonate_url is not None and ns.api is None:
                asyncio.run(_probe_server(settings.resonate_url, settings.token))
            return asyncio.run(_call(settings, ns))
        if ns.command == "get":
            _client_logging(settings)
            return asyncio.run(_get(settings, ns))
        if ns.command == "ls":
            _client_logging(settings)
            return asyncio.run(_ls(settings, ns))
        if ns.command == "demo":
            from service.demo import run_demo

            _client_logging(settings)
            if settings.resonate_url is not None:
                asyncio.run(_probe_server(settings.resonate_url, settings.token))
            return asyncio.run(run_demo(settings, _out))
        if ns.command == "server":
            return _server(settings, ns)
        if ns.command == "up":
            from service.stack import run_stack

            setup_logging(settings.log_level, settings.log_format)
            if not 0 <= ns.workers <= 64:
                raise UsageError("--workers must be between 0 and 64")
            if not 0 <= ns.port <= 65535:
                raise UsageError("--port must be between 0 and 65535")
            _check_group_flag(ns.group)
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
        if ns.command == "backlog-api":
            from service.operator.backlog_api import run_backlog_api

            setup_logging(settings.log_level, settings.log_format)
            _run(run_backlog_api(settings))
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
    except BrokenPipeError:
        # stdout was closed early (`ls | head`): stop quietly, as `git log | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
