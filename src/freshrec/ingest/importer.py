"""Bulk import of validated records into a store.

Events are committed in chunks of at most :data:`COMMIT_EVERY` (10,000), each
sized so that its append takes about :data:`LOCK_BUDGET_S`: an import holds the
store's write lock only for one chunk at a time, so live ``POST /v1/events``
requests go on being answered within a second during an import of millions,
also where the database is slow or busy (a fixed 10,000-event chunk held
PostgreSQL's append lock for 0.35 s on an idle machine and over a second on a
loaded one; chunks aimed at 0.2 s held it up to 0.46 s beside two busy cores, at 0.1 s
up to 0.22 s, for about 5% fewer events per second).
Records without an ``event_id`` get one derived from their content
(:func:`derive_event_id`), so an import that stopped half way (a crash, a
SIGTERM) is finished by running it again: what it stored already adds nothing.
Without derived ids (``derive_ids=False``) that would store events twice, so
such an import runs in one transaction. Items are committed in chunks alike (an
upsert of an unchanged item changes nothing).

In the default mode bad records are skipped and counted (with file and line). In
strict mode every record is validated before anything is written, so a strict
import that fails changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tqdm.auto import tqdm

from freshrec.datasets.files import Record
from freshrec.domain import Event
from freshrec.ingest.hygiene import RepeatFilter
from freshrec.ingest.validate import InvalidRecord, Validator
from freshrec.storage.base import Store

MAX_REPORTED_ERRORS = 20
COMMIT_EVERY = 10_000
"""The most events in one transaction of an import."""
LOCK_BUDGET_S = 0.1
"""How long one chunk's append should hold the store's write lock."""
FIRST_CHUNK = 1_000
"""The first chunk's size, before any append has been timed."""
T = TypeVar("T")
Source = Iterable[Record] | Callable[[], Iterable[Record]]
"""Records, or a function that reads them afresh (lets a strict import of a file
validate it all, then read it again to write, without holding it in memory)."""


class ImportAborted(RuntimeError):
    """A strict import found a bad record before writing anything; nothing was stored."""


