"""Popularity, kept in memory: what a user without history is shown.

Counts decay with a half-life of arrival time, so "popular" means popular
lately. The store seeds the counts once at start; every acknowledged event
then adds to them, with no query on the request path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from freshrec.domain import Event, EventType, ItemId
from freshrec.storage.base import Store

NOT_POPULARITY = (EventType.IMPRESSION, EventType.DISLIKE)


class Popularity:
    """Exponentially decayed event counts per item.

    Parameters
    ----------
    half_life_s
        A count loses half its weight in this time.
    clock
        Wall-clock seconds; injected so tests control time.
    """

    def __init__(self, half_life_s: float = 86_400.0, clock: Callable[[], float] = time.time, size: int = 500):
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.rate = math.log(2) / half_life_s
        self.clock = clock
        self.size = size
        self.origin = clock()
        self.counts: dict[ItemId, float] = {}
        self._top: list[tuple[ItemId, float]] = []
        self._top_at = -math.inf
        self._lock = threading.Lock()

    def seed(self, store: Store) -> None:
        """Start from the store's counts, decayed with the same half-life by when each
        event was stored (one query, at start-up): a restart does not bring back what
        was popular a month ago."""
        decayed = store.popular_items(self.size * 4, self.half_life_s)
        with self._lock:
            scale = math.exp(self.rate * (self.clock() - self.origin))  # now, in this object's units
            for item_id, count in decayed:
                self.counts[item_id] = self.counts.get(item_id, 0.0) + count * scale
            self._top_at = -math.inf

    def add(self, events: Iterable[Event]) -> None:
        # Growing weights instead of decaying counts: one multiplication per event
        # rather than one per item per tick; rescaled now and then to stay finite.
        with self._lock:  # the weight too: a concurrent rescale moves the origin
            weight = math.exp(self.rate * (self.clock() - self.origin))
            for e in events:
                if e.type not in NOT_POPULARITY:
                    self.counts[e.item_id] = self.counts.get(e.item_id, 0.0) + weight
            if weight > 1e6:
                self.counts = {k: v / weight for k, v in self.counts.items()}
                self.origin = self.clock()

    def forget(self, item_id: ItemId) -> None:
        with self._lock:
            self.counts.pop(item_id, None)
            self._top_at = -math.inf

    def top(self) -> list[tuple[ItemId, float]]:
        """The most popular items, best first; recomputed at most once a second."""
        now = time.monotonic()
        if now - self._top_at > 1.0:
            with self._lock:
                ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.size]
                self._top, self._top_at = ranked, now
        return self._top
