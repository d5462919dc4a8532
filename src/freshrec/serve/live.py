"""Live traffic statistics for the dashboard: per-second series over the last minutes.

The online hit rate is measured on real traffic: when a user acts on an item
(a view, click, cart, purchase, favourite or good rating), was that item in
the list we last served to that user? It is the production counterpart of
the replay's HR@K, and it rises as the model learns what users want.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from freshrec.domain import Event, EventType, ItemId, UserId

POSITIVE = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.FAVORITE, EventType.CART, EventType.PURCHASE, EventType.RATING}
)


@dataclass
class Second:
    at: int
    events: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    hits: int = 0
    trials: int = 0
    gauges: dict[str, float | str | None] = field(default_factory=dict)


class Live:
    """Per-second buckets of events, requests and hits, plus sampled gauges.

    Parameters
    ----------
    window_s
        Seconds of history kept (and shown).
    served_users
        Most recent users whose last served list is remembered for the hit rate.
    """

    def __init__(self, window_s: int = 600, served_users: int = 100_000, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.seconds: deque[Second] = deque(maxlen=window_s)
        self.served: LRUCache[UserId, frozenset[ItemId]] = LRUCache(maxsize=served_users)
        self.hits_total = 0
        self.trials_total = 0
        self._lock = threading.Lock()

    def _now(self) -> Second:
        at = int(self.clock())
        if not self.seconds or self.seconds[-1].at != at:
            self.seconds.append(Second(at))
        return self.seconds[-1]

    def served_list(self, user_id: UserId, items: Iterable[ItemId]) -> None:
        with self._lock:
            self._now().requests += 1
            self.served[user_id] = frozenset(items)

    def events(self, events: Iterable[Event]) -> None:
        with self._lock:
            second = self._now()
            for e in events:
                second.events[e.type.value] += 1
                shown = self.served.get(e.user_id)
                if shown is not None and e.type in POSITIVE:
                    hit = e.item_id in shown
                    second.trials += 1
                    second.hits += hit
                    self.trials_total += 1
                    self.hits_total += hit

    def forget(self, user_id: UserId) -> None:
        with self._lock:
            self.served.pop(user_id, None)

    def gauges(self, values: dict[str, float | str | None]) -> None:
        with self._lock:
            self._now().gauges.update(values)

    def hit_rate(self, last_s: int = 300) -> float | None:
        """Share of positive feedback on an item we had just served, over ``last_s`` seconds."""
        cut = self.clock() - last_s
        with self._lock:
            hits = sum(s.hits for s in self.seconds if s.at >= cut)
            trials = sum(s.trials for s in self.seconds if s.at >= cut)
        return hits / trials if trials else None

    def series(self) -> dict[str, Any]:
        """Column-wise series for the dashboard's charts."""
        with self._lock:
            seconds = list(self.seconds)
        types = sorted({t for s in seconds for t in s.events})
        return {
            "t": [s.at for s in seconds],
            "events": {t: [s.events.get(t, 0) for s in seconds] for t in types},
            "requests": [s.requests for s in seconds],
            "hits": [s.hits for s in seconds],
            "trials": [s.trials for s in seconds],
            "gauges": [s.gauges for s in seconds],
            "hits_total": self.hits_total,
            "trials_total": self.trials_total,
        }
