"""The drain gate: never take on work this process cannot start now.

Every ``execute`` pushed to a worker passes here before the SDK sees it.

* **Saturated** (as many executions running, waiting or about to start as
  ``max_concurrent_tasks``; :class:`~service.connector.sdk.ExecutionSlots`):
  the message is not passed on. resonate-sdk 0.8.1 would park it in memory
  as one more waiting execution per message, duplicates included, where no
  other worker can run it. Against a server that honours the worker's
  announced capacity (the local server, :attr:`EventStream.flow_controlled`)
  such a message is a race and is handed back so the server offers it to a
  member with room (or holds it until one has). Against any other server (the
  official v0.9.8) the gate holds it itself, once per task, and passes it on
  when a slot frees: that server cannot be told to hold work, and a dropped
  message would wait for its retry timer (30 s by default). That server re-sends
  every pending task's ``execute`` each ``tasks.retry_timeout`` to a random
  member of the group, so with the chart's 1 s a re-send reaches the workers
  that have room, and scaling up helps (``bench/scale_backlog.py``: 1 -> 4
  workers during 2,000 one-second steps, 3.1x on v0.9.8 at 1 s, 1.0x at the
  default 30 s); the re-sends that reach this worker again are dropped here
  instead of piling up as duplicate executions.
* **Draining** (SIGTERM): every ``execute`` is handed back, those held
  included, and the stream re-announces a capacity of 0 so a
  flow-controlling server stops sending (the worker leaves the rotation) and
  re-sends at once what it had written and nobody acquired. The process
  keeps its leases and finishes what it holds;
  :attr:`DrainGate.handing_back` lets the drain wait for the hand-backs to
  finish.

A hand-back is ``task.acquire`` then ``task.release`` (2 requests) through
the SDK's own ``Sender`` (``head.auth`` included): the release puts the task
back in the queue and the server dispatches it again at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from resonate.error import ServerError

from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from resonate.send import Sender

    from service.connector.sdk import ExecutionSlots, Source
    from service.connector.sse import EventStream

#: Pause before a hand-back, so a group that is draining as a whole does not spin.
HAND_BACK_DELAY_SECONDS = 0.05


def execute_task(raw: str) -> tuple[str, int] | None:
    """``(task id, version)`` of an ``execute`` message, None for anything else."""
    try:
        msg = json.loads(raw)
        if msg.get("kind") != "execute":
            return None
        task = msg["data"]["task"]
        return str(task["id"]), int(task.get("version", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class DrainGate:
    """A message source wrapper that passes on only the work this process can start.

    ``slots`` counts the executions taken on (None: no limit); ``stream`` is
    the event stream under ``inner`` (to re-announce the capacity), if any.
    """

    def __init__(
        self,
        inner: Source,
        sender: Sender,
        pid: str,
        ttl_ms: int,
        *,
        slots: ExecutionSlots | None = None,
        stream: EventStream | None = None,
    ) -> None:
        self.inner = inner
        self._sender = sender
        self._pid = pid
        self._ttl_ms = ttl_ms
        self._slots: ExecutionSlots | None = None
        #: The SDK's counted execution semaphore (None: no limit).
        self.slots = slots
        self._stream = stream
        #: ``execute`` messages held while saturated: task id -> (version, raw), oldest first.
        self._held: dict[str, tuple[int, str]] = {}
        self._callback: Callable[[str], None] | None = None
        self.draining = False
        #: ``execute`` messages refused because the process was saturated.
        self.refused = 0
        #: Re-sent ``execute`` messages of a task already held (dropped).
        self.duplicates = 0
        self._bounces: set[asyncio.Task[None]] = set()
        self._log = get_logger("service.drain")

    @property
    def slots(self) -> ExecutionSlots | None:
        return self._slots

    @slots.setter
    def slots(self, slots: ExecutionSlots | None) -> None:
        self._slots = slots
        if slots is not None:
            slots.on_free = self._pass_held

    @property
    def held(self) -> int:
        """``execute`` messages this gate holds until a slot frees."""
        return len(self._held)

    @property
    def handing_back(self) -> int:
        """Hand-backs still under way."""
        return len(self._bounces)

    def start_draining(self) -> None:
        """Take no more work: hand back every ``execute`` and leave the rotation."""
        self.draining = True
        if self._stream is not None:
            self._stream.set_capacity(0)
        held, self._held = self._held, {}
        for task_id, (version, _) in held.items():
            self._hand_back((task_id, version))

    def _saturated(self) -> bool:
        return self.slots is not None and self.slots.busy >= self.slots.capacity

    def _flow_controlled(self) -> bool:
        return self._stream is not None and self._stream.flow_controlled

    def _hand_back(self, task: tuple[str, int]) -> None:
        bounce = asyncio.create_task(self._bounce(*task))
        self._bounces.add(bounce)
        bounce.add_done_callback(self._bounces.discard)

    def unicast(self) -> str:
        return self.inner.unicast()

    def resolve_target(self, target: str) -> str:
        return self.inner.resolve_target(target)

    def _hold(self, task_id: str, version: int, raw: str) -> None:
        """Keep the newest ``execute`` of a task until a slot frees (a re-send replaces it)."""
        known = self._held.get(task_id)
        if known is None or version > known[0]:
            self._held[task_id] = (version, raw)
        else:
            self.duplicates += 1

    def _pass(self, raw: str) -> None:
        if self._slots is not None:
            self._slots.reserve()
        if self._callback is not None:
            self._callback(raw)

    def _pass_held(self) -> None:
        """A slot freed: pass on the oldest held messages while there is room."""
        while self._held and not self.draining and not self._saturated():
            task_id = next(iter(self._held))
            _, raw = self._held.pop(task_id)
            self._pass(raw)

    def recv(self, callback: Callable[[str], None]) -> None:
        self._callback = callback

        def gated(raw: str) -> None:
            task = execute_task(raw)
            if task is None:
                callback(raw)
            elif self.draining:
                self._hand_back(task)
            elif not self._saturated():
                self._pass(raw)
            elif self._flow_controlled():
                self.refused += 1
                self._hand_back(task)
            else:
                self._hold(*task, raw)

        self.inner.recv(gated)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        if self._bounces:  # a hand-back cut short would leave its task to the retry timer
            await asyncio.wait(set(self._bounces), timeout=5.0)
        await self.inner.stop()

    async def _bounce(self, task_id: str, version: int) -> None:
        """Give a task delivered during drain back to the group."""
        await asyncio.sleep(HAND_BACK_DELAY_SECONDS)
        try:
            acquired = await self._sender.task_acquire(task_id, version, self._pid, self._ttl_ms)
            await self._sender.task_release(task_id, acquired.task.version)
            self._log.info("task_handed_back", task_id=task_id)
        except ServerError as exc:  # 409: someone else has it already; nothing to hand back
            if exc.code != 409:
                self._log.warning("task_hand_back_failed", task_id=task_id, error=str(exc))
        except Exception as exc:  # the lease simply lapses; the server re-delivers
            self._log.warning("task_hand_back_failed", task_id=task_id, error=str(exc))
