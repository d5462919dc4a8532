"""Trending items: those whose recent rate rose most against their usual rate.

Popular is not trending: the all-time bestseller is popular every day, and a
lamp that sold twice a week and twenty times today is trending. Each window
(an hour, a day, a week) keeps two decayed counts per item in memory, fed by
every acknowledged event like :class:`~freshrec.serve.fallback.Popularity`:
one with the window as half-life (the recent rate) and one with eight times
that (the usual rate). An item's usual count is its share of the usual counts
times all recent events, so a shop whose traffic grows (its first weeks, a sale
day) does not see every item trend, and a short history does not either. Its
score is how far its recent count lies above that, in Poisson standard
deviations, ``(recent - usual) / sqrt(usual + 1)``: a rise from 2 to 20
counts, a rise from 0 to 1 hardly does, and a steady bestseller scores about
zero.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from freshrec.domain import Event, ItemId
from freshrec.serve.fallback import NOT_POPULARITY, Popularity
from freshrec.storage.base import Store

WINDOWS = {"hour": 3_600.0, "day": 86_400.0, "week": 7 * 86_400.0}
"""The windows a trending list can be asked for, in seconds."""
USUAL = 8.0
"""The usual rate is counted with a half-life this many times the window's."""
MIN_RECENT = 2.0
"""Items with fewer recent events than this (decayed) never trend: one sale is no trend."""


@dataclass(frozen=True)
class Trend:
    item_id: ItemId
    score: float
    recent: float
    """Events in about the last window (decayed with the window as half-life)."""
    usual: float
    """What the item's usual share of events predicts for that window."""


class Trending:
    """Two :class:`~freshrec.serve.fallback.Popularity` counters per window (half-lives of
    the window and eight windows); :meth:`top` ranks.

    Each ranking looks at the items that trended at the last one and those counted since,
    not at every counted item. Why: an item whose recent count was under
    :data:`MIN_RECENT` then and that nobody touched since is under it still (counts only
    decay between events), so it cannot trend; on a catalog of a million items, visiting
    every counted item's two counts held the interpreter lock for about half a second each
    time a window's list was a second old and asked for, while requests waited. Every item
    is looked at again after a count fell from outside (:meth:`forget`), a seed, or when the
    items counted since outnumber a quarter of those counted."""

    def __init__(self, clock: Callable[[], float] = time.time, seed_size: int = 2_000):
        self.clock = clock
        self.counters = {
            window: (Popularity(w, clock, seed_size // 4), Popularity(USUAL * w, clock, seed_size // 4))
            for window, w in WINDOWS.items()
        }
        self.refresh_s = 1.0
        """A list is recomputed at most this often."""
        self._cache: dict[str, tuple[float, list[Trend]]] = {}
        self._trending: dict[str, set[ItemId] | None] = dict.fromkeys(WINDOWS)
        """Per window, the items that trended at its last ranking (``None``: look at every item)."""
        self._since: dict[str, set[ItemId]] = {window: set() for window in WINDOWS}
        """Per window, the items counted since its last ranking."""
        self._looked = 0
        """How often every item was to be looked at again (a ranking that began before does not count)."""
        self._lock = threading.Lock()

    @property
    def origin(self) -> float:
        """When the fastest-growing counter (the hour's) was last rescaled."""
        return self.counters["hour"][0].origin

    def _all(self) -> list[Popularity]:
        return [counter for pair in self.counters.values() for counter in pair]

    def _everything(self) -> None:
        with self._lock:
            self._trending = dict.fromkeys(WINDOWS)
            self._since = {window: set() for window in WINDOWS}
            self._looked += 1
        self._cache.clear()

    def seed(self, store: Store) -> None:
        """Start from the store's counts at each half-life (one query each, at start-up)."""
        for counter in self._all():
            counter.seed(store)
        self._everything()

    def add(self, events: Iterable[Event]) -> None:
        events = list(events)
        for counter in self._all():
            counter.add(events)
        counted = {e.item_id for e in events if e.type not in NOT_POPULARITY}
        with self._lock:
            crowded = len(self.counters["hour"][0].counts) // 4
            for window, since in self._since.items():
                since |= counted  # even where every item is looked at next: a ranking may be under way
                if len(since) > crowded:  # no list asked for a while
                    self._trending[window], self._since[window] = None, set()
                    self._looked += 1

    def forget(self, item_id: ItemId) -> None:
        for counter in self._all():
            counter.forget(item_id)
        self._everything()

    def top(self, window: str, size: int = 500) -> list[Trend]:
        """The most trending items in ``window`` (a key of :data:`WINDOWS`), best first;
        recomputed at most every ``refresh_s`` per window."""
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; the windows are {', '.join(WINDOWS)}")
        cached = self._cache.get(window)
        now = time.monotonic()
        if cached is not None and now - cached[0] <= self.refresh_s:
            return cached[1]
        with self._lock:
            last, since = self._trending[window], self._since[window]
            ids = None if last is None else last | since
            self._since[window], looked = set(), self._looked
        short, long = self.counters[window]
        recent_counts = short.current(ids)
        recent_total, usual_total = short.total(), long.total()
        rising = {item_id: recent for item_id, recent in recent_counts.items() if recent >= MIN_RECENT}
        usual_counts = long.current(rising)
        trends = []
        for item_id, recent in rising.items():
            usual = usual_counts.get(item_id, 0.0) / usual_total * recent_total if usual_total > 0 else 0.0
            trends.append(Trend(item_id, (recent - usual) / math.sqrt(usual + 1.0), recent, usual))
        trends.sort(key=lambda t: (-t.score, t.item_id))
        with self._lock:
            if self._looked == looked:  # else every item is looked at next time
                self._trending[window] = set(rising)
        self._cache[window] = (now, trends[:size])
        return trends[:size]
