"""Counting signals learned from the stream: what follows what, what goes
together, and what is popular at several time scales.

These are the evidence that simple baselines rank by. The blend
(:mod:`freshrec.model.blend`) weighs them against the network's scores,
so the model keeps what counting knows (a new item's first transitions, a
sudden hit) and the network adds what counting cannot (text, taste).

Every signal is updated with :meth:`CountSignals.learn` after its events were
scored, and read as ``log(share + floor)`` rows over the catalog, where the
shares of a row sum to at most about 1 and the floor is a tenth of a uniform
share: a log-probability-like scale the blend can weigh linearly whatever the
catalog size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from freshrec.model.base import Interactions
from freshrec.model.counted import Counted
from freshrec.model.pairs import PairCounts
from freshrec.model.similarity import SimilarityCache, SimilarityRows, nearest, profile_similarity, unit_rows

LAG_WEIGHTS = (1.0, 0.6, 0.36)
"""Transitions from the user's last, second-last and third-last item."""
GRAM_MAX_ITEMS = 4_096
"""Up to this many items, the text similarity of every pair is computed once (64 MB at
most) and "text-nearest" looks it up: on MovieLens-100K the five matrix products per
scored batch it replaces were an eighth of the replay's time. Larger catalogs multiply."""


class CountSignals:
    """Online counts over item codes ``0 .. n_items - 1``.

    Parameters
    ----------
    n_items
        Catalog size; :meth:`grow` adds items.
    window
        How many of a user's latest items count as co-occurring with the next.
    half_lives
        Popularity decays with these half-lives, in events; one feature each,
        so the blend picks the time scale the stream calls for.
    """

    def __init__(
        self,
        n_items: int,
        window: int = 20,
        half_lives: tuple[float, ...] = (100.0, 1_000.0, 10_000.0, 100_000.0),
        text: np.ndarray | None = None,
        time_half_lives: tuple[float, ...] = (86_400.0, 604_800.0, 2_592_000.0),
    ):
        self.window = window
        self.text = None if text is None else unit_rows(text)
        """Unit-length text vectors of the catalog: "reads like what they touched"
        needs no learning, so it holds from a user's first event and a new item's
        first minute."""
        self._gram: Tensor | None = None
        """Text similarities of every pair of items (see :data:`GRAM_MAX_ITEMS`), made when first read."""
        self._rows: SimilarityCache | None = None
        """On larger catalogs, the similarity rows read lately."""
        self._item_features: tuple[tuple[int, int, int], Tensor] | None = None
        self.transitions = PairCounts(n_items)
        self.cooc = PairCounts(n_items)
        self.popularity = Decayed(n_items, half_lives)
        """Popularity on the stream's own clock: the last hundred events, or thousand, ..."""
        self.recency = Decayed(n_items, time_half_lives)
        """Popularity on the wall clock: the last day, week, month. A stream's rate changes
        (night and day, a shop's first months against its busy years); on which clock
        popularity is best counted is for the blend to find out."""
        self.interactions = np.zeros(n_items, dtype=np.float64)
        self.first_seen = np.full(n_items, np.inf)
        """Stream position of each item's first counted event."""
        self._last = 0.0  # latest stream position counted
        self.seq = 0
        """How many :meth:`learn` calls counted something."""
        self.journal: list[Counted] | None = None
        """When a list (the learner's, which sends serving a copy), what each
        :meth:`learn` counted, until :meth:`drain` takes it."""

    @property
    def n_items(self) -> int:
        return len(self.interactions)

    @property
    def names(self) -> list[str]:
        return [
            "transitions",
            "co-occurrence",
            *(["text-similarity", "text-nearest"] if self.text is not None else []),
            *(f"popularity-{int(h)}" for h in self.popularity.half_lives),
            *(f"recency-{_duration(h)}" for h in self.recency.half_lives),
            "untouched",
            "age",
        ]

    def grow(self, text: np.ndarray) -> None:
        """New items (rows of text vectors), untouched."""
        n = len(text)
        if self.text is not None:
            unit = unit_rows(text)
            old, new = torch.from_numpy(self.text), torch.from_numpy(unit)
            self.text = np.concatenate([self.text, unit])
            if self._gram is not None and self.n_items + n <= GRAM_MAX_ITEMS:  # the new rows and columns only
                across = new @ old.T
                self._gram = torch.cat([torch.cat([self._gram, across.T], 1), torch.cat([across, new @ new.T], 1)])
            else:
                self._gram = None
            self._rows = None
        self.transitions.grow(n)
        self.cooc.grow(n)
        self.popularity.grow(n)
        self.recency.grow(n)
        self.interactions = np.concatenate([self.interactions, np.zeros(n)])
        self.first_seen = np.concatenate([self.first_seen, np.full(n, np.inf)])

    # -- learning ----------------------------------------------------------
    def learn(self, events: Interactions, keep: np.ndarray | None = None) -> None:
        """Count ``events`` (those where ``keep`` is true): positive feedback
        only, because a disliked item does not follow or go with anything."""
        if keep is not None:
            events = events.take(np.flatnonzero(keep))
        if not len(events):
            return
        recent = events.hist_item[:, ::-1][:, : max(self.window, len(LAG_WEIGHTS))]  # most recent first
        counted = Counted(
            self.seq + 1,
            self.n_items,
            events.item.astype(np.int64),
            np.ascontiguousarray(recent, dtype=np.int64),
            events.position.astype(np.int64),
            events.time.astype(np.float64),
        )
        self.apply(counted)
        if self.journal is not None:
            self.journal.append(counted)

    def apply(self, counted: Counted) -> None:
        """Count what :meth:`learn` counted (on a copy: the same counts follow)."""
        if counted.n_items > self.n_items:
            raise ValueError(f"counted on {counted.n_items} items, this copy holds {self.n_items}")
        items, recent = counted.items, counted.recent
        for k in range(min(len(LAG_WEIGHTS), recent.shape[1])):
            valid = recent[:, k] >= 0
            self.transitions.add(recent[valid, k], items[valid])
        window = recent[:, : self.window]
        src = window[window >= 0]
        dst = np.broadcast_to(items[:, None], window.shape)[window >= 0]
        self.cooc.add(src, dst)
        self.cooc.add(dst, src)
        self._count(items, counted.position.astype(np.float64), counted.time)
        self.seq = counted.seq

    def drain(self) -> list[Counted]:
        """What was counted since the last call (with a :attr:`journal`)."""
        taken, self.journal = self.journal or [], [] if self.journal is not None else None
        return taken

    def _count(self, items: np.ndarray, position: np.ndarray, time: np.ndarray) -> None:
        np.add.at(self.interactions, items, 1.0)
        np.minimum.at(self.first_seen, items, position)
        self._last = max(self._last, float(position.max()))
        self.popularity.add(items, position)
        known = np.isfinite(time)
        self.recency.add(items[known], time[known])

    # -- reading -----------------------------------------------------------
    def features(
        self, queries: Interactions, text: np.ndarray | None = None, gram: SimilarityRows | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per query ``(B, Q, n_items)``: log-shares of transitions from the
        user's last items and of co-occurrence with their recent items, and the
        text similarity to their recent items; per item ``(n_items, S)``:
        log-shares of decayed popularity at each half-life, whether the item is
        untouched, and how long ago (in events, log) it was first touched.
        Names in :attr:`names`.

        ``text`` (unit rows) and ``gram``, its products' rows, stand in
        for the copy's own: a server reads the features over its whole catalog, whose
        items past ``n_items`` the counts have not met (they read as untouched)."""
        n = self.n_items
        width = n if text is None else len(text)
        floor = 0.1 / max(n, 1)
        recent = queries.hist_item[:, ::-1].astype(np.int64)  # most recent first
        counted = np.where(recent < n, recent, -1)  # a server's items the counts have not met
        lags = counted[:, : len(LAG_WEIGHTS)]
        trans = self.transitions.mix(lags, np.asarray(LAG_WEIGHTS[: lags.shape[1]]) / sum(LAG_WEIGHTS))
        window = recent[:, : self.window]
        weights = np.where(window >= 0, 0.8 ** np.arange(window.shape[1]), 0.0)
        cooc = self.cooc.mix(counted[:, : self.window], weights / np.maximum(weights.sum(1, keepdims=True), 1e-9))
        per_query = torch.empty(len(queries), self.n_per_query, width)
        torch.log(_padded(torch.from_numpy(trans), width) + floor, out=per_query[:, 0])
        torch.log(_padded(torch.from_numpy(cooc), width) + floor, out=per_query[:, 1])
        unit = self.text if text is None else text
        if unit is not None and self.text is not None:
            units = torch.from_numpy(unit)
            per_query[:, 2] = profile_similarity(units, window, weights)
            per_query[:, 3] = nearest(units, queries, self._text_rows() if text is None else gram)
        return per_query, self._per_item(width)

    def _per_item(self, width: int) -> Tensor:
        """The per-item features over ``width`` items, made once per state of the counts (a
        server reads them for every request, between two increments)."""
        key = (self.seq, self.n_items, width)
        if self._item_features is not None and self._item_features[0] == key:
            return self._item_features[1]
        n, floor = self.n_items, 0.1 / max(self.n_items, 1)
        pop = np.concatenate([self.popularity.shares(), self.recency.shares()])
        untouched = self.interactions == 0
        age = np.where(untouched, 0.0, np.log1p(np.maximum(self._last - self.first_seen, 0.0) / 100.0))
        per_item = np.concatenate([np.log(pop + floor), untouched[None], age[None]]).T.astype(np.float32)
        if width > n:  # items the counts have not met: no share, untouched, no age
            extra = np.zeros((width - n, per_item.shape[1]), dtype=np.float32)
            extra[:, : len(pop)] = np.log(floor)
            extra[:, len(pop)] = 1.0
            per_item = np.concatenate([per_item, extra])
        made = torch.from_numpy(np.ascontiguousarray(per_item[:width]))
        self._item_features = (key, made)
        return made

    def _text_rows(self) -> SimilarityRows | None:
        """Each pair's text similarity looked up: all made at once on a small catalog, the
        rows read lately on a larger one."""
        if self.text is None:
            return None
        text = torch.from_numpy(self.text)
        if self.n_items > GRAM_MAX_ITEMS:
            if self._rows is None:
                self._rows = SimilarityCache(text)
            return self._rows
        if self._gram is None:
            self._gram = text @ text.T
        return self._gram.__getitem__

    @property
    def n_per_query(self) -> int:
        """How many of :attr:`names`, from the first, are per-query features."""
        return 2 + 2 * (self.text is not None)

    # -- persistence ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "transitions": self.transitions.state(),
            "cooc": self.cooc.state(),
            "popularity": self.popularity.state(),
            "recency": self.recency.state(),
            "interactions": self.interactions.copy(),
            "first_seen": self.first_seen.copy(),
            "last": self._last,
            "seq": self.seq,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take ``state`` (from :meth:`state`), checked first: :class:`ValueError` unless
        it holds counts of this copy's shape (what comes over a pipe or from disk)."""
        self.check(state)
        self._item_features = None
        self.transitions.restore(state["transitions"])
        self.cooc.restore(state["cooc"])
        self.popularity.restore(state["popularity"])
        self.recency.restore(state["recency"])
        self.interactions = np.asarray(state["interactions"], dtype=np.float64).copy()
        self.first_seen = np.asarray(state["first_seen"], dtype=np.float64).copy()
        self._last = float(state["last"])
        self.seq = int(state.get("seq", 0))

    def check(self, state: object) -> int:
        """The number of items ``state`` counts; :class:`ValueError` unless it is a
        :meth:`state` of counts with this copy's half-lives."""
        fields = {"transitions", "cooc", "popularity", "recency", "interactions", "first_seen", "last"}
        if not isinstance(state, dict) or not fields <= set(state) <= fields | {"seq"}:
            raise ValueError("not a state of count signals: unexpected fields")
        interactions = np.asarray(state["interactions"])
        n = len(interactions)
        if interactions.shape != (n,) or np.asarray(state["first_seen"]).shape != (n,):
            raise ValueError("count signals: item arrays of different lengths")
        for name, decayed in (("popularity", self.popularity), ("recency", self.recency)):
            raw = state[name]
            if not isinstance(raw, dict) or set(raw) != {"counts", "now"}:
                raise ValueError(f"count signals: {name} is not a state of decayed counts")
            counts = np.asarray(raw["counts"])
            if counts.shape != (len(decayed.half_lives), n) or not np.isfinite(counts).all() or (counts < 0).any():
                raise ValueError(f"count signals: {name} counts of the wrong shape or not finite")
        for name in ("transitions", "cooc"):
            check_pairs(state[name], n)
        if not np.isfinite(interactions).all() or np.isnan(np.asarray(state["first_seen"])).any():
            raise ValueError("count signals: item counts not finite")
        if not isinstance(state["last"], (int, float)) or not isinstance(state.get("seq", 0), int):
            raise ValueError("count signals: last and seq must be numbers")
        return n


def check_pairs(raw: object, n: int) -> None:
    """:class:`ValueError` unless ``raw`` is a :meth:`PairCounts.state` of ``n`` items."""
    if not isinstance(raw, dict) or set(raw) != {"n", "indptr", "indices", "data"} or raw["n"] != n:
        raise ValueError("count signals: pair counts of another size or not a state")
    indptr, indices, data = (np.asarray(raw[k]) for k in ("indptr", "indices", "data"))
    if indptr.shape != (n + 1,) or indices.shape != data.shape or indices.ndim != 1:
        raise ValueError("count signals: pair counts' arrays of the wrong shape")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ValueError("count signals: pair counts' row pointers are not a CSR matrix's")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError("count signals: pair counts name items out of range")
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError("count signals: pair counts not finite and non-negative")


def _padded(x: Tensor, width: int) -> Tensor:
    """``x``'s first ``width`` columns, zeros past its own."""
    return x[:, :width] if x.shape[1] >= width else F.pad(x, (0, width - x.shape[1]))


class Decayed:
    """Item counts that decay on one clock (stream positions or seconds): an event
    ``d`` clock units before the latest weighs ``2 ** (-d / half_life)``, one row per
    half-life. The counts are kept as of the latest clock reading and decayed when it
    moves on, so no weight ever exceeds 1 (an event dated after the latest reading
    moves the clock; one dated before it counts for less)."""

    def __init__(self, n_items: int, half_lives: tuple[float, ...]):
        self.half_lives = np.asarray(half_lives, dtype=np.float64)
        self.counts = np.zeros((len(half_lives), n_items))
        self.now = -np.inf

    def add(self, items: np.ndarray, clock: np.ndarray) -> None:
        if not len(items) or not len(self.half_lives):
            return
        latest = float(clock.max())
        if latest > self.now:
            if np.isfinite(self.now):
                self.counts *= 2.0 ** ((self.now - latest) / self.half_lives[:, None])
            self.now = latest
        weights = 2.0 ** ((clock[None, :] - self.now) / self.half_lives[:, None])
        for row, w in zip(self.counts, weights, strict=True):
            np.add.at(row, items, w)

    def shares(self) -> np.ndarray:
        """``(half-lives, n_items)``: each row's counts as shares of its total."""
        shares: np.ndarray = self.counts / np.maximum(self.counts.sum(1, keepdims=True), 1e-300)
        return shares

    def grow(self, n: int) -> None:
        self.counts = np.concatenate([self.counts, np.zeros((len(self.half_lives), n))], axis=1)

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts.copy(), "now": self.now}

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self.now = float(state["now"])


def _duration(seconds: float) -> str:
    """``86400`` -> ``1d``: a half-life on the wall clock, for feature names."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
