"""The ``schedule.*`` request kinds, applied to a :class:`~service.devserver.state.ServerState`.

Schedules are stored, read, searched and deleted, but never fired (no
pattern uses them; ``docs/devserver-protocol.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sortedcontainers import SortedSet

from service.devserver.addresses import is_routable
from service.devserver.decoding import Fail
from service.devserver.model import Schedule
from service.devserver.protocol import (
    JsonObject,
    ScheduleCreate,
    ScheduleRef,
    ScheduleSearch,
    value_record,
)
from service.devserver.search import page

if TYPE_CHECKING:
    from service.devserver.dispatch import Result
    from service.devserver.state import ServerState


def create(s: ServerState, now: int, r: ScheduleCreate, corr: str) -> Result:
    """Store the schedule, or return the existing one with that id unchanged."""
    tags = r.promise_tags or {}
    target = tags.get("resonate:target")
    if target is None:
        raise Fail(400, "promiseTags must include a resonate:target tag")
    if not is_routable(target):
        raise Fail(400, "Invalid resonate:target address")
    existing = s.schedules.get(r.id)
    if existing is not None:
        return 200, {"schedule": existing.record()}
    schedule = Schedule(
        r.id, r.cron, r.promise_id, r.promise_timeout, value_record(r.promise_param), tags, now, now
    )
    s.put_schedule(schedule)
    return 200, {"schedule": schedule.record()}


def get(s: ServerState, now: int, r: ScheduleRef, corr: str) -> Result:
    schedule = s.schedules.get(r.id)
    if schedule is None:
        raise Fail(404, "Schedule not found")
    return 200, {"schedule": schedule.record()}


def delete(s: ServerState, now: int, r: ScheduleRef, corr: str) -> Result:
    if not s.delete_schedule(r.id):
        raise Fail(404, "Schedule not found")
    return 200, {}


def search(s: ServerState, now: int, r: ScheduleSearch, corr: str) -> Result:
    """Schedules whose ``promiseTags`` carry every tag in ``tags``, by id."""
    tags = r.tags or {}

    def keep(i: str) -> bool:
        stags = s.schedules[i].promise_tags
        return all(stags.get(k) == v for k, v in tags.items())

    found, cursor = page(SortedSet(s.schedules), keep, r.limit, r.cursor)
    out: JsonObject = {"schedules": [s.schedules[i].record() for i in found]}
    if cursor is not None:
        out["cursor"] = cursor
    return 200, out
