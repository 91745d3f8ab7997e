"""Parse and check one API request before anything is stored or awaited on a server.

Every refusal is an :class:`ApiError` carrying its status and one-line
message; :mod:`service.api.routes` turns it into the response.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from resonate.error import InvalidIdError

from service.client import prepare_call
from service.connector.sdk import validate_root_id
from service.errors import InputError, ResonatePatternsError

if TYPE_CHECKING:
    from service.config import Settings
    from service.patterns.registry import Pattern

#: Seconds a POST waits for the result when the request names no ``timeout``.
DEFAULT_WAIT_SECONDS = 30.0
#: Longest wait a request may ask for; past it, poll the 202's ``Location``.
#: Kept under common proxy and load-balancer idle timeouts' upper range.
MAX_WAIT_SECONDS = 300.0
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


def prepare(target: Pattern, settings: Settings, call: Invocation) -> str:
    """Check ``call`` with ``target``'s own input check; the promise id to invoke under.

    Raises an :class:`ApiError` 400 for input the pattern can never accept,
    so nothing is stored for it.
    """
    try:
        # call.id passed check_id, which is stricter than the client's id check.
        promise_id = prepare_call(target, settings, call.args, call.id)
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    if _has_surrogates(call.args):
        raise ApiError(400, "args must be valid Unicode (no lone surrogates)")
    return promise_id


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
