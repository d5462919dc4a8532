"""Metrics over replay outcomes: HR@K, NDCG@K, MRR, coverage@K, cold-start
hit rates and a moving-window curve of NDCG@10 along the stream."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshrec.evaluate.replay import Step

CURVE_WINDOW = 5_000


def hits(ranks: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.float64]:
    return (ranks < k).astype(np.float64)


def ndcg(ranks: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.float64]:
    """One relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0).astype(np.float64)


def reciprocal_rank(ranks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (ranks + 1.0), dtype=np.float64)


def moving_average(values: npt.NDArray[np.float64], window: int) -> npt.NDArray[np.float64]:
    """Mean of each full window of ``window`` consecutive values."""
    if len(values) < window:
        return np.array([values.mean()]) if len(values) else np.array([])
    sums = np.cumsum(np.concatenate([[0.0], values]))
    return np.asarray((sums[window:] - sums[:-window]) / window, dtype=np.float64)


def _mean(values: npt.NDArray[np.float64]) -> float | None:
    return float(values.mean()) if len(values) else None


@dataclass(frozen=True)
class Summary:
    k: int
    scored: int
    hr_at_10: float
    ndcg_at_10: float
    hr_at_k: float
    ndcg_at_k: float
    mrr: float
    coverage_at_k: float
    cold_item_hr_at_10: float | None
    cold_user_hr_at_10: float | None
    cold_item_scored: int
    cold_user_scored: int
    curve_x: npt.NDArray[np.int64]
    """Stream position (event index) at the end of each window."""
    curve_ndcg_at_10: npt.NDArray[np.float64]


def summarise(steps: Iterable[Step], n_items: int, k: int = 10, window: int = CURVE_WINDOW) -> Summary:
    events, ranks, cold_item, cold_user = [], [], [], []
    covered = np.zeros(n_items, dtype=bool)
    for step in steps:
        events.append(step.events)
        ranks.append(step.ranks)
        cold_item.append(step.cold_item)
        cold_user.append(step.cold_user)
        covered[step.top.ravel()] = True
    if not ranks:
        raise ValueError("nothing was scored: the log has no events after the warm-up")
    r = np.concatenate(ranks)
    at = np.concatenate(events)
    ci, cu = np.concatenate(cold_item), np.concatenate(cold_user)
    n10 = ndcg(r, 10)
    curve = moving_average(n10, window)
    x = at[window - 1 :: 1] if len(r) >= window else at[-1:]
    step_size = max(1, len(curve) // 400)  # a few hundred points are enough for a plot
    return Summary(
        k=k,
        scored=len(r),
        hr_at_10=float(hits(r, 10).mean()),
        ndcg_at_10=float(n10.mean()),
        hr_at_k=float(hits(r, k).mean()),
        ndcg_at_k=float(ndcg(r, k).mean()),
        mrr=float(reciprocal_rank(r).mean()),
        coverage_at_k=float(covered.mean()),
        cold_item_hr_at_10=_mean(hits(r[ci], 10)),
        cold_user_hr_at_10=_mean(hits(r[cu], 10)),
        cold_item_scored=int(ci.sum()),
        cold_user_scored=int(cu.sum()),
        curve_x=x[::step_size][: len(curve[::step_size])],
        curve_ndcg_at_10=curve[::step_size],
    )
