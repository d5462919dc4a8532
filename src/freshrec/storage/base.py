"""The storage protocol: the event log (source of truth) and its views.

Every backend implements :class:`Store` and passes the same contract tests
(``tests/storage/test_contract.py``). Nothing outside ``storage/`` writes SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from freshrec.domain import Event, Item, ItemId, Offset, UserId


class StoreBusy(RuntimeError):
    """The store's write lock was not free within ``storage.busy_timeout_ms`` (another
    process holds it: an import's chunk, a compaction). Nothing was written; retrying is
    safe. The HTTP API answers it with 503 and ``Retry-After``."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    last_offset: Offset
    """Offset of the newest event in the log after the append (0 if empty)."""
    stored: frozenset[str] = frozenset()
    """The event ids this append stored (the others were there already): what counts
    as new in live figures."""


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True, slots=True)
class LeaseState:
    """Who holds a lease after an attempt to take it (see :meth:`Store.take_lease`)."""

    holder: str
    token: int
    """Fencing token: grows by one each time the lease changes hands."""
    age_s: float
    """Seconds since the holder last renewed it."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """A deleted user whose erasure from the learner's memory and checkpoints is pending
    (see :meth:`Store.delete_user`)."""

    user_id: UserId
    at: Offset
    """The log's head when the user was deleted: the learner drops their events up to
    it (read before the deletion), and learns a returning user's later ones."""
    asked_at: float


@dataclass(frozen=True, slots=True)
class Counts:
    items: int
    items_embedded: int
    users: int
    events: int
    events_by_type: dict[str, int] = field(default_factory=dict)
    first_timestamp: float | None = None
    last_timestamp: float | None = None


