"""The OpenAPI 3.0 document of the worker's API (``GET /openapi.json``).

The contract the tests fuzz (schemathesis): every status and body shape the
handlers in :mod:`service.api.routes` answer, and the request shapes
:mod:`service.api.requests` accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service import __version__
from service.api.requests import (
    DEFAULT_WAIT_SECONDS,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    MAX_WAIT_SECONDS,
    PREFIX,
)
from service.patterns.bounded import PROCESS_BOUNDED
from service.patterns.crawl import CRAWL
from service.patterns.enrich import ENRICH_BATCH, ENRICH_TOLERANT
from service.patterns.factorial import FACTORIAL
from service.patterns.registry import PATTERNS

if TYPE_CHECKING:
    from service.runtime import Runtime


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
    FACTORIAL: {"summary": "factorial 20", "value": {"args": [20]}},
    ENRICH_BATCH: {"summary": "enrich three records", "value": {"args": [[1, 2, "c"]]}},
    ENRICH_TOLERANT: {
        "summary": "a failing record is reported, not fatal",
        "value": {"args": [[1, "missing-2"]]},
    },
    PROCESS_BOUNDED: {
        "summary": "square 4 items, 2 at a time",
        "value": {"args": [[1, 2, 3, 4], 2]},
    },
    CRAWL: {
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
