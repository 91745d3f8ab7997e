"""Request envelopes this project builds itself, and the states they report.

The operator's backlog reader speaks the protocol with its own HTTP session
(it runs without the SDK), so it builds the ``{kind, head, data}`` envelope
here: a fresh correlation id, the SDK's protocol version and, when a token is
configured, ``head.auth`` -- where the official server reads it on ``POST /``.
"""

from __future__ import annotations

import uuid
from typing import Any

from service.connector.sdk import PROTOCOL_VERSION

#: Promise states that mean "settled": the result is in the store.
SETTLED_STATES = frozenset({"resolved", "rejected", "rejected_canceled", "rejected_timedout"})


def request_envelope(
    kind: str, data: dict[str, Any], *, origin: str, token: str | None = None
) -> dict[str, Any]:
    """A request envelope; ``origin`` prefixes the correlation id (for logs)."""
    head: dict[str, Any] = {"corrId": f"{origin}-{uuid.uuid4().hex}", "version": PROTOCOL_VERSION}
    if token is not None:
        head["auth"] = token
    return {"kind": kind, "head": head, "data": data}


def bearer_headers(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header the server reads on ``/poll`` (and proxies may want)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
