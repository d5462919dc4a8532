"""What ranks without a model's say: popularity, kept in memory, for a user
without history (diversified by maximal marginal relevance), and text
similarity for a user with history before any model is published.

Counts decay with a half-life of arrival time, so "popular" means popular
lately. The store seeds the counts once at start; every acknowledged event
then adds to them, with no query on the request path.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from freshrec.domain import Event, EventType, ItemId
from freshrec.serve.explain import Because, Ranked, because_of, ranked
from freshrec.serve.scoring import Scoring, top
from freshrec.storage.base import Store

NOT_POPULARITY = (EventType.IMPRESSION, EventType.DISLIKE)
SEED_EVENTS = 1_000_000
"""Popularity counts start from at most this many of the latest events. Why: the seeding
queries of the popular and trending lists aggregated all 10,000,000 events of a large shop
and took most of five minutes before a server answered; events far back weigh little in
decayed counts, and a million recent ones rank a catalog's popular items as well."""


class ItemCounts(Protocol):
    """Per-item counts fed by every acknowledged event (popularity, trending)."""

    def add(self, events: Iterable[Event]) -> None: ...
    def forget(self, item_id: ItemId) -> None: ...


class Popularity:
    """Exponentially decayed event counts per item.

    Parameters
    ----------
    half_life_s
        A count loses half its weight in this time.
    clock
        Wall-clock seconds; injected so tests control time.
    """

    def __init__(
        self,
        half_life_s: float = 86_400.0,
        clock: Callable[[], float] = time.time,
        size: int = 500,
        refresh_s: float = 1.0,
    ):
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.rate = math.log(2) / half_life_s
        self.clock = clock
        self.size = size
        self.refresh_s = refresh_s
        self.origin = clock()
        self.counts: dict[ItemId, float] = {}
        self._sum = 0.0
        """The sum of :attr:`counts`, kept as they change (:meth:`total`)."""
        self._top: list[tuple[ItemId, float]] = []
        self._top_at = -math.inf
        self._touched: set[ItemId] = set()
        """Items counted since :attr:`_top` was ranked: with it, the only ones that may rank now."""
        self._whole = True
        """Whether the next :meth:`top` ranks every item (a count fell or was added from outside :meth:`add`)."""
        self._lock = threading.Lock()

    def seed(self, store: Store) -> None:
        """Start from the store's counts over its latest :data:`SEED_EVENTS` events, decayed
        with the same half-life by when each event was stored (one query, at start-up): a
        restart does not bring back what was popular a month ago."""
        after = max(0, store.last_offset() - SEED_EVENTS)
        decayed = store.popular_items(self.size * 4, self.half_life_s, after)
        with self._lock:
            scale = math.exp(self.rate * (self.clock() - self.origin))  # now, in this object's units
            for item_id, count in decayed:
                self.counts[item_id] = self.counts.get(item_id, 0.0) + count * scale
                self._sum += count * scale
            self._top_at, self._whole = -math.inf, True

    def add(self, events: Iterable[Event]) -> None:
        # Growing weights instead of decaying counts: one multiplication per event
        # rather than one per item per tick; rescaled now and then to stay finite.
        with self._lock:  # the weight too: a concurrent rescale moves the origin
            weight = math.exp(self.rate * (self.clock() - self.origin))
            touched = None if self._whole else self._touched  # the next ranking takes every item anyway
            for e in events:
                if e.type not in NOT_POPULARITY:
                    self.counts[e.item_id] = self.counts.get(e.item_id, 0.0) + weight
                    self._sum += weight
                    if touched is not None:
                        touched.add(e.item_id)
            if touched is not None and len(touched) > len(self.counts) // 4:  # no ranking asked for a while
                self._touched, self._whole = set(), True
            if weight > 1e6:
                self.counts = {k: v / weight for k, v in self.counts.items()}
                self._sum = math.fsum(self.counts.values())  # exact again, now and then
                self.origin = self.clock()
                self._whole = True  # the order stays, but rounding may break near ties otherwise

    def forget(self, item_id: ItemId) -> None:
        with self._lock:
            self._sum = max(0.0, self._sum - self.counts.pop(item_id, 0.0))
            self._top_at, self._whole = -math.inf, True

    def current(self, ids: Iterable[ItemId] | None = None) -> dict[ItemId, float]:
        """Every item's decayed count as of now; with ``ids``, those items' (the counted ones)."""
        with self._lock:
            scale = math.exp(-self.rate * (self.clock() - self.origin))
            counts = self.counts
            if ids is None:
                return {item_id: count * scale for item_id, count in counts.items()}
            return {item_id: counts[item_id] * scale for item_id in ids if item_id in counts}

    def total(self) -> float:
        """The sum of every item's decayed count as of now, without visiting each."""
        with self._lock:
            return self._sum * math.exp(-self.rate * (self.clock() - self.origin))

    def top(self) -> list[tuple[ItemId, float]]:
        """The most popular items, best first (the highest counts, ties by id); ranked
        again at most every ``refresh_s``, among the items then ranked and those counted
        since.

        Why not every item each time: counts only grow between two rankings (weights grow
        instead of counts decaying), so an item counted since neither is the only kind that
        can pass one that was ranked. Sorting every count held the event loop 103-152 ms on
        the million-item shop under random users' clicks (hundreds of thousands of items
        counted), nine times in six minutes: each time a user without history asked once the
        last ranking was a second old. Every item is ranked again only after a count fell
        (:meth:`forget`, a rescale) or was seeded."""
        now = time.monotonic()
        if now - self._top_at > self.refresh_s:
            with self._lock:
                counts = self.counts
                if self._whole:
                    ranked = heapq.nsmallest(self.size, ((-c, i) for i, c in counts.items()))
                else:
                    ids = self._touched.union(i for i, _ in self._top)
                    ranked = heapq.nsmallest(self.size, ((-counts[i], i) for i in ids if i in counts))
                self._top, self._top_at = [(i, -c) for c, i in ranked], now
                self._touched, self._whole = set(), False
        return self._top


