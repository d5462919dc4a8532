"""The embedded default store: one SQLite file in WAL mode.

Why SQLite: one file, no server, transactional, and fast enough for a single
machine (``benchmarks/ingest.py``). Writers are serialised by a lock; the
server reads through the same connection.

The per-user index is *segmented*: its key starts with the log segment
(``offset >> SEGMENT_BITS``). A plain ``(user_id, offset)`` index takes one
random page write per event once it outgrows what a batch touches, and ingest
slowed from 100k to 25k events/s over the first million events; with the
segment first, inserts only touch the current segment's small, cache-resident
part of the index and the rate stays flat. A user's history is then read
newest segments first, until enough events are found; the segments that take no more
inserts are also copied into runs sorted by user (:mod:`freshrec.storage.runs`), read
in a few descents instead of one a segment.

``secure_delete`` is on so that deleting a user overwrites their rows in the
file instead of leaving the bytes on free pages.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from freshrec.domain import Event, ItemId, Offset, UserId
from freshrec.settings import StorageSettings
from freshrec.storage import runs
from freshrec.storage.base import AppendResult, Erasure, StoreBusy
from freshrec.storage.rows import EVENT_COLUMNS, TYPES, event_of, event_row
from freshrec.storage.sql import RECORD_ERASURE, SQLITE, SharedSQL

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE,
    segment INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL,
    context TEXT,
    ingested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_history ON events (segment, user_id, seq, item_id, type, value, ts);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    categories TEXT NOT NULL,
    attributes TEXT NOT NULL,
    vector BLOB,
    text_hash TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_text_hash ON items (text_hash);
CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (encoder, text_hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS published (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    renewed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_version (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO catalog_version (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS erasures (
    user_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    asked_at REAL NOT NULL
);
"""

SEGMENT_BITS = 17  # 131,072 offsets per segment
MAX_BOUND = 10_000
"""The most values bound to one statement (SQLite allows 32,766)."""
READER_CACHE_MB = 8  # page cache of each reading thread's connection (the OS caches the file too)


class SchemaError(RuntimeError):
    """The database file was written by an incompatible freshrec version."""


PREFETCH_CHUNK = 8 << 20
"""Bytes of the file per request to the kernel to read it ahead (:meth:`SQLiteStore.prefetch`)."""


