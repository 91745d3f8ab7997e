"""One scan of the server for every group, shared by every reader (issue [10], point 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.operator.backlog import (
    EMPTY,
    Backlog,
    BacklogReadError,
    SharedScan,
    group_of,
    join_backlogs,
)


@pytest.mark.parametrize(
    ("target", "group"),
    [
        ("poll://any@workers", "workers"),
        ("poll://any@workers/3f9a", "workers"),
        ("poll://uni@workers/3f9a", None),  # one process, not the group's backlog
        ("poll://any@", None),
        ("http://any@workers", None),
        (None, None),
        (7, None),
    ],
)
def test_group_of__anycast_addresses_only(target: object, group: str | None) -> None:
    assert group_of(target) == group


def _promise(pid: str, target: Any = None) -> dict[str, Any]:
    tags = {} if target is None else {"resonate:target": target}
    return {"id": pid, "state": "pending", "tags": tags}


def test_join__counts_per_group__untargeted_and_suspended_left_out() -> None:
    promises = [
        _promise("a1", "poll://any@alpha"),
        _promise("a2", "poll://any@alpha"),
        _promise("a3", "poll://any@alpha"),  # task suspended: neither set
        _promise("b1", "poll://any@beta"),
        _promise("c1", "poll://any@gamma"),  # no task at all: not backlog
        _promise("run-child"),  # a ctx.run child: no target
        {"id": "odd", "tags": "not-a-dict"},
    ]
    pending = {"a1", "b1", "run-child"}
    acquired = {"a2"}
    assert join_backlogs(promises, pending, acquired) == {
        "alpha": Backlog(pending=1, acquired=1),
        "beta": Backlog(pending=1, acquired=0),
    }


class _Reader:
    """Counts scans; each takes a moment, so concurrent readers overlap."""

    url = "http://server"

    def __init__(self, results: list[dict[str, Backlog] | Exception]) -> None:
        self.results = results
        self.calls = 0

    async def scan(self) -> dict[str, Backlog]:
        self.calls += 1
        await asyncio.sleep(0.01)
        result = self.results[min(self.calls, len(self.results)) - 1]
        if isinstance(result, Exception):
            raise result
        return result

    async def close(self) -> None:
        pass


def _shared(reader: _Reader, max_age: float, clock: list[float]) -> SharedScan:
    return SharedScan(reader, max_age, clock=lambda: clock[0])  # type: ignore[arg-type]


async def test_shared_scan__many_groups_read_at_once__one_scan() -> None:
    reader = _Reader([{"alpha": Backlog(3, 1), "beta": Backlog(2, 0)}])
    clock = [0.0]
    shared = _shared(reader, 2.0, clock)
    got = await asyncio.gather(*(shared.read(g) for g in ("alpha", "beta", "gamma") * 5))
    assert got[:3] == [Backlog(3, 1), Backlog(2, 0), EMPTY]
    assert (reader.calls, shared.scans) == (1, 1)


async def test_shared_scan__reused_within_max_age__scans_again_after() -> None:
    reader = _Reader([{"alpha": Backlog(3, 0)}, {"alpha": Backlog(1, 0)}])
    clock = [100.0]
    shared = _shared(reader, 2.0, clock)
    assert await shared.read("alpha") == Backlog(3, 0)
    clock[0] = 101.9
    assert await shared.read("alpha") == Backlog(3, 0)
    clock[0] = 102.1
    assert await shared.read("alpha") == Backlog(1, 0)
    assert reader.calls == 2


async def test_shared_scan__failure_not_kept__next_read_scans_again() -> None:
    reader = _Reader([BacklogReadError("down"), {"alpha": Backlog(1, 0)}])
    shared = _shared(reader, 60.0, [0.0])
    with pytest.raises(BacklogReadError, match="down"):
        await shared.read("alpha")
    assert await shared.read("alpha") == Backlog(1, 0)
    assert reader.calls == 2


async def test_shared_scan__max_age_zero__every_read_scans() -> None:
    reader = _Reader([{"alpha": Backlog(1, 0)}])
    shared = _shared(reader, 0.0, [5.0])
    for _ in range(3):
        await shared.read("alpha")
    assert reader.calls == 3
