"""The worker's HTTP API: invoke a pattern, read a promise, and the OpenAPI document.

Served by every worker on its HTTP port (``RESONATE_PATTERNS_HTTP_PORT``),
beside ``/healthz``, ``/readyz`` and ``/metrics``:

* ``POST /v1/patterns/{name}`` with ``{"args": [...], "id": "optional"}``
  invokes the pattern through :func:`service.client.invoke` on the worker's
  own runtime (so this long-lived, scraped process counts the invocation's
  hit or miss) and answers exactly what ``call --json`` prints.
* ``GET /v1/promises/{id}``: a promise's state, value or error and children
  counts (:func:`service.inspect.describe`).
* ``GET /openapi.json``: :func:`openapi_document`, the contract the tests fuzz.

Status codes (every error body is ``{"error": "<one line>"}``):

=====  ==========================================================================
200    the result: ``{"id", "pattern", "result", "cached", "elapsed_ms"}``
202    not settled within ``?timeout=`` seconds: ``{"id", "location"}`` plus a
       ``Location: /v1/promises/{id}`` header to poll; the call keeps running
400    the request can never succeed as written: body not JSON, not an object,
       unknown keys, ``args`` not a list, ``id`` not a valid root id, arguments
       the pattern rejects, a bad ``timeout``. Checked before anything is stored
       (and a 4xx from the Resonate server on the create, for input it will not store).
404    unknown pattern, or no promise with that id
413    body larger than :data:`MAX_BODY_BYTES`
422    the promise was rejected: ``{"error", "id"}``
502    the Resonate server refused this worker's token (401) or its scope (403):
       a deployment problem the caller cannot fix, so a gateway error
503    the worker has finished draining, or the Resonate server cannot be
       reached; retry
=====  ==========================================================================

Request parsing is pure (:func:`parse_timeout`, :func:`parse_invocation`) and
tested without a server; the handlers only map outcomes to responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import ClientError, web
from resonate.error import ConnectorError, InvalidIdError, ServerError

from service import __version__
from service.client import RejectedError, WaitTimeoutError, invoke
from service.connector.sdk import validate_root_id
from service.errors import (
    AuthRefusedError,
    InputError,
    ResonatePatternsError,
    ServerFailedError,
    ServerUnavailableError,
    UsageError,
)
from service.patterns.registry import PATTERNS, pattern
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from service.client import CallResult
    from service.patterns.registry import Pattern
    from service.runtime import Runtime

    #: ``describe(runtime, promise_id)``: a promise as a JSON-ready dict, None if absent.
    Describe = Callable[[Runtime, str], Awaitable[dict[str, Any] | None]]

#: Seconds a POST waits for the result when the request names no ``timeout``.
DEFAULT_WAIT_SECONDS = 30.0
#: Longest wait a request may ask for; past it, poll the 202's ``Location``.
#: Kept under common proxy and load-balancer idle timeouts' upper range.
MAX_WAIT_SECONDS = 300.0
#: Longest ``GET /v1/promises/{id}`` waits for the Resonate server before 503.
DESCRIBE_TIMEOUT_SECONDS = 10.0
#: Largest request body. 10,000 record ids of 128 characters (the default
#: fan-out limit at the longest id) are about 1.4 MB of JSON.
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Longest promise id a request may name (ids travel in URLs and logs).
MAX_ID_CHARS = 256
#: Keys an invocation body may carry.
BODY_KEYS = frozenset({"args", "id"})
#: Path prefix of the versioned API.
PREFIX = "/v1"

_TIMEOUT_RE = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class ApiError(ResonatePatternsError):
    """A request the API answers with an error status and a one-line message."""

    def __init__(self, status: int, message: str, **fields: str) -> None:
        self.status = status
        self.message = message
        self.fields = fields
        super().__init__(message)

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {"error": self.message, **self.fields}, status=self.status, headers=headers
        )


@dataclass(frozen=True)
class Invocation:
    """A parsed, shape-checked ``POST /v1/patterns/{name}`` body."""

    args: tuple[Any, ...]
    #: The caller's promise id, or None for the pattern's keyed id.
    id: str | None


def parse_timeout(raw: str | None) -> float:
    """Seconds to wait from ``?timeout=``: a decimal number in ``(0, MAX_WAIT_SECONDS]``."""
    if raw is None:
        return DEFAULT_WAIT_SECONDS
    limits = f"a number of seconds > 0 and <= {MAX_WAIT_SECONDS:g}"
    shown = raw if len(raw) <= 40 else raw[:37] + "..."
    if not _TIMEOUT_RE.fullmatch(raw):
        raise ApiError(400, f"timeout must be {limits}, got {shown!r}")
    seconds = float(raw)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_WAIT_SECONDS):
        raise ApiError(400, f"timeout must be {limits}, got {shown!r}")
    return seconds


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON.
    raise ValueError(f"{name} is not valid JSON")


def _has_surrogates(value: Any) -> bool:
    """Whether any string in ``value`` holds a lone surrogate (not encodable as UTF-8)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def check_id(promise_id: Any) -> str:
    """Return ``promise_id`` if a caller may invoke under it, else raise a 400."""
    if not isinstance(promise_id, str):
        raise ApiError(400, f"id must be a string, got {type(promise_id).__name__}")
    if len(promise_id) > MAX_ID_CHARS:
        raise ApiError(400, f"id must have at most {MAX_ID_CHARS} characters")
    if _has_surrogates(promise_id):
        raise ApiError(400, "id must be valid Unicode (no lone surrogates)")
    try:
        return validate_root_id(promise_id)
    except InvalidIdError as exc:
        raise ApiError(400, f"invalid id {promise_id!r}: {exc}") from None


