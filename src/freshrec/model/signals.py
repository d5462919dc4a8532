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
from torch import Tensor

from freshrec.model.base import Interactions
from freshrec.model.pairs import PairCounts

LAG_WEIGHTS = (1.0, 0.6, 0.36)
"""Transitions from the user's last, second-last and third-last item."""


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

    def __init__(self, n_items: int, window: int = 20, half_lives: tuple[float, ...] = (500.0, 5_000.0, 50_000.0)):
        self.window = window
        self.half_lives = np.asarray(half_lives, dtype=np.float64)
        self.transitions = PairCounts(n_items)
        self.cooc = PairCounts(n_items)
        self.popularity = np.zeros((len(half_lives), n_items), dtype=np.float64)
        self.interactions = np.zeros(n_items, dtype=np.float64)
        self._origin = 0.0  # stream position whose popularity weight is 1

    @property
    def n_items(self) -> int:
        return len(self.interactions)

    @property
    def names(self) -> list[str]:
        return ["transitions", "co-occurrence", *(f"popularity-{int(h)}" for h in self.half_lives), "untouched"]

    def grow(self, n: int) -> None:
        """``n`` new items, untouched."""
        self.transitions.grow(n)
        self.cooc.grow(n)
        self.popularity = np.concatenate([self.popularity, np.zeros((len(self.half_lives), n))], axis=1)
        self.interactions = np.concatenate([self.interactions, np.zeros(n)])

    # -- learning ----------------------------------------------------------
    def learn(self, events: Interactions, keep: np.ndarray | None = None) -> None:
        """Count ``events`` (those where ``keep`` is true): positive feedback
        only, because a disliked item does not follow or go with anything."""
        if keep is not None:
            events = events.take(np.flatnonzero(keep))
        if not len(events):
            return
        items = events.item.astype(np.int64)
        recent = events.hist_item[:, ::-1].astype(np.int64)  # most recent first
        for k in range(min(len(LAG_WEIGHTS), recent.shape[1])):
            valid = recent[:, k] >= 0
            self.transitions.add(recent[valid, k], items[valid])
        window = recent[:, : self.window]
        src = window[window >= 0]
        dst = np.broadcast_to(items[:, None], window.shape)[window >= 0]
        self.cooc.add(src, dst)
        self.cooc.add(dst, src)
        self._count(items, events.position.astype(np.float64))

    def _count(self, items: np.ndarray, position: np.ndarray) -> None:
        exponent = (position[None, :] - self._origin) / self.half_lives[:, None]
        if exponent.max() > 500:  # rescale before the growing weights could overflow
            shift = float(position.min())
            self.popularity *= 2.0 ** ((self._origin - shift) / self.half_lives[:, None])
            self._origin = shift
            exponent = (position[None, :] - self._origin) / self.half_lives[:, None]
        for row, weights in enumerate(2.0**exponent):
            np.add.at(self.popularity[row], items, weights)
        np.add.at(self.interactions, items, 1.0)

    # -- reading -----------------------------------------------------------
    def features(self, queries: Interactions) -> Tensor:
        """``(B, n_items, F)`` log-shares, F = len(:attr:`names`)."""
        n = self.n_items
        floor = 0.1 / max(n, 1)
        recent = queries.hist_item[:, ::-1].astype(np.int64)
        lags = recent[:, : len(LAG_WEIGHTS)]
        trans = self.transitions.mix(lags, np.asarray(LAG_WEIGHTS[: lags.shape[1]]) / sum(LAG_WEIGHTS))
        window = recent[:, : self.window]
        decay = 0.8 ** np.arange(window.shape[1])
        weights = np.where(window >= 0, decay, 0.0)
        cooc = self.cooc.mix(window, weights / np.maximum(weights.sum(1, keepdims=True), 1e-9))
        pop = self.popularity / np.maximum(self.popularity.sum(1, keepdims=True), 1e-300)
        out = np.empty((len(queries), n, len(self.names)), dtype=np.float32)
        out[:, :, 0] = np.log(trans + floor)
        out[:, :, 1] = np.log(cooc + floor)
        out[:, :, 2 : 2 + len(pop)] = np.log(pop.T + floor).astype(np.float32)[None]
        out[:, :, -1] = (self.interactions == 0)[None]
        return torch.from_numpy(out)

    # -- persistence ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "transitions": self.transitions.state(),
            "cooc": self.cooc.state(),
            "popularity": self.popularity.copy(),
            "interactions": self.interactions.copy(),
            "origin": self._origin,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.transitions.restore(state["transitions"])
        self.cooc.restore(state["cooc"])
        self.popularity = np.asarray(state["popularity"], dtype=np.float64).copy()
        self.interactions = np.asarray(state["interactions"], dtype=np.float64).copy()
        self._origin = float(state["origin"])
