"""Users' histories as the network reads them: right-aligned rows of item codes,
event type codes, values and times, padded on the left (``-1`` and ``nan``).

Built here for everyone: :func:`left_padded` from per-user histories (the
learner's packed ones, a request's history read from the store), and
:func:`gathered` from index arrays into a whole log's columns (the replay
evaluator, vectorised over every query of a chunk); :func:`tensors` hands a batch of
them to the network (:class:`~freshrec.model.sequence.SequenceNet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from freshrec.model.base import Interactions

Step = tuple[int, int, float, float]
"""One history event: item code, event type code, value (``nan``: none), time."""
STEP = np.dtype([("item", np.int32), ("type", np.int8), ("value", np.float32), ("time", np.float64)])
"""One history event, packed (17 bytes): how the learner keeps its users' histories."""


def left_padded(
    pasts: Sequence[Sequence[Step] | np.ndarray], length: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Item codes, type codes, values and times of each history's last ``length`` events,
    ``(len(pasts), length)`` each, oldest first and padded on the left. A history is a
    list of steps or an array of :data:`STEP` rows."""
    n = len(pasts)
    hist = np.full((n, length), -1, dtype=np.int32)
    htype = np.full((n, length), -1, dtype=np.int8)
    hvalue = np.full((n, length), np.nan, dtype=np.float32)
    htime = np.full((n, length), np.nan, dtype=np.float64)
    for r, past in enumerate(pasts):
        k = min(len(past), length)
        if not k:
            continue
        steps = past[-k:] if isinstance(past, np.ndarray) else np.array(list(past[-k:]), dtype=STEP)
        hist[r, -k:], htype[r, -k:] = steps["item"], steps["type"]
        hvalue[r, -k:], htime[r, -k:] = steps["value"], steps["time"]
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


class HistoryTensors(TypedDict):
    """The keyword arguments of :meth:`SequenceNet.users` for a batch of users."""

    hist_item: Tensor
    hist_type: Tensor
    hist_value: Tensor
    hist_time: Tensor
    time: Tensor
    user: Tensor


def tensors(batch: Interactions) -> HistoryTensors:
    """A batch's histories as the network's keyword arguments."""
    return {
        "hist_item": torch.from_numpy(np.ascontiguousarray(batch.hist_item)).long(),
        "hist_type": torch.from_numpy(np.ascontiguousarray(batch.hist_type)).long(),
        "hist_value": torch.from_numpy(np.ascontiguousarray(batch.hist_value)).float(),
        "hist_time": torch.from_numpy(np.ascontiguousarray(batch.hist_time)).double(),
        "time": torch.from_numpy(np.ascontiguousarray(batch.time)).double(),
        "user": torch.from_numpy(np.ascontiguousarray(batch.user)).long(),
    }


def compact(history: HistoryTensors, extra: Tensor) -> Tensor:
    """The sorted rows of the item table that ``history`` and ``extra`` name, with the
    histories renumbered into them (in place): a step on a large catalog computes those
    rows of :meth:`SequenceNet.item_table` alone."""
    hist = history["hist_item"]
    rows: Tensor = torch.unique(torch.cat([hist[hist >= 0], extra]))
    history["hist_item"] = torch.where(hist >= 0, torch.searchsorted(rows, hist.clamp(min=0)), hist)
    return rows
