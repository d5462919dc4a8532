"""Users' histories as the network reads them: right-aligned rows of item codes,
event type codes, values and times, padded on the left (``-1`` and ``nan``).

Built here for everyone: :func:`left_padded` from per-user lists of steps (a
request's history read from the store; the learner packs its own, see
:mod:`freshrec.learn.histories`), and
:func:`gathered` from index arrays into a whole log's columns (the replay
evaluator, vectorised over every query of a chunk).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Step = tuple[int, int, float, float]
"""One history event: item code, event type code, value (``nan``: none), time."""


def left_padded(
    pasts: Sequence[Sequence[Step]], length: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Item codes, type codes, values and times of each history's last ``length`` events,
    ``(len(pasts), length)`` each, oldest first and padded on the left."""
    n = len(pasts)
    hist = np.full((n, length), -1, dtype=np.int32)
    htype = np.full((n, length), -1, dtype=np.int8)
    hvalue = np.full((n, length), np.nan, dtype=np.float32)
    htime = np.full((n, length), np.nan, dtype=np.float64)
    for r, past in enumerate(pasts):
        past = past[-length:] if length else ()
        if not past:
            continue
        k = len(past)
        cols = np.array(past, dtype=np.float64)
        hist[r, -k:], htype[r, -k:] = cols[:, 0], cols[:, 1]
        hvalue[r, -k:], htime[r, -k:] = cols[:, 2], cols[:, 3]
    return hist, htype, hvalue, htime


def gathered(
    index: npt.NDArray[np.int64],
    item: npt.NDArray[np.integer],
    type_: npt.NDArray[np.integer],
    value: npt.NDArray[np.floating],
    time: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The same arrays as :func:`left_padded`, from ``index``, ``(B, L)`` positions in the
    columns ``item``, ``type_``, ``value`` and ``time`` (``-1``: padding)."""
    valid = index >= 0
    at = np.where(valid, index, 0)
    return (
        np.where(valid, item[at], -1).astype(np.int32),
        np.where(valid, type_[at], -1).astype(np.int8),
        np.where(valid, value[at], np.nan).astype(np.float32),
        np.where(valid, time[at], np.nan).astype(np.float64),
    )
