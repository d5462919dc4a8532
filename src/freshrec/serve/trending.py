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
from freshrec.serve.fallback import NOT_POPULARITY
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
    """Decayed event counts per item at each window's two half-lives; :meth:`top` ranks."""

    def __init__(self, clock: Callable[[], float] = time.time, seed_size: int = 2_000):
        self.clock = clock
        self.seed_size = seed_size
        self.half_lives = [h for w in WINDOWS.values() for h in (w, USUAL * w)]
        self.rates = [math.log(2) / h for h in self.half_lives]
        self.origin = clock()
        self.counts: dict[ItemId, list[float]] = {}
        self.refresh_s = 1.0
        """A list is recomputed at most this often."""
        self._cache: dict[str, tuple[float, list[Trend]]] = {}
        self._lock = threading.Lock()

    def seed(self, store: Store) -> None:
        """Start from the store's counts at each half-life (one query each, at start-up)."""
        for n, half_life in enumerate(self.half_lives):
            decayed = store.popular_items(self.seed_size, half_life)
            with self._lock:
                scale = math.exp(self.rates[n] * (self.clock() - self.origin))
                for item_id, count in decayed:
                    self.counts.setdefault(item_id, [0.0] * len(self.half_lives))[n] += count * scale
        self._cache.clear()

    def add(self, events: Iterable[Event]) -> None:
        """Count acknowledged events (growing weights instead of decaying every count)."""
        with self._lock:
            elapsed = self.clock() - self.origin
            weights = [math.exp(rate * elapsed) for rate in self.rates]
            for e in events:
                if e.type in NOT_POPULARITY:
                    continue
                row = self.counts.setdefault(e.item_id, [0.0] * len(weights))
                for n, w in enumerate(weights):
                    row[n] += w
            if weights[0] > 1e6:  # the shortest half-life grows fastest: rescale all
                self.counts = {k: [c / w for c, w in zip(row, weights, strict=True)] for k, row in self.counts.items()}
                self.origin = self.clock()

    def forget(self, item_id: ItemId) -> None:
        with self._lock:
            self.counts.pop(item_id, None)
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
        short = 2 * list(WINDOWS).index(window)
        with self._lock:
            elapsed = self.clock() - self.origin
            scale = math.exp(-self.rates[short] * elapsed)
            rows = [(item_id, row[short] * scale, row[short + 1]) for item_id, row in self.counts.items()]
        recent_total = sum(recent for _, recent, _ in rows)
        usual_total = sum(long for _, _, long in rows)  # in the rows' own units: only shares are used
        trends = []
        for item_id, recent, long in rows:
            if recent < MIN_RECENT:
                continue
            usual = long / usual_total * recent_total
            trends.append(Trend(item_id, (recent - usual) / math.sqrt(usual + 1.0), recent, usual))
        trends.sort(key=lambda t: (-t.score, t.item_id))
        self._cache[window] = (now, trends[:size])
        return trends[:size]
