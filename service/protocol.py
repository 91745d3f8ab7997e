"""Request envelopes this project sends itself (outside the SDK's own sender).

The drain hand-back, lease heartbeats and the operator's backlog reads speak
the protocol directly; they all build the same ``{kind, head, data}``
envelope with a fresh correlation id and the SDK's protocol version.
"""

from __future__ import annotations

import uuid
from typing import Any

from resonate_base import PROTOCOL_VERSION

#: Promise states that mean "settled": the result is in the store.
SETTLED_STATES = frozenset({"resolved", "rejected", "rejected_canceled", "rejected_timedout"})


def request_envelope(kind: str, data: dict[str, Any], *, origin: str) -> dict[str, Any]:
    """A request envelope; ``origin`` prefixes the correlation id (for logs)."""
    return {
        "kind": kind,
        "head": {"corrId": f"{origin}-{uuid.uuid4().hex}", "version": PROTOCOL_VERSION},
        "data": data,
    }