@dataclass
class ImportReport:
    kind: str
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    """Events already in the log, or items whose content did not change."""
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    """The first :data:`MAX_REPORTED_ERRORS` problems, each as ``file:line: field: message``."""

    def note(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(message)

    def summary(self) -> str:
        return (
            f"{self.kind}: read {self.read:,}, stored {self.stored:,}, "
            f"unchanged/duplicate {self.duplicates:,}, skipped {self.skipped:,}"
        )


def derive_event_id(event: Event) -> str:
    """A content-derived idempotency key for events that arrive without one.

    It starts with the event time in hex, so that keys of a time-ordered file
    arrive in nearly sorted order and the store's unique index grows at its
    end instead of taking a random page write per event.
    """
    key = "\x1f".join((event.user_id, event.item_id, event.type.value, repr(event.timestamp), repr(event.value)))
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"d:{int(event.timestamp):09x}{digest}"


def _validated(
    records: Iterable[Record], check: Callable[[dict[str, Any]], T], report: ImportReport, strict: bool
) -> Iterable[T]:
    for record in records:
        report.read += 1
        problem = record.error
        if record.data is not None:
            try:
                yield check(record.data)
                continue
            except InvalidRecord as exc:
                problem = str(exc)
        message = f"{record.where}: {problem}"
        if strict:
            raise ImportAborted(f"{message} (strict mode: nothing was imported)")
        report.note(message)


def _batches(values: Iterable[T], size: int | Callable[[], int]) -> Iterable[list[T]]:
    """Lists of ``size`` values (the last one shorter); a callable size is asked
    afresh for every list."""
    sized = size if callable(size) else lambda: size
    batch: list[T] = []
    limit = sized()
    for value in values:
        batch.append(value)
        if len(batch) >= limit:
            yield batch
            batch = []
            limit = sized()
    if batch:
        yield batch


class ChunkSizer:
    """The size of an import's next chunk, from how long the last ones took to append.

    Aims each chunk's append at ``budget_s``: the size follows the measured rate,
    at most doubling from one chunk to the next (a fast first chunk is no proof the
    store stays fast), never above ``most`` nor below one."""

    def __init__(self, most: int, budget_s: float = LOCK_BUDGET_S, first: int = FIRST_CHUNK) -> None:
        self.most = max(int(most), 1)
        self.budget_s = budget_s
        self.size = min(first, self.most)

    def __call__(self) -> int:
        return self.size

    def took(self, n: int, seconds: float) -> None:
        """Record that appending ``n`` events took ``seconds``."""
        if n < self.size:  # a short chunk (the file's end, or repeats filtered out) says little
            return
        fitting = int(n * self.budget_s / max(seconds, 1e-6))
        self.size = max(1, min(self.most, 2 * self.size, fitting))


def import_events(
    store: Store,
    records: Source,
    validator: Validator,
    *,
    strict: bool = False,
    derive_ids: bool = True,
    batch: int = COMMIT_EVERY,
    progress: bool = False,
    committed: Callable[[ImportReport], None] = lambda report: None,
    chunk: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> ImportReport:
    """Append the valid events of ``records``, committing chunks of at most ``batch``
    sized by :class:`ChunkSizer` (see the module's docstring). Each chunk's append and the ``committed(report)``
    that follows it run inside ``chunk()`` (the command line defers SIGTERM there,
    so that what it reports as stored is what was committed)."""
    report = ImportReport("events")
    repeats = RepeatFilter(validator.limits.repeat_window_s)

    def check(data: dict[str, Any]) -> Event:
        event = validator.event(data)
        return replace(event, event_id=derive_event_id(event)) if derive_ids and event.event_id is None else event

    if strict:
        records = _checked_first(records, check)
    read = records() if callable(records) else records
    # without derived ids a rerun would store twice: then all of it commits, or none
    whole = contextlib.nullcontext() if derive_ids else store.transaction()
    sizer = ChunkSizer(batch)
    with whole, tqdm(unit="event", desc="importing events", disable=not progress) as bar:
        for drawn in _batches(_validated(read, check, report, strict), sizer):
            events, repeated = repeats.split(drawn)
            with chunk():
                started = time.monotonic()
                result = store.append_events(events)  # one transaction per chunk
                sizer.took(len(drawn), time.monotonic() - started)
                report.stored += result.accepted
                report.duplicates += result.duplicates + repeated
                if derive_ids:
                    committed(report)
            repeats.remember(events)
            bar.update(len(events))
    return report


def _checked_first(records: Source, check: Callable[[dict[str, Any]], T]) -> Source:
    """Validate every record before anything is written (strict mode): raises
    :class:`ImportAborted` at the first bad one. Returns what to write from: the
    function, which reads the file again, or the records, kept in memory."""
    kept = records if callable(records) else list(records)
    for _ in _validated(kept() if callable(kept) else kept, check, ImportReport("check"), True):
        pass
    return kept


def import_items(
    store: Store,
    records: Source,
    validator: Validator,
    *,
    strict: bool = False,
    batch: int = COMMIT_EVERY,
    progress: bool = False,
) -> ImportReport:
    """Insert or update the valid items of ``records``, committing every ``batch``
    (an upsert of the same item again changes nothing, so a rerun is safe)."""
    report = ImportReport("items")
    if strict:
        records = _checked_first(records, validator.item)
    read = records() if callable(records) else records
    with tqdm(unit="item", desc="importing items", disable=not progress) as bar:
        for items in _batches(_validated(read, validator.item, report, strict), batch):
            result = store.upsert_items(items)
            report.stored += result.inserted + result.updated
            report.duplicates += result.unchanged
            bar.update(len(items))
    return report
