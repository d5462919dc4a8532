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
        self.size = 0
        self.data: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

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
        draws = self.rng.integers(0, counters + 1)
        free = self.capacity - self.size  # free slots are filled first, then each draw replaces
        slots = np.where(np.arange(n) < free, self.size + np.arange(n), draws)
        keep = slots < self.capacity
        for f in FIELDS:
            self.data[f][slots[keep]] = getattr(batch, f)[keep]
        self.seen += n
        self.size = min(self.capacity, self.size + n)

    def forget_user(self, user: int) -> None:
        """Drop every example of ``user`` (a deleted user): the rows behind it move up."""
        if not self.data:
            return
        keep = np.flatnonzero(self.data["user"][: self.size] != user)
        if len(keep) == self.size:
            return
        for f in FIELDS:
            column = self.data[f]
            column[: len(keep)] = column[keep]
            column[len(keep) : self.size] = 0
        self.size = len(keep)

    def state(self) -> dict[str, object]:
        return {
            "seen": self.seen,
            "size": self.size,
            "rng": self.rng.bit_generator.state,
            "data": {k: v.copy() for k, v in self.data.items()},
        }

    def restore(self, state: dict[str, object]) -> None:
        self.seen = int(state["seen"])  # type: ignore[call-overload]
        self.size = int(state.get("size", min(self.seen, self.capacity)))  # type: ignore[call-overload]
        self.rng.bit_generator.state = state["rng"]  # type: ignore[assignment]
        self.data = {k: v.copy() for k, v in state["data"].items()}  # type: ignore[attr-defined]

    def sample(self, n: int) -> Interactions | None:
        size = len(self)
        if not size or n < 1:
            return None
        rows = self.rng.integers(0, size, n)
        return Interactions(**{f: self.data[f][rows] for f in FIELDS})
