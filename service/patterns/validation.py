"""Input validation shared by the patterns and the client.

Each check raises :class:`~service.errors.InputError` naming the function,
the argument and what was expected. The same checks run twice on purpose:
in ``call`` before a promise is created (so a typo never becomes a stored
rejection under a keyed id) and inside each durable function (so any other
client gets the same clear rejection, never a retry loop).
"""

from __future__ import annotations

from typing import Any

from service.errors import InputError

#: Longest record id accepted by the enrichment patterns.
MAX_RECORD_ID_CHARS = 128
#: Range of integer work items (64-bit, so any client can represent them).
ITEM_MIN, ITEM_MAX = -(2**63), 2**63 - 1
#: Longest URL accepted by crawl.
MAX_URL_CHARS = 2048


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def require_int(function: str, name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` if it is an integer in ``[lo, hi]`` (bool is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(function, f"{name} must be an integer, got {_describe(value)}")
    if value < lo:
        raise InputError(function, f"{name} must be >= {lo}, got {value}")
    if value > hi:
        raise InputError(function, f"{name} must be <= {hi} (the configured limit), got {value}")
    return value


def require_batch(function: str, name: str, value: object, max_width: int) -> list[Any]:
    """Return ``value`` if it is a non-empty list of at most ``max_width`` items."""
    if not isinstance(value, list | tuple):
        raise InputError(function, f"{name} must be a list, got {_describe(value)}")
    if not value:
        raise InputError(function, f"{name} must not be empty")
    if len(value) > max_width:
        raise InputError(
            function,
            f"{name} has {len(value)} items, more than the fan-out limit of {max_width}",
        )
    return list(value)


def require_record_id(function: str, value: object) -> int | str:
    """Return ``value`` if it is a record id: an integer or a non-empty short string."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(
            function, f"record ids must be integers or strings, got {_describe(value)}"
        )
    if isinstance(value, str) and not 0 < len(value) <= MAX_RECORD_ID_CHARS:
        raise InputError(
            function, f"record id strings must have 1 to {MAX_RECORD_ID_CHARS} characters"
        )
    return value


def require_record_ids(function: str, value: object, max_width: int) -> list[int | str]:
    """Return a validated batch of record ids."""
    return [
        require_record_id(function, v) for v in require_batch(function, "ids", value, max_width)
    ]


def require_items(function: str, value: object, max_width: int) -> list[int]:
    """Return a validated batch of integer work items."""
    items = require_batch(function, "items", value, max_width)
    return [
        require_int(function, f"items[{i}]", v, ITEM_MIN, ITEM_MAX) for i, v in enumerate(items)
    ]


def require_url(function: str, value: object) -> str:
    """Return ``value`` if it is an http(s) URL string of sane length."""
    if not isinstance(value, str) or not value:
        raise InputError(function, f"url must be a non-empty string, got {_describe(value)}")
    if len(value) > MAX_URL_CHARS:
        raise InputError(function, f"url must be at most {MAX_URL_CHARS} characters")
    if not value.startswith(("http://", "https://")):
        raise InputError(function, f"url must start with http:// or https://, got {value!r}")
    return value


def require_crawl_spec(function: str, value: object, max_depth: int) -> tuple[str, int]:
    """Return ``(url, depth)`` from a ``{"url": ..., "depth": ...}`` crawl spec."""
    if not isinstance(value, dict):
        raise InputError(
            function, f'expected an object {{"url": ..., "depth": ...}}, got {_describe(value)}'
        )
    unknown = sorted(set(value) - {"url", "depth"})
    if unknown:
        raise InputError(function, f"unknown crawl fields: {', '.join(map(str, unknown))}")
    if "url" not in value:
        raise InputError(function, "missing field: url")
    url = require_url(function, value["url"])
    depth = require_int(function, "depth", value.get("depth", 1), 0, max_depth)
    return url, depth