class Store(Protocol):
    """Durable home of events, items and item embeddings.

    Writes are acknowledged only once durable. Methods called inside
    ``with store.transaction():`` commit together or not at all.
    """

    remote: bool
    """Whether a read is a network round trip (PostgreSQL): the server then reads off
    its event loop, in a thread, so that a slow database stalls only that request.
    SQLite reads are in-process page-cache hits, cheaper than the hop to a thread."""

    def transaction(self) -> AbstractContextManager[None]: ...

    # -- the log -----------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> AppendResult:
        """Append in order; events whose ``event_id`` is already stored are skipped."""
        ...

    def last_offset(self) -> Offset:
        """Offset of the newest event in the log (0 if empty)."""
        ...

    def read_events(self, after: Offset = 0, limit: int = 10_000) -> list[Event]:
        """Up to ``limit`` events with offset greater than ``after``, in log order."""
        ...

    def user_history(self, user_id: UserId, n: int, before: Offset | None = None) -> list[Event]:
        """The user's last ``n`` events (of those with an offset below ``before``, if
        given: what the learner knew of them at a point of the log), oldest first."""
        ...

    def user_items(self, user_id: UserId, n: int) -> set[ItemId]:
        """The items of the user's last ``n`` events (what ``exclude_seen`` leaves out);
        a projection, much cheaper than :meth:`user_history` for long histories."""
        ...

    def user_context(
        self, user_id: UserId, n: int, seen: int, before: Offset | None = None
    ) -> tuple[list[Event], set[ItemId]]:
        """What a model reads of a user, in one round trip where the store is remote: the
        user's last ``n`` events (oldest first) and the items of their last ``seen``
        events (an empty set for ``seen`` 0), of those below offset ``before`` if given (as
        :meth:`user_history`: the learner's view at a point of the log). The events may
        lack their ``event_id`` and ``context``, which no model reads: SQLite answers from
        its per-user index alone, without the table's rows."""
        ...

    async def user_context_async(self, user_id: UserId, n: int, seen: int) -> tuple[list[Event], set[ItemId]]:
        """:meth:`user_context` for the server's event loop: PostgreSQL awaits its async
        pool (no thread), SQLite reads directly."""
        ...

    def delete_user(self, user_id: UserId) -> int:
        """Forget everything stored about a user; returns the number of events removed.
        In the same transaction, records the user's erasure as pending (for the learner,
        which holds what it learned from them): a deletion the learner has not yet
        carried out survives restarts of either process."""
        ...

    def pending_erasures(self) -> list[Erasure]:
        """Deleted users the learner has not yet erased, oldest request first."""
        ...

    def erasure_done(self, erasure: Erasure) -> None:
        """The learner has erased the user: drop the record (unless the user was deleted
        again since ``erasure.at``) and leave no byte of the id behind in the store's
        files (WAL truncated, freed pages zeroed or vacuumed)."""
        ...

    def popular_items(self, limit: int, half_life_s: float | None = None, after: int = 0) -> list[tuple[ItemId, float]]:
        """Catalog items by number of events, most first (impressions and dislikes do not
        count). With ``half_life_s``, each event counts ``0.5 ** (age / half_life_s)``,
        its age taken from when it was stored (arrival time, as the server's live
        popularity counts it). Only the events after offset ``after`` count."""
        ...

    # -- the catalog -------------------------------------------------------
    def upsert_items(self, items: Sequence[Item]) -> UpsertResult: ...

    def get_item(self, item_id: ItemId) -> Item | None: ...

    def iter_items(self) -> Iterator[Item]: ...

    def delete_item(self, item_id: ItemId) -> bool: ...

    # -- embeddings (a cache keyed by encoder and text hash) -----------------
    def items_to_embed(self, encoder: str) -> list[tuple[str, str]]:
        """``(text_hash, text)`` of catalog texts with no embedding cached for
        ``encoder``, one per distinct text; items with a precomputed vector are
        not included."""
        ...

    def put_embeddings(self, encoder: str, hashes: Sequence[str], vectors: npt.NDArray[np.float32]) -> None: ...

    def item_vectors(
        self, encoder: str, ids: Sequence[ItemId] | None = None
    ) -> tuple[list[ItemId], npt.NDArray[np.float32]]:
        """Ids and vectors of every catalog item that has one (precomputed or
        cached), in id order; with ``ids``, of those items only."""
        ...

    def embedded_ids(self, encoder: str) -> list[ItemId]:
        """The ids of :meth:`item_vectors`, without the vectors, in no particular order
        (the learner sorts the few it lacks): which items are new is a question of ids (on
        a million items the vectors are a gigabyte to read)."""
        ...

    def catalog_version(self) -> int:
        """A number that grows with every write of the catalog that changed something (items
        added, changed or deleted, embeddings added), in the same transaction as the write.
        Read before :meth:`embedded_ids`: a write committed in between shows in the next
        call. Why: reading a million items' ids took the learner 3 s, and most of its
        reads found nothing new."""
        ...

    # -- published blobs (shared state of the processes of a deployment) ------
    def publish(self, name: str, data: bytes) -> int:
        """Replace the blob called ``name``; returns its new version (1, 2, ...). The
        learner leaves its state and copies of its newest snapshot and checkpoint
        here; API replicas bump the catalog's version."""
        ...

    def published(self, name: str, after: int = 0) -> tuple[int, bytes] | None:
        """``(version, data)`` of the blob if its version is newer than ``after``."""
        ...

    def claim(self, name: str, data: bytes) -> bytes:
        """Store ``data`` as the blob ``name`` unless there is one already; returns the
        stored blob (the first writer's, whoever asked first)."""
        ...

    # -- leases (one learner per store) ----------------------------------------
    def take_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """Take the lease ``name`` for ``holder`` if it is free, already ``holder``'s, or
        not renewed for ``ttl_s`` seconds (then its token grows); returns who holds it
        now, atomically with the attempt."""
        ...

    def renew_lease(self, name: str, holder: str, token: int) -> bool:
        """Renew ``holder``'s lease; false if it is no longer theirs with that token."""
        ...

    def release_lease(self, name: str, holder: str, token: int) -> None:
        """Give the lease up (a no-op if it is no longer ``holder``'s): the next taker
        gets it at once, with the next token."""
        ...

    # -- summary -----------------------------------------------------------
    def counts(self, encoder: str) -> Counts: ...

    def compact(self) -> None:
        """Rewrite the stored data without what was deleted: no byte of a deleted
        user may linger in logs or free space (run after deletions; it takes a
        while on a large store)."""
        ...

    def maintain(self, budget_s: float) -> bool:
        """Work for about ``budget_s`` seconds on what the store derives from the log to
        answer reads faster (SQLite: :mod:`freshrec.storage.runs`), in short transactions;
        ``True`` if more is due. A learner calls it in the background, an import at its end."""
        ...

    def prefetch(self) -> bool:
        """Bring what requests read into memory ahead of them (a server calls it once it
        serves a model); ``True`` if anything was asked for."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None:
        """Close what the store opened on the server's event loop (called there, at shutdown)."""
        ...


def identity(store: Store) -> str:
    """A random id given to the store the first time it is asked for, kept in it.

    Checkpoints record it: a log offset means nothing in another store, and a
    learner resuming a checkpoint against a recreated database would otherwise
    wait, silently, for the new log to pass the old offset."""
    got = store.published("identity")
    if got is not None:
        return got[1].decode()
    # two processes starting together must agree: the first insert wins, atomically
    return store.claim("identity", uuid.uuid4().hex.encode()).decode()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def iter_log(store: Store, after: Offset = 0, batch: int = 10_000) -> Iterator[Event]:
    """Every event after ``after``, in log order, read in batches."""
    for chunk in log_chunks(store, after, batch=batch):
        yield from chunk


def log_chunks(
    store: Store, after: Offset = 0, until: Offset | None = None, batch: int = 10_000
) -> Iterator[list[Event]]:
    """The events after ``after`` (up to ``until``, if given), in log order, a batch at a time."""
    while True:
        events = store.read_events(after, batch)
        if until is not None:
            events = [e for e in events if (e.offset or 0) <= until]
        if not events:
            return
        yield events
        last = events[-1].offset
        assert last is not None
        after = last
