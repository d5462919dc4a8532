"""What the counts took in, one :meth:`~freshrec.model.signals.CountSignals.learn`
call at a time: the learner's journal, which a server's copy of the counts applies
in order to stay equal to the learner's (see :mod:`freshrec.serve.blend`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Counted:
    """What one :meth:`CountSignals.learn` call counted, so that a copy elsewhere (the
    server's) can count the same and stay equal to the learner's: the items, each one's
    recent items (most recent first, ``-1`` padding), stream positions and times."""

    seq: int
    """This call's number: a copy applies only the one after its own last."""
    n_items: int
    """The catalog size when counted (a copy grows to it first)."""
    items: np.ndarray
    recent: np.ndarray
    position: np.ndarray
    time: np.ndarray

    def to_raw(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_raw(cls, raw: object, window: int) -> Counted:
        """From :meth:`to_raw`'s dict (read from a pipe or a store), validated:
        :class:`ValueError` unless the fields, shapes and codes are what a learner counts."""
        if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
            raise ValueError("not a counted increment: unexpected fields")
        seq, n = raw["seq"], raw["n_items"]
        if not (isinstance(seq, int) and isinstance(n, int) and seq > 0 and n >= 0):
            raise ValueError("counted seq and n_items must be non-negative integers")
        arrays = [np.asarray(raw[f]) for f in ("items", "recent", "position", "time")]
        items, recent, position, time = arrays
        b = len(items)
        if (
            items.shape != (b,)
            or recent.ndim != 2
            or recent.shape[0] != b
            or recent.shape[1] > window
            or position.shape != (b,)
            or time.shape != (b,)
            or not all(np.issubdtype(a.dtype, np.integer) for a in (items, recent, position))
            or not np.issubdtype(time.dtype, np.floating)
        ):
            raise ValueError("counted arrays have unexpected shapes or types")
        if b and (items.min() < 0 or items.max() >= n or recent.min() < -1 or recent.max() >= n):
            raise ValueError("counted item codes out of range")
        if b and (position.min() < 0 or np.isinf(time).any()):
            raise ValueError("counted positions must be non-negative and times finite or NaN")
        return cls(seq, n, items.astype(np.int64), recent.astype(np.int64), position.astype(np.int64), time)
