"""The engine's reply release and the SQLite store's tables.

A reply (and its push messages) is released only once the change it answers
is committed; a read with nothing left to commit is answered at once. Stores
written by an older build (WITHOUT ROWID tables) still load and take writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from resonate_base import PROTOCOL_VERSION

from service.devserver.dispatch import Reply
from service.devserver.engine import Engine
from service.devserver.model import Outgoing
from service.devserver.store import Store


def envelope(kind: str, data: dict[str, object], corr: str = "c") -> dict[str, object]:
    return {"kind": kind, "head": {"corrId": corr, "version": PROTOCOL_VERSION}, "data": data}


def create(promise_id: str, **tags: str) -> dict[str, object]:
    return envelope("promise.create", {"id": promise_id, "timeoutAt": 2**62, "tags": tags})


def stored(path: Path, table: str) -> list[str]:
    """Ids in ``table`` of the store file at ``path`` (read after the engine closed it)."""
    with sqlite3.connect(path) as db:
        return [i for (i,) in db.execute(f"SELECT id FROM {table} ORDER BY id")]


async def test_submit__a_write_is_answered_only_after_its_commit(tmp_path: Path) -> None:
    delivered: list[list[Outgoing]] = []
    engine = Engine(data=str(tmp_path / "s.db"), deliver=delivered.append)
    await engine.start()
    assert engine.store is not None
    commits: list[int] = []
    write = engine.store.write

    def counting(batch: object) -> None:
        write(batch)  # type: ignore[arg-type]
        commits.append(len(commits))

    engine.store.write = counting  # type: ignore[method-assign]
    replies: list[Reply] = []
    failures: list[Exception] = []
    target = "poll://any@workers"
    engine.submit(create("p1", **{"resonate:target": target}), replies.append, failures.append)
    assert replies == [], "answered before the commit"
    assert not any(o.address == target for batch in delivered for o in batch), "sent early"
    await asyncio.sleep(0)  # the group commit runs on the next loop turn
    assert commits == [0]
    assert [r.status for r in replies] == [200]
    assert [o.address for o in delivered[-1]] == [target], "the execute went out with the reply"
    assert failures == []
    # A read with nothing left to commit: answered before submit returns.
    engine.submit(envelope("promise.get", {"id": "p1"}), replies.append, failures.append)
    assert [r.status for r in replies] == [200, 200]
    assert commits == [0]
    await engine.stop()
    assert stored(tmp_path / "s.db", "promises") == ["p1"]
    assert stored(tmp_path / "s.db", "tasks") == ["p1"]


async def test_submit__a_read_behind_an_uncommitted_write_waits_for_that_commit(
    tmp_path: Path,
) -> None:
    engine = Engine(data=str(tmp_path / "s.db"), deliver=lambda _: None)
    await engine.start()
    order: list[str] = []
    engine.submit(create("p1"), lambda r: order.append("create"), pytest.fail)
    engine.submit(envelope("promise.get", {"id": "p1"}), lambda r: order.append("get"), pytest.fail)
    assert order == [], "the read saw a change that is not durable yet"
    await asyncio.sleep(0)
    assert order == ["create", "get"]
    await engine.stop()


async def test_submit__a_failed_commit_fails_every_request_of_the_batch(tmp_path: Path) -> None:
    delivered: list[list[Outgoing]] = []
    engine = Engine(data=str(tmp_path / "s.db"), deliver=delivered.append)
    await engine.start()
    assert engine.store is not None
    write = engine.store.write

    def broken(batch: object) -> None:
        raise OSError("disk gone")

    engine.store.write = broken  # type: ignore[method-assign]
    replies: list[Reply] = []
    failures: list[Exception] = []
    before = len(delivered)
    engine.submit(
        create("a", **{"resonate:target": "poll://any@w"}), replies.append, failures.append
    )
    engine.submit(create("b"), replies.append, failures.append)
    await asyncio.sleep(0)
    assert replies == []
    assert [str(e) for e in failures] == ["disk gone", "disk gone"]
    assert len(delivered) == before, "no message of an unacknowledged change goes out"
    engine.store.write = write  # type: ignore[method-assign]
    await engine.stop()


async def test_request__the_awaitable_form_returns_the_reply(tmp_path: Path) -> None:
    engine = Engine(data=str(tmp_path / "s.db"), deliver=lambda _: None)
    await engine.start()
    reply = await engine.request(create("p1"))
    assert (reply.kind, reply.status) == ("promise.create", 200)
    await engine.stop()


def test_store__new_files_use_rowid_tables(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.db"))
    store.write({"promises": [("p", {"id": "p"})], "tasks": [], "schedules": []})
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        schema = [sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE type='table'")]
    assert len(schema) == 3
    assert not any("WITHOUT ROWID" in sql for sql in schema)


def test_store__a_file_with_without_rowid_tables_still_loads_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for table in ("promises", "tasks", "schedules"):
            db.execute(
                f"CREATE TABLE {table} (id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID"
            )
        db.execute("INSERT INTO promises VALUES ('a', '{\"id\":\"a\"}')")
    store = Store(str(path))
    assert store.load() == (['{"id":"a"}'], [], [])
    store.write({"promises": [("a", {"id": "a", "v": 2}), ("b", {"id": "b"})], "tasks": []})
    store.write({"promises": [("b", None)]})
    store.close()
    store = Store(str(path))
    assert store.load() == (['{"id":"a","v":2}'], [], [])
    store.close()
