"""SQLite persistence for the local server's state.

Rows are stored as JSON documents keyed by id (promises with their callbacks
and listeners, tasks with their lease and retry times, schedules). The
server writes every row a batch of requests changed in one transaction and
releases those requests' replies only after the commit returns, so an
acknowledged change survives ``kill -9`` of the server. WAL mode with
``synchronous=NORMAL`` makes a commit durable against a process crash;
``fsync=True`` (``--fsync``) uses ``synchronous=FULL`` to also survive a
power loss, at the cost of an fsync per batch.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import msgspec

from service.errors import StoreBusyError

# Rowid tables, not WITHOUT ROWID: a WITHOUT ROWID row lives in an index
# b-tree, which keeps at most ~1000 bytes of a row on its page (4 KiB pages)
# and the rest on overflow pages, freed and reallocated on every update. A
# promise deep in a lineage has ids of hundreds of characters in its id,
# branch and parent tags, so its document is 1-2 KB, and the updates that
# dominate (acquire, suspend, settle, fulfill) paid for overflow pages: a
# replay of a factorial(300) run's commits costs 25 µs of CPU per commit
# WITHOUT ROWID and 18 µs with rowid tables, where a row of up to ~4 KB stays
# on its leaf page and an update never touches the id index. A store created
# by an older build keeps its WITHOUT ROWID tables; both read and write alike.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS promises (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""

#: WAL pages between checkpoints (SQLite's default is 1000). Every small commit
#: rewrites the same few b-tree pages; a checkpoint copies only each page's
#: latest version, so checkpointing less often copies far fewer pages.
_WAL_AUTOCHECKPOINT_PAGES = 16_384

#: A row: a struct of :mod:`service.devserver.rows`, or a plain JSON object.
type Row = msgspec.Struct | Mapping[str, object]
#: One batch: (table, [(id, row or None for a delete), ...]) per table.
type Batch = dict[str, list[tuple[str, Row | None]]]

MEMORY = ":memory:"

_encode = msgspec.json.Encoder().encode
_TABLES = ("promises", "tasks", "schedules")
#: The statements per table, built once (sqlite3 caches the prepared form by text).
_UPSERT = {
    t: f"INSERT INTO {t} (id, doc) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc"
    for t in _TABLES
}
_DELETE = {t: f"DELETE FROM {t} WHERE id = ?" for t in _TABLES}


class Store:
    """A SQLite file holding the server's rows; used from one thread at a time.

    One process owns a store at a time (an exclusive lock on ``PATH.lock``):
    the state lives in memory and is only written through, so two owners
    would silently overwrite each other.
    """

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self._lock: IO[str] | None = None
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(f"{path}.lock", "a+")  # noqa: SIM115 - held while open
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise StoreBusyError(path) from None
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(str(os.getpid()))
            self._lock.flush()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # The flock above already makes this process the only user, so SQLite
        # can keep its locks and WAL index in process memory instead of taking
        # file locks and touching shared memory on every transaction.
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)

    def load(self) -> tuple[list[str], list[str], list[str]]:
        """Every stored promise, task and schedule document (JSON, decoded by ``rows``)."""

        def rows(table: str) -> list[str]:
            cur = self._db.execute(f"SELECT doc FROM {table} ORDER BY id")
            return [doc for (doc,) in cur]

        return rows("promises"), rows("tasks"), rows("schedules")

    def write(self, batch: Batch) -> None:
        """Apply one batch of upserts and deletes in a single transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            for table, changes in batch.items():
                if not changes:
                    continue
                upserts = [(i, _encode(r).decode()) for i, r in changes if r is not None]
                if upserts:
                    db.executemany(_UPSERT[table], upserts)
                if len(upserts) < len(changes):
                    db.executemany(_DELETE[table], [(i,) for i, r in changes if r is None])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
