"""One SQL layer for both backends: the statements they share, written once with
``?`` placeholders (:class:`Dialect` renders them as psycopg's ``%s``), and the
operations built on them (:class:`SharedSQL`).

What differs between SQLite and PostgreSQL stays in each backend, explicit:
how offsets are assigned and appends ordered (SQLite's single writer and
segmented user index; PostgreSQL's advisory lock), how a user's history is read
(segment by segment; one round trip with ``LATERAL``), connections and
transactions, and what an erasure does to the files afterwards (WAL truncation;
``VACUUM``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.domain import Event, EventType, Item, ItemId, Offset
from freshrec.storage.base import Counts, Erasure, LeaseState, UpsertResult
from freshrec.storage.rows import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    changed_items,
    embedding_rows,
    erasures_of,
    event_of,
    item_of,
    texts_to_embed,
    upsert_items_sql,
    vector_matrix,
)

CHUNK = 500
"""Ids per ``IN (...)`` list: well below SQLite's bound-parameter limit."""

LAST_OFFSET = "SELECT COALESCE(MAX(seq), 0) FROM events"
READ_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
RECORD_ERASURE = (
    "INSERT INTO erasures (user_id, at, asked_at) VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET at = excluded.at"
)
"""A deletion's pending erasure, recorded in the transaction that deletes the events;
``at`` is the log's head before the deletion (the learner forgets up to there)."""
PENDING_ERASURES = "SELECT user_id, at, asked_at FROM erasures ORDER BY asked_at, user_id"
ERASURE_DONE = "DELETE FROM erasures WHERE user_id = ? AND at <= ?"
POPULAR = (
    "SELECT e.item_id, SUM(exp({greatest}(? * (e.ingested_at - ?), -700))) AS n"
    " FROM events e JOIN items i ON i.item_id = e.item_id WHERE e.type NOT IN (?, ?) AND e.seq > ?"
    " GROUP BY e.item_id ORDER BY n DESC, e.item_id LIMIT ?"
)
GET_ITEM = f"SELECT {ITEM_COLUMNS} FROM items WHERE item_id = ?"
ALL_ITEMS = f"SELECT {ITEM_COLUMNS} FROM items ORDER BY item_id"
DELETE_ITEM = "DELETE FROM items WHERE item_id = ?"
CATALOG_VERSION = "SELECT n FROM catalog_version"
CATALOG_CHANGED = "UPDATE catalog_version SET n = n + 1"
"""The last statement of a catalog write: the row's lock is then held only until the
commit, by a transaction that waits for no other lock (PostgreSQL: no deadlock with
another writer holding item rows)."""
CONTENT_HASHES = "SELECT item_id, content_hash FROM items WHERE item_id IN ({ids})"
TEXTS_TO_EMBED = (
    "SELECT i.text_hash, i.title, i.description, i.categories FROM items i"
    " WHERE i.vector IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.encoder = ? AND e.text_hash = i.text_hash)"
    " AND i.item_id = (SELECT MIN(j.item_id) FROM items j WHERE j.text_hash = i.text_hash AND j.vector IS NULL)"
    " ORDER BY i.item_id"
)
"""Each text without a vector for the encoder once (from its first item), in item order."""
PUT_EMBEDDING = (
    "INSERT INTO embeddings (encoder, text_hash, vector) VALUES (?, ?, ?)"
    " ON CONFLICT (encoder, text_hash) DO UPDATE SET vector = excluded.vector"
)
_EMBEDDED = (
    " FROM items i LEFT JOIN embeddings e ON e.encoder = ? AND e.text_hash = i.text_hash"
    " WHERE (i.vector IS NOT NULL OR e.vector IS NOT NULL)"
)
"""The items with a vector for the encoder: their own, or their text's."""
ITEM_VECTORS = "SELECT i.item_id, COALESCE(i.vector, e.vector)" + _EMBEDDED
EMBEDDED_IDS = (
    "SELECT i.item_id FROM embeddings e JOIN items i ON i.text_hash = e.text_hash"
    " WHERE e.encoder = ? AND i.vector IS NULL"
    " UNION ALL SELECT item_id FROM items WHERE vector IS NOT NULL"
)
"""The ids of ``ITEM_VECTORS``, found from the encoder's embeddings: with ``_EMBEDDED``'s
join SQLite walked the items and looked up each one's embedding, 33 s at a million items
(with or without an order), against 3.6 s."""
PUBLISH = (
    "INSERT INTO published (name, version, data, updated_at) VALUES (?, 1, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET version = published.version + 1, data = excluded.data,"
    " updated_at = excluded.updated_at RETURNING version"
)
CLAIM = "INSERT INTO published (name, version, data, updated_at) VALUES (?, 1, ?, ?) ON CONFLICT (name) DO NOTHING"
PUBLISHED_DATA = "SELECT data FROM published WHERE name = ?"
PUBLISHED_AFTER = "SELECT version, data FROM published WHERE name = ? AND version > ?"
TAKE_LEASE = (
    "INSERT INTO leases (name, holder, token, renewed_at) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (name) DO UPDATE SET"
    " token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,"
    " holder = excluded.holder, renewed_at = excluded.renewed_at"
    " WHERE leases.holder = excluded.holder OR leases.renewed_at < ?"
)
"""Take a lease that is free, one's own, or expired (renewed before the last parameter),
in one statement."""
LEASE_STATE = "SELECT holder, token, renewed_at FROM leases WHERE name = ?"
RENEW_LEASE = "UPDATE leases SET renewed_at = ? WHERE name = ? AND holder = ? AND token = ?"
RELEASE_LEASE = "UPDATE leases SET renewed_at = 0 WHERE name = ? AND holder = ? AND token = ?"
"""A released lease is left expired rather than deleted, so its token keeps growing."""
COUNT_ITEMS = "SELECT COUNT(*) FROM items"
COUNT_EMBEDDED = (
    "SELECT COUNT(*) FROM items i WHERE i.vector IS NOT NULL OR EXISTS"
    " (SELECT 1 FROM embeddings e WHERE e.encoder = ? AND e.text_hash = i.text_hash)"
)
COUNT_EVENTS = "SELECT COUNT(*), MIN(ts), MAX(ts) FROM events"
COUNT_USERS = "SELECT COUNT(DISTINCT user_id) FROM events"
COUNT_BY_TYPE = "SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY type"


