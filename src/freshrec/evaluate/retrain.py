"""``freshrec-retrain``: what periodic batch training would give, for comparison.

Engines without online learning retrain now and then and serve a frozen
model in between. This ablation does exactly that under the replay: at 20%
of the log (the warm-up), then at 30%, 40%, ..., 90%, a fresh model is built
and warm-started on every event so far, with the warm start's schedule; in
between it is frozen (histories still grow, as they would in serving). Like
``freshrec-frozen`` it stands outside rule 4 of the protocol on purpose: it
measures what learning from every event is worth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from freshrec.model.base import FIELDS, FloatArray, Interactions, Recommender


class PeriodicRetrain:
    """A model rebuilt and refitted from scratch at fixed shares of the stream.

    Parameters
    ----------
    build
        Makes a fresh, untrained model.
    n_events
        Length of the whole log, to place the retraining points.
    shares
        Where along the log (after the warm-up) to retrain.
    """

    name = "freshrec-retrain"

    def __init__(
        self,
        build: Callable[[], Recommender],
        n_events: int,
        shares: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    ):
        self.build = build
        self.points = [int(n_events * s) for s in shares]
        self.model = build()
        self.history_length = self.model.history_length
        self.seen: list[Interactions] = []
        self.retrained = 0

    def fit(self, events: Interactions) -> None:
        self.seen = [events]
        self.model.fit(events)

    def score(self, queries: Interactions) -> FloatArray:
        return self.model.score(queries)

    def learn(self, events: Interactions) -> None:
        if not len(events):
            return
        self.seen.append(events)
        reached = int(events.position.max()) + 1
        due = [p for p in self.points if p <= reached]
        if due:
            self.points = [p for p in self.points if p > reached]
            everything = Interactions(**{f: np.concatenate([getattr(b, f) for b in self.seen]) for f in FIELDS})
            self.seen = [everything]
            self.model = self.build()
            self.model.fit(everything)
            self.retrained += 1

    def params(self) -> dict[str, Any]:
        return {"retrained": self.retrained, "model": self.model.params()}
