"""Flow control between a worker and the local server: nobody hoards work.

The worker side: :class:`~service.connector.sdk.ExecutionSlots` counts what
the SDK has taken on and :class:`~service.connector.drain.DrainGate` passes
an ``execute`` on only while there is room. The server side: the hub offers
an ``execute`` to a stream only while its process has room under the
capacity the stream announced, and holds it otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from service.connector.drain import DrainGate
from service.connector.sdk import ExecutionSlots
from service.connector.sse import EventStream
from service.devserver.hub import Hub
from service.devserver.model import Outgoing
from service.devserver.server import DevServer


def _execute(task_id: str, version: int = 1) -> dict[str, Any]:
    return {"kind": "execute", "head": {}, "data": {"task": {"id": task_id, "version": version}}}


def _queued(conn: Any) -> list[str]:
    out = []
    while not conn.queue.empty():
        out.append(conn.queue.get_nowait()["data"]["task"]["id"])
    return out


class _World:
    """Leases and acquires as the server's state would report them."""

    def __init__(self) -> None:
        self.leases: dict[str, set[str]] = {}
        self.acquired: set[tuple[str, int]] = set()

    def leased(self, pid: str) -> int:
        return len(self.leases.get(pid, ()))

    def unacquired(self, task_id: str, version: int) -> bool:
        return (task_id, version) not in self.acquired

    def acquire(self, pid: str, task_id: str) -> None:
        self.acquired.add((task_id, 1))
        self.leases.setdefault(pid, set()).add(task_id)

    def finish(self, pid: str, task_id: str) -> None:
        self.leases[pid].discard(task_id)


def _hub(world: _World) -> Hub:
    return Hub(leased=world.leased, unacquired=world.unacquired)


def _send(hub: Hub, *task_ids: str) -> None:
    hub.deliver([Outgoing("poll://any@workers", _execute(t)) for t in task_ids])


def test_hub__stream_with_capacity__offered_no_more_than_its_room__rest_held() -> None:
    world = _World()
    hub = _hub(world)
    busy = hub.connect("workers", "w1", capacity=2)
    _send(hub, "a", "b", "c", "d")
    assert _queued(busy) == ["a", "b"]
    # A worker joining later gets what was held, at once.
    fresh = hub.connect("workers", "w2", capacity=2)
    assert _queued(fresh) == ["c", "d"]


def test_hub__task_finishes__held_work_offered_to_the_stream_with_room() -> None:
    world = _World()
    hub = _hub(world)
    conn = hub.connect("workers", "w1", capacity=1)
    _send(hub, "a", "b")
    assert _queued(conn) == ["a"]
    world.acquire("w1", "a")
    hub.deliver([])
    assert _queued(conn) == [], "still running a: no room"
    world.finish("w1", "a")
    hub.deliver([])
    assert _queued(conn) == ["b"]


def test_hub__capacity_zero__leaves_the_rotation() -> None:
    world = _World()
    hub = _hub(world)
    draining = hub.connect("workers", "w1", capacity=0)
    other = hub.connect("workers", "w2", capacity=10)
    _send(hub, "a", "b", "c")
    assert _queued(draining) == []
    assert _queued(other) == ["a", "b", "c"]


def test_hub__stream_without_capacity__round_robin_unlimited_as_before() -> None:
    hub = Hub()
    one, two = hub.connect("workers", "w1"), hub.connect("workers", "w2")
    _send(hub, "a", "b", "c", "d")
    assert (_queued(one), _queued(two)) == (["a", "c"], ["b", "d"])


def test_hub__held_execute_acquired_meanwhile__dropped_not_offered() -> None:
    world = _World()
    hub = _hub(world)
    conn = hub.connect("workers", "w1", capacity=1)
    _send(hub, "a", "b")
    assert _queued(conn) == ["a"]
    world.acquired.add(("b", 1))  # acquired through a copy sent elsewhere
    world.acquire("w1", "a")
    world.finish("w1", "a")
    hub.deliver([])
    assert _queued(conn) == []