@dataclass(frozen=True)
class Dialect:
    """How a backend writes what the shared statements leave open."""

    positional: str
    """The placeholder of a positional parameter: ``?`` or ``%s``."""
    named: Callable[[str], str]
    """The placeholder of a named parameter."""
    greatest: str
    """The two-argument maximum: SQLite's scalar ``max``, PostgreSQL's ``GREATEST``."""
    for_update: str
    """What locks selected rows until the transaction ends (SQLite's writer holds the file)."""

    def __call__(self, statement: str) -> str:
        """``statement`` in this dialect (the shared ones never hold a literal ``?``)."""
        return statement.replace("?", self.positional) if self.positional != "?" else statement


SQLITE = Dialect("?", lambda name: f":{name}", "max", "")
POSTGRES = Dialect("%s", lambda name: f"%({name})s", "GREATEST", " FOR UPDATE")

Connection = Any
"""A DB-API connection of either backend (``sqlite3`` or ``psycopg``)."""


class SharedSQL:
    """The :class:`~freshrec.storage.base.Store` operations both backends run with the
    same statements. A backend provides ``dialect``, ``_read()`` (a connection for a
    read) and ``_write()`` (a connection inside a transaction), and ``_many``."""

    dialect: Dialect

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _many(self, conn: Connection, statement: str, rows: Sequence[Any]) -> None:
        """Run ``statement`` once per row."""
        raise NotImplementedError

    def _one(self, conn: Connection, statement: str, params: Sequence[Any] = ()) -> Any:
        row = conn.execute(self.dialect(statement), tuple(params)).fetchone()
        return row[0] if row else 0

    def _all(self, conn: Connection, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(conn.execute(self.dialect(statement), tuple(params)).fetchall())

    def _chunked(self, conn: Connection, statement: str, ids: Sequence[str], before: Sequence[Any] = ()) -> list[Any]:
        """``statement`` (with ``{ids}`` for an ``IN`` list) over ``ids``, a chunk at a time."""
        rows: list[Any] = []
        for start in range(0, len(ids), CHUNK):
            chunk = list(ids[start : start + CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows += self._all(conn, statement.format(ids=marks), (*before, *chunk))
        return rows

    # -- the log -----------------------------------------------------------
    def last_offset(self) -> Offset:
        with self._read() as conn:
            return int(self._one(conn, LAST_OFFSET))

    def read_events(self, after: Offset = 0, limit: int = 10_000) -> list[Event]:
        with self._read() as conn:
            return [event_of(r) for r in self._all(conn, READ_EVENTS, (after, limit))]

    def pending_erasures(self) -> list[Erasure]:
        with self._read() as conn:
            return erasures_of(self._all(conn, PENDING_ERASURES))

    def _forget_erasure(self, erasure: Erasure) -> None:
        with self._write() as conn:
            conn.execute(self.dialect(ERASURE_DONE), (erasure.user_id, erasure.at))

    def popular_items(self, limit: int, half_life_s: float | None = None, after: int = 0) -> list[tuple[ItemId, float]]:
        rate = math.log(2) / half_life_s if half_life_s else 0.0
        params = (rate, time.time(), EventType.IMPRESSION.value, EventType.DISLIKE.value, after, limit)
        with self._read() as conn:
            rows = self._all(conn, POPULAR.format(greatest=self.dialect.greatest), params)
        return [(r[0], float(r[1])) for r in rows]

    # -- the catalog -------------------------------------------------------
    def upsert_items(self, items: Sequence[Item]) -> UpsertResult:
        now = time.time()
        with self._write() as conn:
            ids = list({item.item_id: None for item in items})
            stored = dict(self._chunked(conn, CONTENT_HASHES + self.dialect.for_update, ids))
            rows, result = changed_items(items, stored, now)
            if rows:
                self._many(conn, upsert_items_sql(self.dialect.named), rows)
                conn.execute(CATALOG_CHANGED)
        return result

    def get_item(self, item_id: ItemId) -> Item | None:
        with self._read() as conn:
            rows = self._all(conn, GET_ITEM, (item_id,))
        return item_of(rows[0]) if rows else None

    def iter_items(self) -> Iterator[Item]:
        with self._read() as conn:
            rows = self._all(conn, ALL_ITEMS)
        for row in rows:
            yield item_of(row)

    def delete_item(self, item_id: ItemId) -> bool:
        with self._write() as conn:
            deleted: bool = conn.execute(self.dialect(DELETE_ITEM), (item_id,)).rowcount > 0
            if deleted:
                conn.execute(CATALOG_CHANGED)
            return deleted

    # -- embeddings --------------------------------------------------------
    def items_to_embed(self, encoder: str) -> list[tuple[str, str]]:
        with self._read() as conn:
            return texts_to_embed(self._all(conn, TEXTS_TO_EMBED, (encoder,)))

    def put_embeddings(self, encoder: str, hashes: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        rows = embedding_rows(encoder, hashes, vectors)
        with self._write() as conn:
            self._many(conn, self.dialect(PUT_EMBEDDING), rows)
            if rows:
                conn.execute(CATALOG_CHANGED)

    def item_vectors(
        self, encoder: str, ids: Sequence[ItemId] | None = None
    ) -> tuple[list[ItemId], npt.NDArray[np.float32]]:
        with self._read() as conn:
            if ids is None:
                rows = self._all(conn, ITEM_VECTORS + " ORDER BY i.item_id", (encoder,))
            else:
                query = ITEM_VECTORS + " AND i.item_id IN ({ids}) ORDER BY i.item_id"
                rows = self._chunked(conn, query, sorted(set(ids)), (encoder,))
        return vector_matrix(encoder, rows)

    def embedded_ids(self, encoder: str) -> list[ItemId]:
        with self._read() as conn:
            return [r[0] for r in self._all(conn, EMBEDDED_IDS, (encoder,))]

    def catalog_version(self) -> int:
        with self._read() as conn:
            return int(self._one(conn, CATALOG_VERSION))

    # -- published blobs -----------------------------------------------------
    def publish(self, name: str, data: bytes) -> int:
        with self._write() as conn:
            return int(self._one(conn, PUBLISH, (name, data, time.time())))

    def claim(self, name: str, data: bytes) -> bytes:
        with self._write() as conn:
            conn.execute(self.dialect(CLAIM), (name, data, time.time()))
            return bytes(self._one(conn, PUBLISHED_DATA, (name,)))

    def published(self, name: str, after: int = 0) -> tuple[int, bytes] | None:
        with self._read() as conn:
            rows = self._all(conn, PUBLISHED_AFTER, (name, after))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    # -- leases ------------------------------------------------------------
    def take_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        now = time.time()
        with self._write() as conn:
            conn.execute(self.dialect(TAKE_LEASE), (name, holder, now, now - ttl_s))
            row = self._all(conn, LEASE_STATE, (name,))[0]
        return LeaseState(row[0], int(row[1]), max(0.0, now - float(row[2])))

    def renew_lease(self, name: str, holder: str, token: int) -> bool:
        with self._write() as conn:
            return bool(conn.execute(self.dialect(RENEW_LEASE), (time.time(), name, holder, token)).rowcount == 1)

    def release_lease(self, name: str, holder: str, token: int) -> None:
        with self._write() as conn:
            conn.execute(self.dialect(RELEASE_LEASE), (name, holder, token))

    # -- summary -----------------------------------------------------------
    def counts(self, encoder: str) -> Counts:
        with self._read() as c:
            items = int(self._one(c, COUNT_ITEMS))
            embedded = int(self._one(c, COUNT_EMBEDDED, (encoder,)))
            events, first, last = self._all(c, COUNT_EVENTS)[0]
            users = int(self._one(c, COUNT_USERS))
            by_type = {t: int(n) for t, n in self._all(c, COUNT_BY_TYPE)}
        return Counts(items, embedded, users, int(events), by_type, first, last)
