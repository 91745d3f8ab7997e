"""Read a worker group's backlog from a Resonate server, over the official protocol.

Backlog = tasks not yet picked up (``pending``) plus tasks a worker holds
(``acquired``) whose promise targets ``poll://any@{group}``. The server has
no group filter on ``task.search`` and tasks carry no target, but a task's id
is its promise's id, so the reader pages through

1. ``promise.search`` (state ``pending``, tag ``resonate:target``) for the ids
   of the group's pending promises, then
2. ``task.search`` (state ``pending``, then ``acquired``) for every such task,

and joins the two by id. Suspended tasks (waiting on children) are not
backlog: they need no worker until a child settles. Pages are followed with
the server's cursor until it stops returning one. The same code reads the
official server and the local one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from service.connector.envelopes import request_envelope
from service.connector.sdk import anycast_address as anycast
from service.errors import ResonatePatternsError

#: Largest page the official server allows.
MAX_PAGE = 1000


class BacklogReadError(ResonatePatternsError):
    """The Resonate server could not be read (down, unreachable, or an error reply)."""


@dataclass(frozen=True)
class Backlog:
    """Tasks of one group waiting (``pending``) and running (``acquired``)."""

    pending: int
    acquired: int

    @property
    def total(self) -> int:
        return self.pending + self.acquired


class BacklogReader:
    """Reads backlogs from one Resonate server (an aiohttp session, reused)."""

    def __init__(
        self, url: str, *, page_size: int = MAX_PAGE, timeout_seconds: float = 10.0
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE:
            msg = f"page_size must be between 1 and {MAX_PAGE}"
            raise ValueError(msg)
        self.url = url.rstrip("/")
        self.page_size = page_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        envelope = request_envelope(kind, data, origin="backlog")
        try:
            async with self._session.post(f"{self.url}/", json=envelope) as resp:
                reply = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            msg = f"cannot read {kind} from {self.url}: {exc or type(exc).__name__}"
            raise BacklogReadError(msg) from exc
        status = reply.get("head", {}).get("status") if isinstance(reply, dict) else None
        if status != 200:
            detail = reply.get("data") if isinstance(reply, dict) else reply
            msg = f"{kind} on {self.url} answered {status}: {detail}"
            raise BacklogReadError(msg)
        data_out = reply.get("data")
        if not isinstance(data_out, dict):
            msg = f"{kind} on {self.url} returned no data"
            raise BacklogReadError(msg)
        return data_out

    async def _pages(self, kind: str, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Every record of a search, following the cursor."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            data = {**query, "limit": self.page_size}
            if cursor is not None:
                data["cursor"] = cursor
            page = await self._send(kind, data)
            items = page.get(key)
            if not isinstance(items, list):
                msg = f"{kind} on {self.url} returned no {key!r} list"
                raise BacklogReadError(msg)
            records.extend(item for item in items if isinstance(item, dict))
            next_cursor = page.get("cursor")
            if not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
                return records
            cursor = next_cursor

    async def group_promises(self, group: str) -> set[str]:
        """Ids of pending promises routed to ``group``."""
        found = await self._pages(
            "promise.search",
            "promises",
            {"state": "pending", "tags": {"resonate:target": anycast(group)}},
        )
        return {str(p["id"]) for p in found if "id" in p}

    async def task_ids(self, state: str) -> set[str]:
        found = await self._pages("task.search", "tasks", {"state": state})
        return {str(t["id"]) for t in found if "id" in t}

    async def read_groups(self, groups: list[str]) -> dict[str, Backlog]:
        """Backlogs of several groups, with one pass over the pending and acquired tasks."""
        pending = await self.task_ids("pending")
        acquired = await self.task_ids("acquired")
        out: dict[str, Backlog] = {}
        for group in groups:
            ids = await self.group_promises(group)
            out[group] = Backlog(pending=len(ids & pending), acquired=len(ids & acquired))
        return out

    async def read(self, group: str) -> Backlog:
        """The backlog of one group."""
        return (await self.read_groups([group]))[group]
