"""Delivery addresses: ``poll://any@{group}`` and ``poll://uni@{group}/{pid}``.

The official server parses an address as a URL: the scheme picks the
transport, the user part is the cast (``any``: one member of the group,
``uni``: one process), the host is the group and the path the process id.
Hosts are case-insensitive there, so groups are compared lowercased here too.
Minting addresses is the SDK's job (:mod:`resonate.connections.sse`); this
module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

Cast = Literal["any", "uni"]


@dataclass(frozen=True)
class Address:
    """A parsed ``poll://`` address (``pid`` is None for a bare anycast)."""

    cast: Cast
    group: str
    pid: str | None


#: Longest address whose parse is cached (longer ones are parsed every time,
#: so a client cannot pin large strings in the cache).
_CACHED_CHARS = 512


def parse_address(raw: str) -> Address | None:
    """Parse a ``poll://`` address; None if it is not one this server delivers to."""
    # Cached: a server sees a handful of distinct addresses (one per group, one
    # per process), and ``urlsplit`` costs several µs on every created promise
    # and every push message. An Address is immutable, so sharing one is safe.
    return _parse_cached(raw) if len(raw) <= _CACHED_CHARS else _parse(raw)


def is_routable(raw: str) -> bool:
    """Whether the official server would accept ``raw`` as a target/listener address."""
    return _routable_cached(raw) if len(raw) <= _CACHED_CHARS else _routable(raw)


def _parse(raw: str) -> Address | None:
    try:
        parts = urlsplit(raw)
    except ValueError:
        return None
    if parts.scheme != "poll" or not parts.hostname:
        return None
    cast = parts.username
    pid = parts.path.lstrip("/") or None
    if cast == "any":
        return Address("any", parts.hostname.lower(), pid)
    if cast == "uni" and pid is not None:
        return Address("uni", parts.hostname.lower(), pid)
    return None


def _routable(raw: str) -> bool:
    if parse_address(raw) is not None:
        return True
    try:
        parts = urlsplit(raw)
    except ValueError:
        return False
    return parts.scheme in ("http", "https", "gcps") and bool(parts.netloc)


_parse_cached = lru_cache(maxsize=1024)(_parse)
_routable_cached = lru_cache(maxsize=1024)(_routable)
