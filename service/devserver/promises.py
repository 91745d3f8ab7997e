"""The ``promise.*`` request kinds, applied to a :class:`~service.devserver.state.ServerState`.

Each operation takes (state, now, decoded request, corrId) and returns
(status, reply data), or raises :class:`~service.devserver.protocol.Fail`.
``validate_create`` holds the official server's id and tag rules, which
``task.create`` and ``task.fence`` apply to the promise they create too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.connector.sdk import origin_of
from service.devserver.addresses import is_routable
from service.devserver.decoding import Fail
from service.devserver.protocol import (
    JsonObject,
    PromiseCreate,
    PromiseGet,
    PromiseRegisterCallback,
    PromiseRegisterListener,
    PromiseSearch,
    PromiseSettle,
    value_record,
)
from service.devserver.search import page

if TYPE_CHECKING:
    from service.devserver.dispatch import Result
    from service.devserver.model import Promise
    from service.devserver.state import ServerState


def validate_create(c: PromiseCreate) -> None:
    """The official server's rules on a new promise's id and tags (400 naming each broken one)."""
    tags = c.tags or {}
    pid = c.id
    problems: list[str] = []
    origin = tags.get("resonate:origin")
    if origin is not None:
        if ":" in origin:
            problems.append("resonate:origin must not contain ':'")
        elif pid != origin and not pid.startswith(origin + ":"):
            problems.append("Promise ID must be prefixed by resonate:origin")
    for tag in ("resonate:branch", "resonate:parent"):
        ancestor = tags.get(tag)
        if ancestor is not None:
            sep = "." if ":" in ancestor else ":"
            if pid != ancestor and not pid.startswith(ancestor + sep):
                problems.append(f"Promise ID must be prefixed by {tag}")
    if "." in tags.get("resonate:prefix", ""):
        problems.append("resonate:prefix must not contain '.'")
    delay = tags.get("resonate:delay")
    if delay is not None:
        if not delay.isdigit():
            problems.append("resonate:delay must be a non-negative integer")
        elif int(delay) >= c.timeout_at:
            problems.append("resonate:delay must be less than timeoutAt")
        if "resonate:target" not in tags:
            problems.append("resonate:delay requires a resonate:target tag")
    target = tags.get("resonate:target")
    if target is not None and not is_routable(target):
        problems.append("Invalid resonate:target address")
    if problems:
        raise Fail(400, "; ".join(problems))


def get(s: ServerState, now: int, r: PromiseGet, corr: str) -> Result:
    s.try_timeout(now, r.id)
    return 200, {"promise": s.promise(r.id).record()}


def create(s: ServerState, now: int, r: PromiseCreate, corr: str) -> Result:
    """Create the promise, or return the existing one with that id unchanged."""
    validate_create(r)
    s.try_timeout(now, r.id)
    existing = s.promises.get(r.id)
    if existing is not None:
        return 200, {"promise": existing.record()}
    p, _ = s.create_promise(now, r)
    return 200, {"promise": p.record()}


def settle_promise(s: ServerState, now: int, r: PromiseSettle) -> Promise:
    """Settle ``r.id`` if still pending; a settled promise is returned unchanged."""
    s.try_timeout(now, r.id)
    p = s.promise(r.id)
    if p.state == "pending":
        s.settle(now, p, r.state, value_record(r.value), now)
    return p


def settle(s: ServerState, now: int, r: PromiseSettle, corr: str) -> Result:
    return 200, {"promise": settle_promise(s, now, r).record()}


def register_listener(s: ServerState, now: int, r: PromiseRegisterListener, corr: str) -> Result:
    if not is_routable(r.address):
        raise Fail(400, "Invalid listener address")
    s.try_timeout(now, r.awaited)
    p = s.promise(r.awaited, "Awaited promise not found")
    if p.state == "pending":
        s.add_listener(r.awaited, r.address)
    return 200, {"promise": p.record()}


def register_callback(s: ServerState, now: int, r: PromiseRegisterCallback, corr: str) -> Result:
    awaited, awaiter = r.awaited, r.awaiter
    if awaited == awaiter:
        raise Fail(400, "Awaited and awaiter must be different promises")
    if origin_of(awaited) != origin_of(awaiter):
        raise Fail(400, "Awaiter and awaited must belong to the same origin")
    s.try_timeout(now, awaited)
    s.try_timeout(now, awaiter)
    p = s.promise(awaited, "Awaited promise not found")
    waiter = s.promises.get(awaiter)
    if waiter is None:
        raise Fail(422, "Awaiter promise not found")
    if waiter.target is None:
        raise Fail(422, "Awaiter promise has no resonate:target tag")
    task = s.tasks.get(awaiter)
    if p.state == "pending" and waiter.state == "pending":
        s.add_callback(awaited, awaiter)
    elif p.state != "pending" and task is not None and task.state == "suspended":
        # Settled already: a suspended awaiter resumes at once.
        s.resume(now, task)
    return 200, {"promise": p.record()}


def search(s: ServerState, now: int, r: PromiseSearch, corr: str) -> Result:
    """Promises in ``state`` (any if None) carrying every tag in ``tags``, by id."""
    ids = s.promises_by_state[r.state] if r.state is not None else s.promise_ids
    tags = r.tags or {}

    def keep(i: str) -> bool:
        ptags = s.promises[i].tags
        return all(ptags.get(k) == v for k, v in tags.items())

    found, cursor = page(ids, keep, r.limit, r.cursor)
    out: JsonObject = {"promises": [s.promises[i].record() for i in found]}
    if cursor is not None:
        out["cursor"] = cursor
    return 200, out
