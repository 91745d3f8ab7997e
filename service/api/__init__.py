"""The worker's HTTP API: invoke a pattern, read a promise, and the OpenAPI document.

Served by every worker on its HTTP port (``RESONATE_PATTERNS_HTTP_PORT``),
beside ``/healthz``, ``/readyz`` and ``/metrics``:

* ``POST /v1/patterns/{name}`` with ``{"args": [...], "id": "optional"}``
  invokes the pattern through :func:`service.client.submit` on the worker's
  own runtime (so this long-lived, scraped process counts the invocation's
  hit or miss) and answers exactly what ``call --json`` prints.
* ``GET /v1/promises/{id}``: a promise's state, value or error and children
  counts (:func:`service.inspect.store.describe`).
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

The package in three parts: :mod:`.requests` parses and checks a request
(pure, tested without a server); :mod:`.routes` holds the handlers, which
map outcomes to these statuses; :mod:`.openapi` is the document.
"""

from __future__ import annotations

from service.api.openapi import openapi_document
from service.api.requests import (
    DEFAULT_WAIT_SECONDS,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    MAX_WAIT_SECONDS,
    PREFIX,
    ApiError,
    Invocation,
    location_of,
    parse_invocation,
    parse_timeout,
)
from service.api.routes import InvocationApi

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_ID_CHARS",
    "MAX_WAIT_SECONDS",
    "PREFIX",
    "ApiError",
    "Invocation",
    "InvocationApi",
    "location_of",
    "openapi_document",
    "parse_invocation",
    "parse_timeout",
]
