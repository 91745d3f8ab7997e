"""``call`` (and its ``--api`` form) and the server probe ``call`` and ``demo`` run first.

``call`` invokes one pattern under its keyed id and prints the result, and
whether it was cached or computed; on a terminal a progress line shows
children settled/created while it waits. ``call --api URL`` does the same
through a worker's HTTP API. Exit codes: 0 result printed; 1 rejected, timed
out or unreachable; 2 bad input (see :mod:`service.cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from service.cli.common import EXIT_OK, forgets, json_or_none, out
from service.errors import ResonatePatternsError, UsageError
from service.inspect import shorten
from service.patterns.registry import pattern

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Awaitable, Callable

    from service.config import Settings

#: Seconds a call runs before its progress line appears (a quick call prints none).
PROGRESS_AFTER_SECONDS = 0.3


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


def check_call_options(ns: argparse.Namespace) -> None:
    """Refuse a bad ``--timeout`` or ``--id`` before anything is stored or connected to.

    An id the server would refuse (too long, not UTF-8) would otherwise be
    retried until ``--timeout``; an id longer than :data:`MAX_ROOT_ID_CHARS`
    would leave no room for the ids the SDK mints below it.
    """
    from service.patterns.validation import MAX_ROOT_ID_CHARS

    if not 0 < ns.timeout < float("inf"):  # also refuses nan
        raise UsageError(f"--timeout must be positive (seconds), got {ns.timeout:g}")
    promise_id = ns.promise_id
    if promise_id is None:
        return
    if not promise_id:
        raise UsageError("--id must not be empty")
    if len(promise_id) > MAX_ROOT_ID_CHARS:
        msg = f"--id must have at most {MAX_ROOT_ID_CHARS} characters, got {len(promise_id)}"
        raise UsageError(msg)
    try:
        promise_id.encode("utf-8")
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
        out(json.dumps(compact))
        return
    if ns.json:
        out(json.dumps(result))
        return
    how = "cached" if result["cached"] else "computed"
    if ns.summary:
        lines = summary_lines(result["result"])
        out(f"{result['id']} = {lines[0]}")
        for line in lines[1:]:
            out(line)
    else:
        lines = []
        out(f"{result['id']} = {_human(result['result'])}")
    out(f"({how} in {result['elapsed_ms']:.1f} ms)")
    if len(lines) > 1:
        out(full_result_hint(result["id"]) if kept else NOT_KEPT_HINT)


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


async def run_call(settings: Settings, ns: argparse.Namespace) -> int:
    from service.client import prepare_call, submit
    from service.inspect import progress
    from service.runtime import build_runtime

    check_call_options(ns)
    if ns.api is not None:
        return await _call_api(ns)
    target = pattern(ns.pattern)
    args = _call_args(ns)
    # Checked once, before a store is opened or a server connected to.
    promise_id = prepare_call(target, settings, args, ns.promise_id)
    runtime = build_runtime(settings, role="client")
    runtime.start()

    async def poll() -> tuple[int, int]:
        return await progress(runtime, promise_id)

    try:
        async with _progress(ns, promise_id, poll):
            result = await submit(runtime, target, args, promise_id, wait_seconds=ns.timeout)
    finally:
        await runtime.stop()
    _print_call(result.as_dict(), ns, kept=not forgets(settings))
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
                status, answer = resp.status, await json_or_none(resp)
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
        promise_id = answer["id"]
        quoted = urllib.parse.quote(promise_id)
        path = location or answer.get("location") or f"/v1/promises/{quoted}"
        url = urllib.parse.urljoin(base + "/", path)
        found = await _poll_api(session, url, promise_id, deadline, ns)
    if found is None:
        raise WaitTimeoutError(promise_id, ns.timeout)
    if found.get("state") != "resolved":
        reason = found.get("error") or found.get("state")
        raise ApiCallError(base, f"{promise_id} was rejected: {reason}")
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    result = {
        "id": promise_id,
        "pattern": ns.pattern,
        "result": found.get("value"),
        "cached": False,
        "elapsed_ms": elapsed_ms,
    }
    _print_call(result, ns)
    return EXIT_OK


def _unreachable(base: str, exc: BaseException) -> str:
    import aiohttp

    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno is not None:
        reason = os.strerror(exc.os_error.errno)
    elif isinstance(exc, TimeoutError):
        reason = "no answer in time"
    return f"cannot reach the worker API at {base}: {reason}"


async def _poll_api(
    session: Any, url: str, promise_id: str, deadline: float, ns: argparse.Namespace
) -> dict[str, Any] | None:
    """GET ``url`` until the promise settles (its description) or ``deadline`` (None)."""
    import aiohttp

    latest: dict[str, int] = {"settled": 0, "created": 0}

    async def poll() -> tuple[int, int]:
        return latest["settled"], latest["created"]

    async with _progress(ns, promise_id, poll):
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    status, answer = resp.status, await json_or_none(resp)
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
                    f"polling {promise_id}: the worker API answered {status}: "
                    f"{_api_error(status, answer)}",
                    status,
                )
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return None


#: Seconds ``call`` and ``demo`` wait for the Resonate server to accept a connection.
PROBE_SECONDS = 5.0


async def probe_server(url: str, token: str | None = None, within: float = PROBE_SECONDS) -> None:
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
            answer = await json_or_none(resp)
    except TimeoutError:
        raise ServerUnreachableError(url, f"no answer within {within:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        reason = os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc)
        raise ServerUnreachableError(url, reason) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ServerUnreachableError(url, str(exc) or type(exc).__name__) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("head"), dict):
        raise ServerUnreachableError(url, f"it answers HTTP {status} but not as a Resonate server")
