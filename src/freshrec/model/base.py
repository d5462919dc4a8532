"""The model interface the replay evaluator and the server drive.

Items and users are contiguous integer codes (the caller keeps the id maps).
Every call is batch-first: one call carries many events or many queries, so a
model can vectorise scoring and learning.

A query or an event comes with the user's *history*: their last ``L`` events
before it, right-aligned (the most recent in the last column) and padded with
``-1`` on the left. The caller keeps histories current, so a model never has
to, and a stale parameter update can never make a history stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Interactions:
    """A batch of events (for ``fit``/``learn``) or queries (for ``score``).

    ``item``, ``type``, ``value`` are the events themselves; for queries
    ``item`` is ``-1``. ``time`` is epoch seconds. ``hist_*`` are ``(B, L)``
    arrays holding each row's history, padded with ``-1`` (items, types) or
    ``nan`` (values, times) on the left.
    """

    user: IntArray
    item: IntArray
    type: npt.NDArray[np.int8]
    value: FloatArray
    time: npt.NDArray[np.float64]
    hist_item: IntArray
    hist_type: npt.NDArray[np.int8]
    hist_value: FloatArray
    hist_time: npt.NDArray[np.float64]
    position: npt.NDArray[np.int64]
    """Index of each row in the stream (global event counter)."""

    def __len__(self) -> int:
        return len(self.user)

    @property
    def history_length(self) -> int:
        return int(self.hist_item.shape[1])

    def take(self, rows: npt.NDArray[np.integer]) -> Interactions:
        """The rows ``rows`` of every field."""
        return Interactions(**{f: getattr(self, f)[rows] for f in FIELDS})

    def concat(self, other: Interactions | None) -> Interactions:
        """This batch followed by ``other`` (same history length)."""
        if other is None:
            return self
        if self.history_length != other.history_length:
            raise ValueError("cannot join batches with different history lengths")
        return Interactions(**{f: np.concatenate([getattr(self, f), getattr(other, f)]) for f in FIELDS})

    @staticmethod
    def join(parts: list[Interactions]) -> Interactions:
        """The batches one after the other, in one copy (an empty list: ``ValueError``)."""
        if len({p.history_length for p in parts}) > 1:
            raise ValueError("cannot join batches with different history lengths")
        return Interactions(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})


FIELDS = tuple(Interactions.__dataclass_fields__)


class Recommender(Protocol):
    """What the evaluator and the server need from a model.

    ``score`` must not change the model; ``learn`` may defer its parameter
    update but must be reflected in the next ``score`` call made after at most
    256 further events (the evaluator calls ``learn`` at least that often).
    """

    name: str
    history_length: int
    """How many past events per user the model reads (0: none)."""

    def fit(self, events: Interactions) -> None:
        """Batch training on a time-ordered prefix of the log (warm-up)."""
        ...

    def score(self, queries: Interactions) -> FloatArray:
        """``(len(queries), n_items)`` scores; higher is better."""
        ...

    def learn(self, events: Interactions) -> None:
        """Online update on the next events of the stream, in order."""
        ...

    def params(self) -> dict[str, Any]:
        """Hyperparameters, for reports."""
        ...
