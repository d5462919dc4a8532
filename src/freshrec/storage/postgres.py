"""The shared store for more than one machine: PostgreSQL through psycopg 3.

Selected by a ``postgresql://`` URL. API replicas, the learner and the
command line all open the same database; every process keeps a small
connection pool (``storage.pool_size``).

Offsets are assigned in commit order. Every append takes one transaction-level
advisory lock before it inserts, so two replicas' appends are serialised and
an event with a higher offset is never visible before one with a lower
offset. The learner reads the log as ``offset > W`` and relies on exactly
that: an ordinary sequence alone would let a slow transaction commit a lower
offset after the learner had read past it, and that event would never be
learned.

An optional ``schema`` query parameter (``postgresql://host/db?schema=shop``)
keeps several freshrec stores apart in one database; the schema is created
if it is missing. Text columns holding ids use the binary "C" collation so
that ``ORDER BY item_id`` agrees with the SQLite backend whatever the
database's locale.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from freshrec.domain import Event, ItemId, Offset, UserId
from freshrec.settings import StorageSettings
from freshrec.storage.base import AppendResult, Erasure, StoreBusy, redact
from freshrec.storage.rows import EVENT_COLUMNS, event_of, event_row
from freshrec.storage.sql import LAST_OFFSET, POSTGRES, RECORD_ERASURE, SharedSQL
from freshrec.storage.sqlite import SchemaError

SCHEMA_VERSION = 1
_APPEND_LOCK = 0x66726573  # "fres": the advisory lock that orders appends
_SCHEMA_LOCK = 0x66726574

_SCHEMA = """
CREATE TABLE IF NOT EXISTS freshrec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT COLLATE "C" UNIQUE,
    user_id TEXT COLLATE "C" NOT NULL,
    item_id TEXT COLLATE "C" NOT NULL,
    type TEXT NOT NULL,
    value DOUBLE PRECISION,
    ts DOUBLE PRECISION NOT NULL,
    context TEXT,
    ingested_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq DESC) INCLUDE (item_id);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT COLLATE "C" PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    categories TEXT NOT NULL,
    attributes TEXT NOT NULL,
    vector BYTEA,
    text_hash TEXT COLLATE "C" NOT NULL,
    content_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS items_text_hash ON items (text_hash);
CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT COLLATE "C" NOT NULL,
    text_hash TEXT COLLATE "C" NOT NULL,
    vector BYTEA NOT NULL,
    PRIMARY KEY (encoder, text_hash)
);
CREATE TABLE IF NOT EXISTS published (
    name TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL,
    data BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_version (id INTEGER PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
INSERT INTO catalog_version (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS erasures (
    user_id TEXT COLLATE "C" PRIMARY KEY,
    at BIGINT NOT NULL,
    asked_at DOUBLE PRECISION NOT NULL
);
"""

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq connection string and the schema named by ``?schema=``, if any."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema {schema!r} in the store URL: use lower-case letters, digits and _ (at most 63)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class PostgresStore(SharedSQL):
    """:class:`~freshrec.storage.base.Store` on a PostgreSQL database; the statements it
    shares with SQLite are in :mod:`freshrec.storage.sql`.

    Parameters
    ----------
    url
        ``postgresql://[user[:password]@]host[:port]/database[?schema=name]``.
    settings
        The ``[storage]`` section (``pool_size``, ``busy_timeout_ms`` as the
        time to wait for a connection).
    """

    remote = True
    dialect = POSTGRES

    def __init__(self, url: str, settings: StorageSettings | None = None):
        settings = settings or StorageSettings()
        conninfo, self.schema = split_url(url)
        self.url = redact(url)
        options = {"autocommit": True}
        if self.schema is not None:
            options["options"] = f"-c search_path={self.schema}"  # type: ignore[assignment]
        self._conninfo, self._options, self._pool_size = conninfo, options, settings.pool_size
        self._pool_timeout = max(settings.busy_timeout_ms / 1000, 1.0)
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_opening: asyncio.Task[AsyncConnectionPool[Any]] | None = None
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=settings.pool_size,
            kwargs=options,
            timeout=self._pool_timeout,
            open=False,
            name="freshrec",
        )
        self._local = threading.local()
        self._lock_timeout_ms = max(int(settings.busy_timeout_ms), 1)
        try:
            self._pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            self._pool.close()
            raise ConnectionError(f"cannot connect to PostgreSQL at {self.url} within 10 s") from exc
        try:
            self._create_schema()
        except BaseException:
            self._pool.close()
            raise

    def _create_schema(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            # replicas starting together must not race on CREATE ... IF NOT EXISTS
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if self.schema is not None:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)  # type: ignore[call-overload]
            row = conn.execute("SELECT value FROM freshrec_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO freshrec_meta (key, value) VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.url} has schema version {row[0]}; this freshrec reads version {SCHEMA_VERSION}"
                )

    # -- transactions ------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nests (only the outermost level commits).
        The transaction belongs to the calling thread."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    self._local.conn = conn
                    yield
            finally:
                self._local.conn = None

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's transaction's connection, or one from the pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as pooled:
            yield pooled

    _read = _conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self.transaction(), self._conn() as conn:
            yield conn

    def _many(self, conn: psycopg.Connection[Any], statement: str, rows: Sequence[Any]) -> None:
        with conn.cursor() as cur:
            cur.executemany(statement, rows)

    # -- the log -----------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        rows = [event_row(e, now) for e in events]
        with self.transaction(), self._conn() as conn:
            # the append lock has no timeout of its own: without one, a post would wait
            # for as long as another process's transaction holds it
            conn.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")  # type: ignore[arg-type]
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
            except psycopg.errors.LockNotAvailable as exc:
                raise StoreBusy(
                    f"the append lock was held by another process for more than {self._lock_timeout_ms} ms"
                ) from exc
            stored: set[str] = set()
            accepted = 0
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO events (event_id, user_id, item_id, type, value, ts, context, ingested_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
                        " RETURNING event_id",
                        rows,
                        returning=True,
                    )
                    while True:  # one result per row: its id if it was inserted, nothing if not
                        inserted = cur.fetchall()
                        accepted += len(inserted)
                        stored.update(row[0] for row in inserted if row[0] is not None)
                        if not cur.nextset():
                            break
            last = self._one(conn, LAST_OFFSET)
        return AppendResult(
            accepted=accepted, duplicates=len(rows) - accepted, last_offset=int(last), stored=frozenset(stored)
        )

    def user_history(self, user_id: UserId, n: int, before: Offset | None = None) -> list[Event]:
        below, bound = ("", ()) if before is None else (" AND seq < %s", (before,))
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = %s{below} ORDER BY seq DESC LIMIT %s",
                (user_id, *bound, n),
            ).fetchall()
        return [event_of(r) for r in reversed(rows)]

    def user_items(self, user_id: UserId, n: int) -> set[ItemId]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT item_id FROM events WHERE user_id = %s ORDER BY seq DESC LIMIT %s", (user_id, n)
            ).fetchall()
        return {r[0] for r in rows}

    def user_context(
        self, user_id: UserId, n: int, seen: int, before: Offset | None = None
    ) -> tuple[list[Event], set[ItemId]]:
        bound = NO_BOUND if before is None else before
        with self._conn() as conn:
            rows = conn.execute(_USER_CONTEXT, (user_id, bound, seen, user_id, bound, n)).fetchall()
        return _user_context(rows)

    async def user_context_async(self, user_id: UserId, n: int, seen: int) -> tuple[list[Event], set[ItemId]]:
        """:meth:`user_context` on the event loop, through psycopg's async pool: the loop
        serves other requests while the database answers, with no hop to a thread (which
        under load cost more latency than the read itself)."""
        pool = await self._async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(_USER_CONTEXT, (user_id, NO_BOUND, seen, user_id, NO_BOUND, n))
            rows = await cursor.fetchall()
        return _user_context(rows)

    async def _async_pool(self) -> AsyncConnectionPool[Any]:
        """The async pool of the running event loop, opened on first use (once, however
        many requests ask at the same time)."""
        loop = asyncio.get_running_loop()
        if self._async_loop is not loop:
            self._async_loop = loop
            self._async_opening = loop.create_task(self._open_async_pool())
        assert self._async_opening is not None
        return await asyncio.shield(self._async_opening)

    async def _open_async_pool(self) -> AsyncConnectionPool[Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            kwargs=self._options,
            timeout=self._pool_timeout,
            open=False,
            name="freshrec-async",
        )
        await pool.open(wait=True, timeout=10.0)
        return pool

    async def aclose(self) -> None:
        if self._async_opening is not None and self._async_opening.done() and not self._async_opening.exception():
            await self._async_opening.result().close()
        self._async_loop = self._async_opening = None

    def delete_user(self, user_id: UserId) -> int:
        with self.transaction(), self._conn() as conn:
            head = self._one(conn, LAST_OFFSET)  # before the user's rows go
            deleted = conn.execute("DELETE FROM events WHERE user_id = %s", (user_id,)).rowcount
            conn.execute(POSTGRES(RECORD_ERASURE), (user_id, head, time.time()))
            return deleted

    def erasure_done(self, erasure: Erasure) -> None:
        """Also vacuums the two tables: a plain ``VACUUM`` (which does not block reads or
        writes) prunes the pages that held the user's rows, so their space is reused;
        ``freshrec compact`` rewrites the files. PostgreSQL's write-ahead log is the
        database operator's part (see :meth:`compact`)."""
        self._forget_erasure(erasure)
        with self._pool.connection() as conn:
            for table in ("events", "erasures"):
                conn.execute(f"VACUUM {table}")  # type: ignore[call-overload]

    def compact(self) -> None:
        """``VACUUM FULL`` rewrites the tables without the deleted rows. PostgreSQL's
        write-ahead log keeps old pages until it recycles its segments (and in any
        WAL archive): erasing those is the database operator's part."""
        with self._pool.connection() as conn:
            for table in ("events", "items", "embeddings", "published", "erasures"):
                conn.execute(f"VACUUM FULL {table}")  # type: ignore[call-overload]

    def maintain(self, budget_s: float) -> bool:
        """Nothing: the events table's ``(user_id, seq)`` index answers a history in one descent."""
        return False

    def prefetch(self) -> bool:
        """Nothing: the database server keeps its own cache (``pg_prewarm`` fills it)."""
        return False

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_USER_CONTEXT = (
    "SELECT s.seen, h.* FROM (SELECT ARRAY(SELECT item_id FROM events WHERE user_id = %s AND seq < %s"
    " ORDER BY seq DESC LIMIT %s) AS seen) s"
    f" LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events WHERE user_id = %s AND seq < %s"
    " ORDER BY seq DESC LIMIT %s) h ON true"
)
"""A user's seen items and last events (below an offset) in one round trip (one row even
without events)."""
NO_BOUND = 2**63 - 1
"""The offset bound of a read of every event (the largest ``BIGINT``)."""


def _user_context(rows: list[Any]) -> tuple[list[Event], set[ItemId]]:
    items = set(rows[0][0]) if rows else set()
    return [event_of(r[1:]) for r in reversed(rows) if r[1] is not None], items
