"""Which item tower serves a model snapshot (:class:`Tower`)."""

from __future__ import annotations

import time

import torch

from freshrec.model.snapshot import Snapshot
from freshrec.serve.scoring import same, tower_of


class Tower:
    """The item tower served (the adapter from each item's text to its vector, and the
    text bias: :func:`~freshrec.serve.scoring.tower_of`) and since when.

    Why keep one: the learner's tower comes with each whole snapshot, a few minutes apart
    on a million items, and moves every item's vector. A candidate index coded with the
    tower before found 0.972 of the top 10 with the lists its build probed, where 0.99 was
    wanted, so it was built again after each: 20 to 35 s of a core beside the requests.
    With the tower kept, the index stays as current as the rows coded anew make it, and a
    whole snapshot's build reuses what the tower made of the items' text
    (:func:`~freshrec.serve.scoring.build_scoring`). The item rows, the user encoder and
    everything else still come from the newest snapshot. What a kept tower costs, in the
    prequential replay (``benchmarks/tower_lag.py``): one 5,000 to 100,000 learned events
    old, -0.9% to +1.8% NDCG@10 on ml-100k, ml-1m-part and Steam; 20,000 events on Steam
    (40% of its stream), -5.2%; never refreshed, -3.9% and -8.8%: so it is kept for
    ``[serve.retrieval] tower_s`` at most."""

    def __init__(self) -> None:
        self.served: dict[str, torch.Tensor] | None = None
        self.since = time.monotonic()
        """When :attr:`served` was first served (``time.monotonic``)."""

    def pick(self, snapshot: Snapshot | None, hold_s: float) -> dict[str, torch.Tensor] | None:
        """The tower to serve ``snapshot`` with: the one served, until it is ``hold_s`` old
        (if it fits the snapshot's shapes), then the snapshot's own."""
        if snapshot is None:
            return None
        incoming, held, now = tower_of(snapshot.state), self.served, time.monotonic()
        fits = (
            held is not None
            and held.keys() == incoming.keys()
            and all(held[name].shape == incoming[name].shape for name in held)
        )
        if fits and now - self.since < hold_s:
            return held
        if held is None or not same(tuple(held.values()), tuple(incoming.values())):
            self.since = now
        self.served = incoming
        return incoming

    @property
    def age_s(self) -> float:
        """Seconds since the tower served was first served."""
        return time.monotonic() - self.since
