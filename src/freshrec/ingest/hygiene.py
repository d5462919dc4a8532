"""Stream hygiene: repeated events and bursts that are not preferences.

:class:`RepeatFilter` drops an event when the same user did the same thing to
the same item (same type and value) within ``repeat_window_s`` seconds of event
time: a double click, a page reloaded, a client retrying with a fresh event id.
Idempotent retries with the *same* ``event_id`` are the store's job; this
catches what an id cannot.

:class:`Quarantine` watches each user's rate of events: a user above
``max_events_per_minute`` (event time) is a bot or a broken client, and is
quarantined for ``quarantine_s``: their events are still stored (the log is
the source of truth, and an operator can inspect them) but not trained on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from cachetools import TLRUCache

from freshrec.domain import Event

MAX_KEYS = 200_000
"""At most this many recent (user, item, type, value) keys are remembered (the oldest
are forgotten first); keys older than the window are forgotten anyway."""

Key = tuple[str, str, str, float | None]


def _key(e: Event) -> Key:
    return (e.user_id, e.item_id, e.type.value, e.value)


class RepeatFilter:
    """Remembers the last time of each recent (user, item, type, value), for
    ``window_s`` seconds of event time and at most ``max_keys`` keys (a
    :class:`cachetools.TLRUCache` whose clock is the newest event time seen).

    ``split`` only looks; ``remember`` records what was stored, so a failed
    write followed by a retry is not mistaken for a repeat. Not thread-safe:
    concurrent writers hold one lock across split, store and remember, or two
    repeats arriving together would both be stored (the service does)."""

    def __init__(self, window_s: float, max_keys: int = MAX_KEYS):
        self.window = window_s
        self._newest = float("-inf")
        self._last: TLRUCache[Key, float] = TLRUCache(
            maxsize=max_keys, ttu=lambda key, last, now: last + window_s, timer=lambda: self._newest
        )

    def split(self, events: Sequence[Event]) -> tuple[list[Event], int]:
        """The events to store, and how many were repeats (of earlier ones or each other)."""
        if self.window <= 0:
            return list(events), 0
        kept: list[Event] = []
        batch: dict[Key, float] = {}
        for e in events:
            k = _key(e)
            last = batch.get(k, self._last.get(k))
            if last is not None and abs(e.timestamp - last) < self.window:
                continue
            batch[k] = e.timestamp
            kept.append(e)
        return kept, len(events) - len(kept)

    def remember(self, events: Iterable[Event]) -> None:
        if self.window <= 0:
            return
        for e in events:
            self._newest = max(self._newest, e.timestamp)
            k = _key(e)
            self._last[k] = max(e.timestamp, self._last.get(k, e.timestamp))


class Quarantine:
    """Per-user event rate over the last minute of event time; users above the
    limit are quarantined. Not thread-safe: the learner calls it from one thread."""

    def __init__(self, max_events_per_minute: int, quarantine_s: float):
        self.limit = max_events_per_minute
        self.duration = quarantine_s
        self._recent: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self.quarantined_events = 0
        self.now = float("-inf")
        """The newest event time seen."""
        self._seen = 0

    def admit(self, event: Event) -> bool:
        """Whether to train on ``event``; counts it either way."""
        if self.limit <= 0:
            return True
        t, user = event.timestamp, event.user_id
        self.now = max(self.now, t)
        times = self._recent.setdefault(user, deque())
        times.append(t)
        while times and times[0] <= t - 60.0:
            times.popleft()
        if len(times) > self.limit:
            self._until[user] = t + self.duration
        self._seen += 1
        if self._seen % 10_000 == 0:
            self._prune(t)
        if self._until.get(user, float("-inf")) > t:
            self.quarantined_events += 1
            return False
        return True

    def forget(self, user: str) -> None:
        self._recent.pop(user, None)
        self._until.pop(user, None)

    def users(self) -> list[str]:
        """Users in quarantine as of the newest event seen."""
        return [u for u, until in self._until.items() if until > self.now]

    def figures(self) -> dict[str, int]:
        return {"quarantined_users": len(self.users()), "quarantined_events": self.quarantined_events}

    def _prune(self, now: float) -> None:
        self._recent = {u: d for u, d in self._recent.items() if d and d[-1] > now - 60.0}
        self._until = {u: until for u, until in self._until.items() if until > now}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a restart neither frees a bot early nor
        forgets the last minute's counts."""
        self._prune(self.now)
        return {
            "recent": {u: list(d) for u, d in self._recent.items()},
            "until": dict(self._until),
            "quarantined_events": self.quarantined_events,
            "now": self.now,
        }

    @staticmethod
    def erased(state: dict[str, Any], user: str) -> dict[str, Any] | None:
        """A :meth:`state` without ``user``, or ``None`` if it does not hold them
        (erasure rewrites stored checkpoints with it)."""
        recent, until = state.get("recent", {}), state.get("until", {})
        if user not in recent and user not in until:
            return None
        return {
            **state,
            "recent": {u: t for u, t in recent.items() if u != user},
            "until": {u: t for u, t in until.items() if u != user},
        }

    def load(self, state: dict[str, Any]) -> None:
        self._recent = {u: deque(times) for u, times in state.get("recent", {}).items()}
        self._until = dict(state.get("until", {}))
        self.quarantined_events = int(state.get("quarantined_events", 0))
        self.now = float(state.get("now", float("-inf")))
