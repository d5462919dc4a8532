"""Events in: validated like a bulk import, repeats dropped, stored in one
transaction, then counted where serving keeps its figures.

An acknowledged event is in the store before the reply, so it is in the user's
history for the very next request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from freshrec.domain import Event
from freshrec.ingest.hygiene import RepeatFilter
from freshrec.ingest.importer import derive_event_id
from freshrec.ingest.validate import InvalidRecord, Validator
from freshrec.serve.fallback import ItemCounts
from freshrec.serve.live import Live
from freshrec.serve.metrics import Metrics
from freshrec.settings import Settings
from freshrec.storage.base import AppendResult, Store


class Problem(Exception):
    """A request the service refuses; ``errors`` locate each bad record."""

    def __init__(self, status: int, detail: str, errors: Sequence[dict[str, Any]] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)


def problems(raw: Sequence[Any], check: Callable[[Any], Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The records ``check`` accepts, and one error entry per bad field of the others."""
    good, errors = [], []
    for index, record in enumerate(raw):
        try:
            good.append(check(record))
        except InvalidRecord as exc:
            errors += [{"index": index, "field": e.field, "message": e.message} for e in exc.errors]
    return good, errors


class Intake:
    """Stores events posted to the API and tracks the log's head (``head``) and when
    each append was acknowledged, for the learner's lag in seconds."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        validator: Validator,
        metrics: Metrics,
        counts: Sequence[ItemCounts],
        live: Live,
    ):
        self.store = store
        self.settings = settings
        self.validator = validator
        self.metrics = metrics
        self.counts = counts
        """Popularity and trending: each acknowledged event counts for them."""
        self.live = live
        self.repeats = RepeatFilter(settings.ingest.repeat_window_s)
        self.append_hooks: list[Callable[[int], None]] = []
        """Called with the log's newest offset after each append that stored events."""
        self.stored_hooks: list[Callable[[list[Event]], None]] = []
        """Called with the events each append newly stored (an experiment credits its lists)."""
        self.head = store.last_offset()
        self._acks: deque[tuple[int, float]] = deque()
        self._ingest_lock = threading.Lock()
        self._head_lock = threading.Lock()

    def events(self, payload: Any) -> tuple[int, int]:
        """Validate every event, then store all of them in one transaction, or none.
        Returns how many were stored and how many were duplicates or repeats."""
        raw = payload if isinstance(payload, list) else [payload]
        limit = self.settings.serve.max_events_per_request
        if len(raw) > limit:
            raise Problem(413, f"{len(raw):,} events in one request; at most {limit:,}")
        if not raw:
            return 0, 0
        events, errors = problems(raw, self.validator.event)
        if errors:
            self.metrics.rejected.inc(len(raw) - len(events))
            raise Problem(
                422, f"{len(raw) - len(events)} of {len(raw)} events are invalid; nothing was stored", tuple(errors)
            )
        events = [e if e.event_id else replace(e, event_id=derive_event_id(e)) for e in events]
        with self._ingest_lock:  # a repeat is judged against what is stored, not what is being stored
            events, repeats = self.repeats.split(events)
            result = self.store.append_events(events) if events else AppendResult(0, 0, self.head)
            self.repeats.remember(events)
        with self._head_lock:
            self.head = max(self.head, result.last_offset)
            self._acks.append((result.last_offset, time.monotonic()))
        if result.accepted:
            for hook in self.append_hooks:
                hook(result.last_offset)
        new = [e for e in events if e.event_id in result.stored]
        if new:  # a retried request, or the repeated part of one, must not count twice
            for kind, n in Counter(e.type.value for e in new).items():
                self.metrics.events.labels(kind).inc(n)
            for counts in self.counts:
                counts.add(new)
            self.live.events(new)
            for stored in self.stored_hooks:
                stored(new)
        self.metrics.duplicates.inc(result.duplicates + repeats)
        return result.accepted, result.duplicates + repeats

    def observe_head(self, offset: int) -> None:
        """The log has grown to ``offset`` (appended by another replica)."""
        with self._head_lock:
            self.head = max(self.head, offset)

    def lag(self, learned: int | None) -> tuple[int, float]:
        """Events the served model has not learned, and seconds since the oldest of them
        was acknowledged; ``learned`` is the model's offset (``None``: no model)."""
        now = time.monotonic()
        with self._head_lock:
            if learned is None:
                return self.head, 0.0
            while self._acks and self._acks[0][0] <= learned:
                self._acks.popleft()
            lag_s = now - self._acks[0][1] if self._acks else 0.0
            return max(self.head - learned, 0), lag_s
