"""Routing push messages to the processes connected over ``GET /poll/{group}/{pid}``.

* ``poll://any@{group}`` goes to exactly one connected member of the group
  (round robin; the named pid first if the address carries one);
* ``poll://uni@{group}/{pid}`` goes to that process only.

Unlike the official server, which drops a message nobody is connected for
and relies on a 30 s resend, a message with no recipient is kept: per group
for anycast (one ``execute`` per task, the newest), per process for unicast
(bounded), and delivered when a member connects. A message queued on a
connection that closes before it was written is routed again.

Each connection also remembers the ``execute`` messages it has written
(:attr:`Connection.written`), so that when the stream closes the server can
send again, at once, those whose task nobody acquired
(:meth:`~service.devserver.state.ServerState.resend_unacquired`) instead of
leaving them to the retry timer.

**Flow control.** A stream opened with the ``Resonate-Patterns-Capacity: N``
request header (:data:`CAPACITY_HEADER`; workers send their
``max_concurrent_tasks``) is offered an anycast ``execute`` only while its
process's load -- leases it holds plus ``execute`` messages sent to this
stream whose task is still unacquired -- is below ``N``; a capacity of 0 takes
the stream out of the rotation (a draining worker). When no member of the
group can take one, the message is held (as for a group with nobody
connected) and offered as soon as a member's load drops (:meth:`Hub.pump`,
after every applied change). A stream without the header is offered work
as before (round robin, no limit). The official server ignores the header.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.devserver.addresses import parse_address
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import Counter

    from service.devserver.metrics import ServerMetrics
    from service.devserver.model import Outgoing
    from service.devserver.protocol import JsonObject

#: Most messages kept for one disconnected process (oldest dropped first).
MAX_HELD_PER_PID = 1000
#: Most disconnected processes messages are kept for.
MAX_HELD_PIDS = 1000
#: Written ``execute`` messages a stream remembers before it forgets those
#: already acquired (the threshold then doubles with what is left, so the
#: pruning costs O(1) per message).
WRITTEN_PRUNE_AT = 256
#: Request header on ``GET /poll/{group}/{pid}`` carrying how many tasks the
#: process can run at once (its ``max_concurrent_tasks``; 0: send none).
CAPACITY_HEADER = "Resonate-Patterns-Capacity"

_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    """One open message stream of one process."""

    group: str
    pid: str
    queue: asyncio.Queue[JsonObject] = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=lambda: next(_ids))
    #: task id -> version of each ``execute`` written to this stream whose task
    #: may not have been acquired yet (pruned as they are).
    written: dict[str, int] = field(default_factory=dict)
    #: Tasks the process can run at once (None: no limit, no flow control).
    capacity: int | None = None
    #: task id -> version of each ``execute`` offered to this stream (queued or
    #: written) that may still be unacquired; flow-controlled streams only.
    offered: dict[str, int] = field(default_factory=dict)
    _prune_at: int = WRITTEN_PRUNE_AT

    def wrote(self, message: JsonObject, unacquired: Callable[[str, int], bool]) -> None:
        """Remember that ``message`` went out on this stream, if it is an ``execute``.

        ``unacquired(task_id, version)`` tells which remembered messages still
        matter; it is asked only when the record grows past a threshold.
        """
        ref = execute_ref(message)
        if ref is None:
            return
        self.written[ref[0]] = ref[1]
        if len(self.written) >= self._prune_at:
            self.written = {t: v for t, v in self.written.items() if unacquired(t, v)}
            self._prune_at = max(WRITTEN_PRUNE_AT, 2 * len(self.written))


def _message_kind(message: JsonObject) -> str:
    kind = message.get("kind")
    return kind if isinstance(kind, str) else "unknown"


def _task_id(message: JsonObject) -> str | None:
    ref = execute_ref(message)
    return ref[0] if ref is not None else None


def execute_ref(message: JsonObject) -> tuple[str, int] | None:
    """(task id, version) of an ``execute`` message; None for any other message."""
    if message.get("kind") != "execute":
        return None
    data = message.get("data")
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, dict):
        return None
    tid, version = task.get("id"), task.get("version")
    if not isinstance(tid, str) or isinstance(version, bool) or not isinstance(version, int):
        return None
    return tid, version


class Hub:
    """Connected processes by group, and the messages waiting for them."""

    def __init__(
        self,
        metrics: ServerMetrics | None = None,
        *,
        leased: Callable[[str], int] | None = None,
        unacquired: Callable[[str, int], bool] | None = None,
    ) -> None:
        #: How many leases a pid holds, and whether an ``execute`` (task id,
        #: version) still awaits its acquire: the state's view, for flow control.
        self.leased: Callable[[str], int] = leased or (lambda _pid: 0)
        self.unacquired: Callable[[str, int], bool] = unacquired or (lambda _t, _v: True)
        self._groups: dict[str, list[Connection]] = {}
        self._turn: dict[str, int] = {}
        #: group -> held anycast messages (execute keyed by task id, others by a counter).
        self._held_any: dict[str, OrderedDict[str, JsonObject]] = {}
        #: (group, pid) -> held unicast messages.
        self._held_uni: OrderedDict[tuple[str, str], deque[JsonObject]] = OrderedDict()
        self._metrics = metrics
        #: (message kind, outcome) -> its counter child, resolved once.
        self._counters: dict[tuple[str, str], Counter] = {}
        self._log = get_logger("service.devserver.hub")

    def connected(self) -> dict[str, int]:
        """Number of open streams per group."""
        return {g: len(c) for g, c in self._groups.items() if c}

    def members(self, group: str) -> list[Connection]:
        return list(self._groups.get(group, ()))

    def has_pid(self, pid: str) -> bool:
        return any(c.pid == pid for conns in self._groups.values() for c in conns)

    def takes_work(self, pid: str) -> bool:
        """Whether ``pid`` has an open stream that may be offered an ``execute`` (capacity > 0)."""
        return any(
            c.pid == pid and c.capacity != 0 for conns in self._groups.values() for c in conns
        )

    def _count(self, message: JsonObject, outcome: str) -> None:
        if self._metrics is not None:
            key = (_message_kind(message), outcome)
            counter = self._counters.get(key)
            if counter is None:  # resolving label values costs more than the increment
                counter = self._counters[key] = self._metrics.messages.labels(*key)
            counter.inc()

    def connect(self, group: str, pid: str, capacity: int | None = None) -> Connection:
        """Register a stream and hand it whatever was held for it (within its capacity)."""
        group = group.lower()
        conn = Connection(group, pid, capacity=capacity)
        self._groups.setdefault(group, []).append(conn)
        for message in self._held_uni.pop((group, pid), deque()):
            self._put(conn, message)
        held = self._held_any.pop(group, None)
        if held:
            for message in held.values():
                self._route_any(group, None, message)
        return conn

    def load(self, conn: Connection) -> int:
        """Leases ``conn``'s process holds plus executes offered to ``conn`` still unacquired."""
        conn.offered = {t: v for t, v in conn.offered.items() if self.unacquired(t, v)}
        return self.leased(conn.pid) + len(conn.offered)

    def _has_room(self, conn: Connection) -> bool:
        return conn.capacity is None or self.load(conn) < conn.capacity

    def pump(self) -> None:
        """Offer held anycast executes to members that have room again.

        Held messages whose task was acquired (or moved on to a newer version)
        meanwhile are dropped: their ``execute`` is stale.
        """
        for group in [g for g in self._held_any if g in self._groups]:
            held = self._held_any[group]
            while held:
                key, message = next(iter(held.items()))
                ref = execute_ref(message)
                if ref is not None and not self.unacquired(*ref):
                    del held[key]
                    continue
                conn = self._pick(group, None, message)
                if conn is None:
                    break
                del held[key]
                self._put(conn, message)
            if not held:
                del self._held_any[group]

    def disconnect(self, conn: Connection) -> None:
        """Remove a stream; route again anything it had not written yet."""
        conns = self._groups.get(conn.group, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self._groups.pop(conn.group, None)
        leftover: list[JsonObject] = []
        while not conn.queue.empty():
            leftover.append(conn.queue.get_nowait())
        for message in leftover:
            if message.get("kind") == "execute":
                self._route_any(conn.group, None, message)
            else:
                self._hold_uni(conn.group, conn.pid, message)

    def deliver(self, outbox: list[Outgoing]) -> None:
        """Route each message to its recipient, or keep it until one connects (or has room).

        Called after every applied change, with or without messages: a
        change may have freed room on a flow-controlled stream.
        """
        if self._held_any:
            self.pump()
        for out in outbox:
            address = parse_address(out.address)
            if address is None:
                self._count(out.message, "unroutable")
                self._log.warning("message_unroutable", address=out.address)
            elif address.cast == "any":
                self._route_any(address.group, address.pid, out.message)
            else:
                assert address.pid is not None
                self._route_uni(address.group, address.pid, out.message)

    def _put(self, conn: Connection, message: JsonObject) -> None:
        conn.queue.put_nowait(message)
        if conn.capacity is not None:
            ref = execute_ref(message)
            if ref is not None:
                conn.offered[ref[0]] = ref[1]
        self._count(message, "delivered")

    def _pick(self, group: str, pid: str | None, message: JsonObject) -> Connection | None:
        """The member an anycast message goes to: ``pid``'s stream if named, else round robin.

        An ``execute`` skips streams without room (flow control); None when
        no member can take it.
        """
        conns = self._groups.get(group)
        if not conns:
            return None
        limited = message.get("kind") == "execute"
        if pid is not None:
            for conn in conns:
                if conn.pid == pid and (not limited or self._has_room(conn)):
                    return conn
        start = self._turn.get(group, 0)
        for step in range(len(conns)):
            turn = (start + step) % len(conns)
            conn = conns[turn]
            if not limited or self._has_room(conn):
                self._turn[group] = turn + 1
                return conn
        return None

    def _route_any(self, group: str, pid: str | None, message: JsonObject) -> None:
        conn = self._pick(group, pid, message)
        if conn is None:
            held = self._held_any.setdefault(group, OrderedDict())
            key = _task_id(message) or f"#{next(_ids)}"
            held.pop(key, None)
            held[key] = message
            self._count(message, "held")
            return
        self._put(conn, message)

    def _route_uni(self, group: str, pid: str, message: JsonObject) -> None:
        for conn in self._groups.get(group, ()):
            if conn.pid == pid:
                self._put(conn, message)
                return
        self._hold_uni(group, pid, message)

    def _hold_uni(self, group: str, pid: str, message: JsonObject) -> None:
        key = (group, pid)
        held = self._held_uni.setdefault(key, deque(maxlen=MAX_HELD_PER_PID))
        self._held_uni.move_to_end(key)
        held.append(message)
        self._count(message, "held")
        while len(self._held_uni) > MAX_HELD_PIDS:
            _, dropped = self._held_uni.popitem(last=False)
            for lost in dropped:
                self._count(lost, "dropped")
