"""Bulk import of validated records into a store, all or nothing.

An import runs in one store transaction: in the default mode bad records are
skipped and counted (with file and line), and in strict mode the first bad
record aborts the import and the store is left exactly as it was.

Records without an ``event_id`` get one derived from their content
(:func:`derive_event_id`), so importing the same file twice stores nothing
new: files have no natural idempotency key, and re-running an import after a
failure is the normal way to recover.
"""

from __future__ import annotations

import hashlib
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
T = TypeVar("T")


class ImportAborted(RuntimeError):
    """Strict import stopped at a bad record; nothing was stored."""


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


def _batches(values: Iterable[T], size: int) -> Iterable[list[T]]:
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_events(
    store: Store,
    records: Iterable[Record],
    validator: Validator,
    *,
    strict: bool = False,
    derive_ids: bool = True,
    batch: int = 5_000,
    progress: bool = False,
) -> ImportReport:
    report = ImportReport("events")
    repeats = RepeatFilter(validator.limits.repeat_window_s)

    def check(data: dict[str, Any]) -> Event:
        event = validator.event(data)
        return replace(event, event_id=derive_event_id(event)) if derive_ids and event.event_id is None else event

    with store.transaction(), tqdm(unit="event", desc="importing events", disable=not progress) as bar:
        for events in _batches(_validated(records, check, report, strict), batch):
            events, repeated = repeats.split(events)
            result = store.append_events(events)
            repeats.remember(events)
            report.stored += result.accepted
            report.duplicates += result.duplicates + repeated
            bar.update(len(events))
    return report


def import_items(
    store: Store,
    records: Iterable[Record],
    validator: Validator,
    *,
    strict: bool = False,
    batch: int = 5_000,
    progress: bool = False,
) -> ImportReport:
    report = ImportReport("items")
    with store.transaction(), tqdm(unit="item", desc="importing items", disable=not progress) as bar:
        for items in _batches(_validated(records, validator.item, report, strict), batch):
            result = store.upsert_items(items)
            report.stored += result.inserted + result.updated
            report.duplicates += result.unchanged
            bar.update(len(items))
    return report