def parse_invocation(body: bytes) -> Invocation:
    """Parse an invocation body; every malformed shape is an :class:`ApiError` 400.

    The body is JSON whatever the Content-Type says (``curl -d`` sends a form
    type): an object with ``args`` (a list, required) and ``id`` (optional).
    """
    hint = 'expected a JSON object like {"args": [20]}'
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"request body is not UTF-8; {hint}") from None
    if not text.strip():
        raise ApiError(400, f"request body is empty; {hint}")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ApiError(400, f"request body is not valid JSON ({reason}); {hint}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body is a JSON {_json_type(data)}; {hint}")
    unknown = sorted(set(data) - BODY_KEYS)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise ApiError(400, f"unknown key(s) {shown}; the body takes only 'args' and 'id'")
    if "args" not in data:
        raise ApiError(400, f"missing key 'args'; {hint}")
    args = data["args"]
    if not isinstance(args, list):
        raise ApiError(400, f"args must be a JSON array, got a JSON {_json_type(args)}")
    promise_id = check_id(data["id"]) if "id" in data else None
    return Invocation(tuple(args), promise_id)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def location_of(promise_id: str) -> str:
    """The API path of a promise (the id percent-encoded as one path segment)."""
    return f"{PREFIX}/promises/{urllib.parse.quote(promise_id, safe='')}"