def free_memory() -> int:
    """Bytes of memory nothing uses (the page cache not counted as free)."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class SQLiteStore(SharedSQL):
    """:class:`~freshrec.storage.base.Store` on a SQLite file (or ``:memory:``).

    Parameters
    ----------
    path
        Database file; its directory is created. ``":memory:"`` gives a private
        in-process store (tests, throwaway runs).
    settings
        The ``[storage]`` section (durability, lock timeout).
    """

    remote = False
    dialect = SQLITE

    def __init__(self, path: str | Path, settings: StorageSettings | None = None):
        settings = settings or StorageSettings()
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0
        self._busy_timeout_ms = int(settings.busy_timeout_ms)
        self._writer: int | None = None
        self._local = threading.local()
        self._readers_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] | None = None if self.path == ":memory:" else []
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {settings.synchronous.upper()}")
        conn.execute("PRAGMA secure_delete = ON")
        conn.create_function("exp", 1, math.exp, deterministic=True)  # not every build has it
        conn.execute(f"PRAGMA cache_size = {-1024 * int(settings.cache_mb)}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(settings.wal_autocheckpoint)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, 2, 3, SCHEMA_VERSION):
            raise SchemaError(f"{self.path} has schema version {version}; this freshrec reads version {SCHEMA_VERSION}")
        with self.transaction():
            if 0 < version < 3:
                log.info("%s: building the per-user index of schema version 3 (once)", self.path)
            # version 2 put the item id in the per-user index, version 3 the rest of what
            # a recommendation reads of a history: both come from the index alone;
            # version 4 adds the sorted runs of that index (:mod:`freshrec.storage.runs`)
            conn.execute("DROP INDEX IF EXISTS events_user")
            conn.execute("DROP INDEX IF EXISTS events_user_items")
            for statement in (_SCHEMA + runs.SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions ------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nests (only the outermost level commits)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise StoreBusy(
                            f"the database is locked by another process for more than {self._busy_timeout_ms} ms"
                        ) from exc
                    raise
                self._writer = threading.get_ident()
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._writer = None
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._writer = None
                self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection for a read: this thread's own read-only one, so that
        readers never wait for a writer's commit (WAL lets them proceed on the
        last committed state); the writer's connection inside a transaction
        (to see its own writes) and for an in-memory database."""
        if self._readers is None or self._writer == threading.get_ident():
            with self._lock:
                yield self._conn
            return
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA cache_size = {-1024 * READER_CACHE_MB}")
            conn.create_function("exp", 1, math.exp, deterministic=True)  # not every build has it
            self._local.conn = conn
            with self._readers_lock:  # not the write lock: a writer may hold that for a while
                self._readers.append(conn)
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self.transaction():
            yield self._conn

    def _many(self, conn: sqlite3.Connection, statement: str, rows: Sequence[Any]) -> None:
        conn.executemany(statement, rows)

    # -- the log -----------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        with self.transaction():
            # Offsets are assigned here, under the write lock, from the
            # AUTOINCREMENT high-water mark, which never goes back (deleting
            # the newest events must not let a later event reuse an offset).
            base = self._high_water() + 1
            rows = [(seq, seq >> SEGMENT_BITS, *event_row(e, now)) for seq, e in enumerate(events, start=base)]
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT INTO events (seq, segment, event_id, user_id, item_id, type, value, ts, context, ingested_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                rows,
            )
            accepted = self._conn.total_changes - before
            last = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            new = self._conn.execute(
                "SELECT event_id FROM events WHERE seq >= ? AND seq < ?", (base, base + len(rows))
            ).fetchall()
        stored = frozenset(row[0] for row in new if row[0] is not None)
        return AppendResult(accepted=accepted, duplicates=len(rows) - accepted, last_offset=last, stored=stored)

    def _high_water(self, conn: sqlite3.Connection | None = None) -> int:
        row = (conn or self._conn).execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def _segments(self, conn: sqlite3.Connection | None = None) -> range:
        """Every segment that may hold events, newest first."""
        return range(self._high_water(conn) >> SEGMENT_BITS, -1, -1)

    def user_history(self, user_id: UserId, n: int, before: Offset | None = None) -> list[Event]:
        with self._read() as conn:
            return self._events(conn, [key[0] for key in self._user_keys(conn, user_id, n, before)])

    def user_items(self, user_id: UserId, n: int) -> set[ItemId]:
        with self._read() as conn:
            return {key[1] for key in self._user_keys(conn, user_id, n)}

    def user_context(
        self, user_id: UserId, n: int, seen: int, before: Offset | None = None
    ) -> tuple[list[Event], set[ItemId]]:
        with self._read() as conn:
            keys = self._user_keys(conn, user_id, max(n, seen), before)
        history = [
            Event(user_id, item, TYPES[kind], ts, value, offset=seq)
            for seq, item, kind, value, ts in map(runs.decoded, keys[:n])
        ]
        history.reverse()
        return history, {key[1] for key in keys[:seen]}

    def _user_keys(
        self, conn: sqlite3.Connection, user_id: UserId, n: int, before: Offset | None = None
    ) -> list[runs.Found]:
        return runs.user_keys(conn, user_id, n, self._high_water(conn) >> SEGMENT_BITS, before, SEGMENT_BITS)

    @staticmethod
    def _events(conn: sqlite3.Connection, offsets: list[int]) -> list[Event]:
        """The events at ``offsets``, oldest first."""
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(offsets), MAX_BOUND):
            part = offsets[i : i + MAX_BOUND]
            rows += conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({', '.join('?' * len(part))})", part
            ).fetchall()
        rows.sort(key=lambda row: row[0])
        return [event_of(r) for r in rows]

    async def user_context_async(self, user_id: UserId, n: int, seen: int) -> tuple[list[Event], set[ItemId]]:
        """:meth:`user_context` on the event loop: page-cache reads cost less than a hop to a
        worker thread. In a worker thread, every read waited for the interpreter lock among
        the model's and the loop's threads (the million-item shop under load: p50 7.1-11.5 ms
        against 3.5-4.5 ms, the API at 1.0-1.2 cores against 0.7-0.9). Reads of 100 ms and
        more on the loop were such waits too, one a step while a thread computed in Python
        beside it (even at the server's switch interval, :data:`freshrec.runtime.SWITCH_INTERVAL_S`):
        a statement's rows are read as one (:func:`freshrec.storage.runs.user_keys`)."""
        return self.user_context(user_id, n, seen)

    async def aclose(self) -> None:
        pass

    def delete_user(self, user_id: UserId) -> int:
        with self.transaction():
            deleted = sum(
                self._conn.execute("DELETE FROM events WHERE segment = ? AND user_id = ?", (s, user_id)).rowcount
                for s in self._segments()
            )
            runs.delete_user(self._conn, user_id)
            self._conn.execute(RECORD_ERASURE, (user_id, self._high_water(self._conn), time.time()))
        if deleted:
            self._checkpoint_wal()
        return deleted

    def erasure_done(self, erasure: Erasure) -> None:
        self._forget_erasure(erasure)
        self._checkpoint_wal()

    def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the file and truncate it: the log keeps the pages
        as they were before a deletion (with the user's rows) until then, while the file's
        freed cells are zeroed (``secure_delete``). Best effort: with a reader in the
        middle of a read, the log is truncated at the next deletion or at :meth:`close`."""
        with self._lock:
            if self._depth == 0:  # not inside a caller's transaction
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def maintain(self, budget_s: float) -> bool:
        """Build the sorted runs of the per-user index (:mod:`freshrec.storage.runs`) a
        step at a time, each its own short write transaction, for about ``budget_s``
        seconds; ``True`` if work is left. Only the steps' transactions wait for writers."""
        deadline = time.monotonic() + budget_s
        while True:
            with self.transaction():
                if not runs.step(self._conn, (self._high_water() >> SEGMENT_BITS) - 1):
                    return False
            if time.monotonic() >= deadline:
                return True

    def compact(self) -> None:
        """Deleted rows are already zeroed in the file's pages (``secure_delete``);
        this also empties the write-ahead log (which still holds the pages as they
        were) and rebuilds the file without free pages (``VACUUM``)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prefetch(self) -> bool:
        """Have the kernel read the database file into its page cache in the background,
        if the file fits in half the free memory; ``True`` if it was asked to.

        Why: a recommendation reads the user's index entries in each segment of the log
        and the rows of their latest events, a hundred or more pages spread over the file.
        With those on disk (a server just started, or a machine that pages out what was left
        untouched for a minute), the first seconds of traffic queued behind the reads. The
        kernel is asked a chunk at a time: asked for a whole file at once, it reads only
        the first megabytes."""
        if self.path == ":memory:" or not hasattr(os, "posix_fadvise"):
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size > free_memory() / 2:
                return False
            for offset in range(0, size, PREFETCH_CHUNK):
                os.posix_fadvise(fd, offset, PREFETCH_CHUNK, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        with self._lock, self._readers_lock:
            for reader in self._readers or ():
                reader.close()
            if self.path != ":memory:":
                with contextlib.suppress(sqlite3.Error):  # e.g. another process is reading
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