POPULAR = "popular right now"
"""The explanation of the fallback's picks."""

DIVERSITY = 0.5
"""Weight of the redundancy penalty in the fallback's maximal-marginal-relevance picking."""


def by_text(sc: Scoring, known: Sequence[Event], allowed: npt.NDArray[np.bool_], k: int, explain: bool) -> list[Ranked]:
    """Before a model exists: closeness of each item's text to the recent history's."""
    past = [e for e in known[-20:] if e.type not in (EventType.DISLIKE, EventType.IMPRESSION)] or list(known[-20:])
    rows = [sc.view.codes[e.item_id] for e in past]
    weights = np.linspace(0.5, 1.0, len(rows), dtype=np.float32)  # recent events count more
    unit = sc.unit(rows)
    user = (unit * weights[:, None]).sum(0)
    scores = sc.cosines(user / max(float(np.linalg.norm(user)), 1e-12))
    out = []
    for c in top(scores, allowed, k):
        because: tuple[Because, ...] = ()
        if explain:
            sims = unit @ sc.unit([c])[0]
            j = int(np.argmax(sims))
            because = (because_of(sc, past[j], float(sims[j])),)
        out.append(ranked(sc, c, float(scores[c]), because, explain))
    return out


def diversified(
    sc: Scoring, popular: Sequence[tuple[ItemId, float]], allowed: npt.NDArray[np.bool_], k: int
) -> list[Ranked]:
    """Popular items, picked by maximal marginal relevance (Carbonell and Goldstein,
    1998) so that the list does not fill up with near-duplicates of the top seller."""
    view = sc.view
    codes, counts = [], []
    for item_id, count in popular:
        n = view.codes.get(item_id)
        if n is not None and allowed[n]:
            codes.append(n)
            counts.append(count)
    if len(codes) < k:  # a new shop: top up with the newest items
        taken, wanted = set(codes), k - len(codes)
        # at most len(taken) of the newest wanted + len(taken) are taken: a Python pass over
        # the whole catalog took 3 ms a request at 20,000 items
        newest = np.flatnonzero(allowed)[::-1][: wanted + len(taken)]
        extra = [int(c) for c in newest if c not in taken][:wanted]
        codes += extra
        counts += [0.0] * len(extra)
    if not codes:
        return []
    relevance = np.asarray(counts, dtype=np.float64)
    relevance = relevance / relevance.max() if relevance.max() > 0 else relevance
    vectors = sc.unit(codes)
    chosen: list[int] = []
    redundancy = np.full(len(codes), -np.inf)
    for _ in range(min(k, len(codes))):
        gain = relevance - DIVERSITY * np.maximum(redundancy, 0.0)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return [Ranked(view.ids[codes[i]], float(relevance[i]), view.titles[codes[i]], POPULAR) for i in chosen]