class _Inner:
    """A message source that records its subscriber."""

    def __init__(self) -> None:
        self.callback: Callable[[str], None] | None = None

    def unicast(self) -> str:
        return "poll://uni@workers/w1"

    def resolve_target(self, target: str) -> str:
        return target

    def recv(self, callback: Callable[[str], None]) -> None:
        self.callback = callback

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class _Sender:
    """Records hand-backs (acquire, then release)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def task_acquire(self, task_id: str, version: int, pid: str, ttl: int) -> Any:
        self.calls.append(("acquire", task_id))

        class _Acquired:
            class task:  # mirrors the SDK reply's shape
                version = 2

        return _Acquired()

    async def task_release(self, task_id: str, version: int) -> None:
        self.calls.append(("release", task_id))


class _Stream:
    def __init__(self, flow_controlled: bool) -> None:
        self.flow_controlled = flow_controlled
        self.capacity: int | None = None

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity


def _gate(capacity: int, *, flow_controlled: bool) -> tuple[DrainGate, list[str], _Sender, _Stream]:
    inner, sender, stream = _Inner(), _Sender(), _Stream(flow_controlled)
    gate = DrainGate(
        inner,  # type: ignore[arg-type]
        sender,  # type: ignore[arg-type]
        "w1",
        60_000,
        slots=ExecutionSlots(capacity),
        stream=stream,  # type: ignore[arg-type]
    )
    passed: list[str] = []
    gate.recv(passed.append)
    return gate, passed, sender, stream


def _push(gate: DrainGate, message: dict[str, Any]) -> None:
    callback = gate.inner.recv.__self__.callback  # type: ignore[attr-defined]
    callback(json.dumps(message))


async def test_gate__saturated_no_flow_control__held_once_per_task__passed_as_slots_free() -> None:
    # The official server cannot be told to hold work: a dropped execute would
    # wait for its retry timer (30 s by default), so the gate holds it. That
    # server re-sends every pending task each retry timeout: a re-send of a
    # task already held is dropped, not queued again.
    gate, passed, sender, _ = _gate(2, flow_controlled=False)
    slots = gate.slots
    assert slots is not None
    for t in ("a", "b", "c", "d", "c"):
        _push(gate, _execute(t))
    _push(gate, _execute("d", version=2))  # a newer version replaces the held one
    _push(gate, {"kind": "unblock", "head": {}, "data": {"promise": {"id": "x"}}})
    assert [_task_or_kind(m) for m in passed] == ["a", "b", "unblock"]
    assert (gate.held, gate.duplicates, gate.refused) == (2, 1, 0)

    await slots.acquire()  # the SDK's executions of "a" and "b" start
    await slots.acquire()
    slots.release()  # "a" finishes: the oldest held passes on
    assert [_task_or_kind(m) for m in passed][3:] == ["c"]
    assert slots.busy == 2
    await slots.acquire()
    slots.release()
    assert [json.loads(m)["data"]["task"] for m in passed[4:]] == [{"id": "d", "version": 2}]
    assert gate.held == 0
    await asyncio.sleep(0.1)
    assert sender.calls == []


async def test_gate__draining_without_flow_control__held_work_handed_back_at_once() -> None:
    gate, passed, sender, _ = _gate(1, flow_controlled=False)
    for t in ("a", "b", "c"):
        _push(gate, _execute(t))
    assert gate.held == 2
    gate.start_draining()
    assert gate.held == 0
    await asyncio.sleep(0.2)
    assert sorted(sender.calls) == [
        ("acquire", "b"),
        ("acquire", "c"),
        ("release", "b"),
        ("release", "c"),
    ]
    assert len(passed) == 1


def _task_or_kind(raw: str) -> str:
    msg = json.loads(raw)
    return str(msg["data"]["task"]["id"]) if msg["kind"] == "execute" else str(msg["kind"])


async def test_gate__saturated_against_flow_controlling_server__hands_back() -> None:
    gate, passed, sender, _ = _gate(1, flow_controlled=True)
    _push(gate, _execute("a"))
    _push(gate, _execute("b"))
    assert len(passed) == 1
    await asyncio.sleep(0.1)
    assert sender.calls == [("acquire", "b"), ("release", "b")]


async def test_gate__slot_frees__next_execute_passes() -> None:
    gate, passed, _, _ = _gate(1, flow_controlled=True)
    slots = gate.slots
    assert slots is not None
    _push(gate, _execute("a"))
    async with slots:  # the SDK's execution of "a" takes its permit
        assert slots.busy == 1
        _push(gate, _execute("b"))
    assert slots.busy == 0
    _push(gate, _execute("c"))
    assert [json.loads(m)["data"]["task"]["id"] for m in passed] == ["a", "c"]


async def test_gate__draining__leaves_rotation_and_hands_everything_back() -> None:
    gate, passed, sender, stream = _gate(8, flow_controlled=True)
    gate.start_draining()
    assert stream.capacity == 0
    _push(gate, _execute("a"))
    assert passed == []
    assert gate.handing_back == 1
    await gate.stop()  # waits for the hand-back
    assert gate.handing_back == 0
    assert sender.calls == [("acquire", "a"), ("release", "a")]


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_stream__capacity_announced__server_honours_it__zero_leaves_rotation() -> None:
    server = DevServer()
    port = await server.start("127.0.0.1", 0)
    stream = EventStream(f"http://127.0.0.1:{port}", pid="w1", group="workers", capacity=3)
    await stream.start()
    try:
        await _until(lambda: stream.connected)
        assert stream.flow_controlled
        [conn] = server.hub.members("workers")
        assert conn.capacity == 3
        stream.set_capacity(0)
        await _until(lambda: [c.capacity for c in server.hub.members("workers")] == [0])
        assert stream.connected
        assert not server.hub.takes_work("w1")
        assert server.pending_releases == frozenset(), "the process kept its leases"
    finally:
        await stream.stop()
        await server.stop()


async def test_stream__server_ignores_capacity__not_flow_controlled__no_reconnect() -> None:
    opened: list[str | None] = []
    done = asyncio.Event()

    async def poll(request: web.Request) -> web.StreamResponse:
        opened.append(request.headers.get("Resonate-Patterns-Capacity"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await done.wait()
        return resp

    app = web.Application()
    app.router.add_get("/poll/{group}/{pid}", poll)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stream = EventStream(f"http://127.0.0.1:{port}", pid="w1", group="workers", capacity=5)
    await stream.start()
    try:
        await _until(lambda: stream.connected)
        assert not stream.flow_controlled
        stream.set_capacity(0)
        await asyncio.sleep(0.3)
        assert opened == ["5"], "no reconnect for a server that would gain nothing"
    finally:
        done.set()
        await stream.stop()
        await runner.cleanup()
