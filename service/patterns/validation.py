"""Input validation shared by the patterns, the client, the CLI and the HTTP API.

Each ``require_*`` check raises :class:`~service.errors.InputError` naming
the function, the argument and what was expected. Every pattern module
composes them into one ``check_*`` function per durable function, and that
one function runs on both sides on purpose: in the client (``call``, the
HTTP API) before a promise is created, so a typo never becomes a stored
rejection under a keyed id, and first thing inside the durable function, so
any other client gets the same clear rejection, never a retry loop.

:func:`require_int` is the one integer check of values. Command-line words
are text: :func:`word_value` is the one place a word becomes an integer.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from service.errors import InputError, UsageError

#: Longest record id accepted by the enrichment patterns.
MAX_RECORD_ID_CHARS = 128
#: Range of integer work items (64-bit, so any client can represent them).
ITEM_MIN, ITEM_MAX = -(2**63), 2**63 - 1
#: Longest URL accepted by crawl.
MAX_URL_CHARS = 2048

#: Most decimal digits an int may have when it crosses a JSON codec: Python
#: refuses int<->str conversions past ``sys.int_info.default_max_str_digits``
#: (4300) in every process that has not raised the limit, and the SDK and the
#: local server encode values with Python's codecs.
MAX_VALUE_DIGITS = sys.int_info.default_max_str_digits
#: Longest promise id the local server stores (the official server has no
#: limit; ``service.devserver.protocol.MAX_ID_CHARS`` is this value).
SERVER_MAX_ID_CHARS = 8192
#: Longest id a caller may give an invocation (``call --id``): long enough for
#: any name, short enough that the ids the SDK mints below it (see
#: :func:`deepest_factorial_id_chars`) stay under :data:`SERVER_MAX_ID_CHARS`.
MAX_ROOT_ID_CHARS = 1024


def factorial_digits(n: int) -> int:
    """Decimal digits of ``n!`` (``lgamma`` is exact enough for n below 10**6)."""
    if n < 2:
        return 1
    return math.floor(math.lgamma(n + 1) / math.log(10)) + 1


def deepest_factorial_id_chars(n: int, root_id_chars: int) -> int:
    """Length of the longest promise id ``factorial(n)`` creates under a root id.

    Each level is an rpc whose id is its parent's plus one lineage step
    (``factorial-4`` -> ``factorial-4:2`` -> ``factorial-4:2.2`` ...: two
    characters a level), and the deepest level's own publish step adds one
    more (``.1``): ``root + 2n + 2`` characters.
    """
    return root_id_chars + 2 * n + 2


def _max_factorial_n() -> int:
    """Largest n whose ``factorial`` can be computed, stored and read back.

    Two facts bound it, and the smaller bound wins:

    * the value: ``n!`` must have at most :data:`MAX_VALUE_DIGITS` (4300)
      digits, or no process can encode it: 1558! has 4300 digits, 1559! has
      4303, so n <= 1558;
    * the ids: the deepest child id (:func:`deepest_factorial_id_chars`, under
      the longest root id :data:`MAX_ROOT_ID_CHARS`) must fit
      :data:`SERVER_MAX_ID_CHARS`: 1024 + 2n + 2 <= 8192, so n <= 3583.
    """
    by_digits = 0
    while factorial_digits(by_digits + 1) <= MAX_VALUE_DIGITS:
        by_digits += 1
    by_ids = (SERVER_MAX_ID_CHARS - MAX_ROOT_ID_CHARS - 2) // 2
    return min(by_digits, by_ids)


#: Largest n factorial can ever serve (1558; derived in :func:`_max_factorial_n`).
#: ``RESONATE_PATTERNS_MAX_N`` is validated against it.
MAX_FACTORIAL_N = _max_factorial_n()


#: A word the command line passes as an integer (anything else stays text).
_INT_WORD = re.compile(r"^-?\d+$")


def word_value(token: str, what: str) -> int | str:
    """A command-line word as a call argument: an int if it reads as one, else the word.

    ``what`` names the word in the error: an integer of more digits than
    Python converts (:data:`MAX_VALUE_DIGITS`) is a UsageError, as no
    pattern could take it.
    """
    if not _INT_WORD.match(token):
        return token
    try:
        return int(token)
    except ValueError:
        raise UsageError(f"{what} has too many digits ({len(token)})") from None


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
