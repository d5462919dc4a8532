"""A bounded reservoir of past training examples, mixed into online batches
against catastrophic forgetting (experience replay)."""

from __future__ import annotations

import numpy as np

from freshrec.model.base import FIELDS, Interactions


class ReplayBuffer:
    """Reservoir sampling (Vitter's algorithm R): every example seen so far has
    the same chance to be in the buffer, so old tastes are not forgotten."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.data: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, batch: Interactions) -> None:
        if self.capacity == 0 or not len(batch):
            return
        if not self.data:
            self.data = {
                f: np.zeros((self.capacity, *getattr(batch, f).shape[1:]), dtype=getattr(batch, f).dtype)
                for f in FIELDS
            }
        n = len(batch)
        counters = self.seen + np.arange(n)
        slots = np.where(counters < self.capacity, counters, self.rng.integers(0, counters + 1))
        keep = slots < self.capacity
        for f in FIELDS:
            self.data[f][slots[keep]] = getattr(batch, f)[keep]
        self.seen += n

    def state(self) -> dict[str, object]:
        return {
            "seen": self.seen,
            "rng": self.rng.bit_generator.state,
            "data": {k: v.copy() for k, v in self.data.items()},
        }

    def restore(self, state: dict[str, object]) -> None:
        self.seen = int(state["seen"])  # type: ignore[call-overload]
        self.rng.bit_generator.state = state["rng"]  # type: ignore[assignment]
        self.data = {k: v.copy() for k, v in state["data"].items()}  # type: ignore[attr-defined]

    def sample(self, n: int) -> Interactions | None:
        size = len(self)
        if not size or n < 1:
            return None
        rows = self.rng.integers(0, size, n)
        return Interactions(**{f: self.data[f][rows] for f in FIELDS})
