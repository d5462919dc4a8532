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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from freshrec.domain import Event, ItemId
from freshrec.serve.fallback import Popularity
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
    the window and eight windows); :meth:`top` ranks."""

    def __init__(self, clock: Callable[[], float] = time.time, seed_size: int = 2_000):
        self.clock = clock
        self.counters = {
            window: (Popularity(w, clock, seed_size // 4), Popularity(USUAL * w, clock, seed_size // 4))
            for window, w in WINDOWS.items()
        }
        self.refresh_s = 1.0
        """A list is recomputed at most this often."""
        self._cache: dict[str, tuple[float, list[Trend]]] = {}

    @property
    def origin(self) -> float:
        """When the fastest-growing counter (the hour's) was last rescaled."""
        return self.counters["hour"][0].origin

    def _all(self) -> list[Popularity]:
        return [counter for pair in self.counters.values() for counter in pair]

    def seed(self, store: Store) -> None:
        """Start from the store's counts at each half-life (one query each, at start-up)."""
        for counter in self._all():
            counter.seed(store)
        self._cache.clear()

    def add(self, events: Iterable[Event]) -> None:
        events = list(events)
        for counter in self._all():
            counter.add(events)

    def forget(self, item_id: ItemId) -> None:
        for counter in self._all():
            counter.forget(item_id)
        self._cache.clear()

    def top(self, window: str, size: int = 500) -> list[Trend]:
        """The most trending items in ``window`` (a key of :data:`WINDOWS`), best first;
        recomputed at most every ``refresh_s`` per window."""
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; the windows are {', '.join(WINDOWS)}")
        cached = self._cache.get(window)
        now = time.monotonic()
        if cached is not None and now - cached[0] <= self.refresh_s:
            return cached[1]
        short, long = (counter.current() for counter in self.counters[window])
        recent_total, usual_total = sum(short.values()), sum(long.values())
        trends = []
        for item_id, recent in short.items():
            if recent < MIN_RECENT:
                continue
            usual = long.get(item_id, 0.0) / usual_total * recent_total
            trends.append(Trend(item_id, (recent - usual) / math.sqrt(usual + 1.0), recent, usual))
        trends.sort(key=lambda t: (-t.score, t.item_id))
        self._cache[window] = (now, trends[:size])
        return trends[:size]
