"""In-process server connection for embedded mode (temporary: stock SDK state)."""

from __future__ import annotations

from resonate.connections.local import LocalConnection


class EmbeddedConnection(LocalConnection):
    def __init__(self, *, pid: str, group: str, store: str = ":memory:") -> None:
        super().__init__(pid=pid, group=group)
        self.store = store

    async def close(self) -> None:
        return None