def prepare(target: Pattern, runtime: Runtime, call: Invocation) -> tuple[tuple[Any, ...], str]:
    """Validate ``call`` against ``target`` exactly as the durable function will.

    Returns the arguments and the promise id to invoke under; raises an
    :class:`ApiError` 400 for input the pattern can never accept, so nothing
    is stored for it.
    """
    try:
        target.validate(runtime.settings, call.args)
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    if _has_surrogates(call.args):
        raise ApiError(400, "args must be valid Unicode (no lone surrogates)")
    promise_id = call.id if call.id is not None else target.keyed_id(call.args)
    return call.args, promise_id


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or an :class:`ApiError` 413 once it exceeds ``limit`` bytes."""
    too_large = ApiError(413, f"request body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


async def _describe(runtime: Runtime, promise_id: str) -> dict[str, Any] | None:
    from service.inspect import describe

    return await describe(runtime, promise_id)


class InvocationApi:
    """The API routes of one worker, bound to its runtime.

    A draining worker keeps answering (Kubernetes takes a moment to stop
    routing to a pod that turned unready) and waits for its callers like for
    its executions. :meth:`close`, at the end of the drain, answers the
    requests still waiting with 202 and their ``Location`` and turns new
    invocations away with 503, so a worker never holds a caller past its
    drain: the call itself keeps running on the group.
    """

    def __init__(self, runtime: Runtime, *, describe: Describe | None = None) -> None:
        self.runtime = runtime
        #: Set by :meth:`close`: new invocations get 503.
        self.closed = False
        #: POSTs currently waiting for a result.
        self.in_flight = 0
        self._describe = describe if describe is not None else _describe
        self._released = asyncio.Event()
        self._log = get_logger("service.api")

    def install(self, app: web.Application) -> None:
        """Add the API's routes (and JSON errors for its paths) to ``app``."""
        app.middlewares.append(_json_errors)
        app.router.add_post(PREFIX + "/patterns/{name}", self.post_pattern)
        app.router.add_get(PREFIX + "/promises/{id:.+}", self.get_promise)
        app.router.add_get("/openapi.json", self.get_openapi)

    async def close(self, grace_seconds: float = 1.0) -> None:
        """Answer every waiting invocation now (202 with its Location); refuse new ones.

        Returns once those answers are written, or after ``grace_seconds``.
        """
        self.closed = True
        self._released.set()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        # Each waiting handler answers on its next turn of the loop; no event tells when.
        while self.in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def get_openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.runtime))

    async def post_pattern(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            target = pattern(name)
        except UsageError as exc:
            return ApiError(404, str(exc)).response()
        try:
            wait = parse_timeout(_one_query(request, "timeout"))
            call = parse_invocation(await read_body(request))
            args, promise_id = prepare(target, self.runtime, call)
            if self.closed:
                raise ApiError(503, "this worker is shutting down; retry (another one answers)")
        except ApiError as exc:
            self._log.info("api_refused", pattern=name, status=exc.status, error=exc.message)
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return exc.response(headers)
        self.in_flight += 1
        try:
            return await self._invoke(target, args, promise_id, wait)
        finally:
            self.in_flight -= 1

    async def _invoke(
        self, target: Pattern, args: tuple[Any, ...], promise_id: str, wait: float
    ) -> web.Response:
        log = self._log.bind(pattern=target.name, promise_id=promise_id)
        try:
            result = await self._wait(
                invoke(self.runtime, target, args, promise_id=promise_id, wait_seconds=wait)
            )
        except WaitTimeoutError:
            result = None
        except RejectedError as exc:
            log.info("api_call", status=422)
            return ApiError(422, str(exc), id=promise_id).response()
        except AuthRefusedError as exc:
            log.warning("api_call", status=502, error=str(exc))
            return ApiError(502, str(exc)).response()
        except (InputError, UsageError) as exc:
            return ApiError(400, str(exc)).response()
        except ServerError as exc:
            if 400 <= exc.code < 500:
                # Input that passed the pattern's checks but that the server will not store.
                log.info("api_call", status=400, error=exc.message)
                return ApiError(400, f"the Resonate server refused the call: {exc}").response()
            log.warning("api_call", status=503, error=str(exc))
            return _unavailable(exc).response({"Retry-After": "1"})
        except (
            ConnectorError,
            ClientError,
            OSError,
            ServerUnavailableError,
            ServerFailedError,
        ) as exc:
            log.warning("api_call", status=503, error=str(exc) or type(exc).__name__)
            return _unavailable(exc).response({"Retry-After": "1"})
        if result is None:
            location = location_of(promise_id)
            log.info("api_call", status=202, wait_seconds=wait)
            return web.json_response(
                {"id": promise_id, "location": location},
                status=202,
                headers={"Location": location},
            )
        log.info("api_call", status=200, cached=result.cached, elapsed_ms=result.elapsed_ms)
        return web.json_response(result.as_dict())

    async def _wait(self, call: Awaitable[CallResult]) -> CallResult | None:
        """``call``'s result, or None when :meth:`close` comes first (call cancelled)."""
        task = asyncio.ensure_future(call)
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({task, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()

    async def get_promise(self, request: web.Request) -> web.Response:
        promise_id = request.match_info["id"]
        missing = ApiError(404, f"no promise {promise_id!r}")
        # Ids no promise can have: not worth a round trip to the server.
        if len(promise_id) > 4 * MAX_ID_CHARS or "\0" in promise_id:
            return missing.response()
        try:
            # A started runtime retries a server that is down; answer 503 instead of hanging.
            async with asyncio.timeout(DESCRIBE_TIMEOUT_SECONDS):
                found = await self._describe(self.runtime, promise_id)
        except TimeoutError:
            msg = f"no answer within {DESCRIBE_TIMEOUT_SECONDS:g} s"
            return _unavailable(TimeoutError(msg)).response({"Retry-After": "1"})
        except AuthRefusedError as exc:
            return ApiError(502, str(exc)).response()
        except ServerError as exc:
            if exc.code in (401, 403):
                refused = AuthRefusedError(exc.code, exc.message, promise_id)
                return ApiError(502, str(refused)).response()
            if 400 <= exc.code < 500:
                # The server refuses to look the id up: no promise has it.
                return missing.response()
            return _unavailable(exc).response({"Retry-After": "1"})
        except (ConnectorError, ClientError, OSError) as exc:
            return _unavailable(exc).response({"Retry-After": "1"})
        if found is None:
            return missing.response()
        return web.json_response(found)


def _unavailable(exc: BaseException) -> ApiError:
    reason = str(exc) or type(exc).__name__
    return ApiError(503, f"the Resonate server is unavailable: {reason}")


def _one_query(request: web.Request, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise ApiError(400, f"{key} given {len(values)} times; give it once")
    return values[0] if values else None


_JSON_ERROR_PATHS = (PREFIX + "/", "/openapi.json")


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """On the API's paths, routing errors (404, 405) and crashes answer JSON, never a trace."""
    if not request.path.startswith(_JSON_ERROR_PATHS):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        get_logger("service.api").exception("api_error", path=request.path, error=str(exc))
        return web.json_response({"error": "internal error (logged by the worker)"}, status=500)


# -- the OpenAPI document ------------------------------------------------------------------------


def _error_schema(*, with_id: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"error": {"type": "string", "description": "One line."}}
    required = ["error"]
    if with_id:
        properties["id"] = {"type": "string", "description": "The rejected promise's id."}
        required.append("id")
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str, *, with_id: bool = False, **extra: Any) -> dict[str, Any]:
    return _json(_error_schema(with_id=with_id), description, **extra)


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


#: What any pattern argument can be: an integer (n, k, an item, a record id), a string
#: (a record id, a URL), a list of those (ids, items) or a crawl spec. A superset of what
#: the patterns accept, and nothing outside it is accepted by any pattern.
_ARG_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string"},
        {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
        {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {"url": {"type": "string"}, "depth": {"type": "integer"}},
        },
    ]
}

#: One request body per pattern, as the document's examples.
_EXAMPLES: dict[str, Any] = {
    "factorial": {"summary": "factorial 20", "value": {"args": [20]}},
    "enrich_batch": {"summary": "enrich three records", "value": {"args": [[1, 2, "c"]]}},
    "enrich_tolerant": {
        "summary": "a failing record is reported, not fatal",
        "value": {"args": [[1, "missing-2"]]},
    },
    "process_bounded": {
        "summary": "square 4 items, 2 at a time",
        "value": {"args": [[1, 2, 3, 4], 2]},
    },
    "crawl": {
        "summary": "crawl the synthetic graph one hop deep",
        "value": {"args": [{"url": "https://synthetic.local/p/0", "depth": 1}]},
    },
    "explicit_id": {
        "summary": "under a chosen promise id",
        "value": {"args": [5], "id": "my-call-1"},
    },
}


def openapi_document(runtime: Runtime | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document of this API (``GET /openapi.json``).

    Limits that depend on configuration (largest n, fan-out width) are quoted
    from ``runtime``'s settings in the descriptions; the request schema only
    states the shape, and each pattern checks its own arguments (400).
    """
    usage = "\n".join(f"- `{p.name}` `{p.usage}`: {p.summary}" for p in PATTERNS)
    limits = ""
    if runtime is not None:
        s = runtime.settings
        limits = (
            f"\n\nThis worker's limits: n <= {s.max_n}, fan-out <= {s.max_fanout} children, "
            f"crawl depth <= {s.max_crawl_depth}."
        )
    call_result = {
        "type": "object",
        "required": ["id", "pattern", "result", "cached", "elapsed_ms"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "The promise id invoked under."},
            "pattern": {"type": "string"},
            "result": {"nullable": True, "description": "The pattern's return value (any JSON)."},
            "cached": {
                "type": "boolean",
                "description": "True when the promise was already resolved: no body ran.",
            },
            "elapsed_ms": {"type": "number", "minimum": 0},
        },
    }
    accepted = {
        "type": "object",
        "required": ["id", "location"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "location": {"type": "string", "description": "Path to poll: /v1/promises/{id}."},
        },
    }
    nullable_string = {"type": "string", "nullable": True}
    nullable_ms = {"type": "integer", "nullable": True}
    count = {"type": "integer", "minimum": 0}
    promise = {
        "type": "object",
        "required": [
            "id",
            "root",
            "kind",
            "state",
            "pattern",
            "args",
            "value",
            "error",
            "created_at",
            "settled_at",
            "timeout_at",
            "duration_ms",
            "children",
        ],
        "properties": {
            "id": {"type": "string"},
            "root": {"type": "string", "description": "The top-level id it belongs to."},
            "kind": {"type": "string", "enum": ["invocation", "child", "cache", "promise"]},
            "state": {
                "type": "string",
                "enum": [
                    "pending",
                    "resolved",
                    "rejected",
                    "rejected_canceled",
                    "rejected_timedout",
                ],
            },
            "pattern": {**nullable_string, "description": "The function it runs."},
            "args": {**nullable_string, "description": "Its arguments as (cut) JSON text."},
            "value": {"nullable": True, "description": "The result once resolved (any JSON)."},
            "error": {**nullable_string, "description": "The failure once rejected."},
            "created_at": {"type": "integer", "description": "ms since the epoch (server)."},
            "settled_at": nullable_ms,
            "timeout_at": {"type": "integer"},
            "duration_ms": nullable_ms,
            "children": {
                "type": "object",
                "required": ["created", "settled", "pending"],
                "description": "Promises below this one, any depth.",
                "properties": {"created": count, "settled": count, "pending": count},
            },
        },
    }
    body = {
        "type": "object",
        "required": ["args"],
        "additionalProperties": False,
        "properties": {
            "args": {
                "type": "array",
                "items": _ARG_SCHEMA,
                "description": "The pattern's positional arguments, e.g. [20] for factorial. "
                "Each pattern checks their number and values (400 when it cannot accept them).",
            },
            "id": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_CHARS,
                "pattern": "^[^:\\x00]+$",
                "description": "Promise id to invoke under (default: keyed by input, "
                "e.g. factorial-20). No ':' (it separates the lineage of child ids).",
            },
        },
    }
    location_header = {
        "Location": {"description": "Path of the promise to poll.", "schema": {"type": "string"}}
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "resonate-patterns worker API",
            "version": __version__,
            "description": "Invoke durable patterns on this worker's group and read promises. "
            "Results are keyed by input, so a repeated call answers from the store "
            "(`cached: true`).\n\nPatterns:\n" + usage + limits,
        },
        "paths": {
            PREFIX + "/patterns/{name}": {
                "post": {
                    "operationId": "invokePattern",
                    "summary": "Invoke a pattern and wait for its result",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": [p.name for p in PATTERNS]},
                        },
                        {
                            "name": "timeout",
                            "in": "query",
                            "required": False,
                            "description": "Seconds to wait for the result before answering 202.",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "exclusiveMinimum": True,
                                "maximum": MAX_WAIT_SECONDS,
                                "default": DEFAULT_WAIT_SECONDS,
                            },
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body, "examples": _EXAMPLES}},
                    },
                    "responses": {
                        "200": _json(call_result, "The result (what `call --json` prints)."),
                        "202": _json(
                            accepted,
                            "Still running after `timeout` seconds; poll the Location.",
                            headers=location_header,
                        ),
                        "400": _error("Malformed body, bad arguments, bad id or bad timeout."),
                        "404": _error("Unknown pattern."),
                        "413": _error(f"Body larger than {MAX_BODY_BYTES} bytes."),
                        "422": _error("The promise was rejected.", with_id=True),
                        "502": _error("The Resonate server refused this worker's token."),
                        "503": _error(
                            "Worker draining or Resonate server unreachable; retry.",
                            headers=_RETRY_AFTER,
                        ),
                    },
                }
            },
            PREFIX + "/promises/{id}": {
                "get": {
                    "operationId": "getPromise",
                    "summary": "A promise's state, value or error, and children counts",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json(promise, "The promise."),
                        "404": _error("No promise with this id."),
                        "502": _error("The Resonate server refused this worker's token."),
                        "503": _error("Resonate server unreachable; retry.", headers=_RETRY_AFTER),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
        },
    }
