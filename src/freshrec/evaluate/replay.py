"""The prequential replay: for every event after the warm-up, score, then learn.

Protocol (``../shared/BENCHMARK.md``, prequential-v1), and how it is met:

* the log is sorted by time (stable), see :mod:`freshrec.evaluate.log`;
* the first ``warmup`` share of events goes to ``model.fit`` and is not scored;
* every later event is scored against the whole catalog, with the items its
  user interacted with before removed (the target itself always stays); the
  rank of the target is the number of other remaining items scoring greater
  than *or equal to* it, so ties count against the model;
* the stream is cut into chunks of at most ``lag`` events (256): a chunk is
  scored with the parameters learned before it, then learned, so parameter
  updates lag the stream by at most 255 events;
* every query carries its user's history up to the event itself (inside a
  chunk too), so histories are always current.

The replay is a generator of :class:`Step` results, one per chunk; the
caller aggregates them (:mod:`freshrec.evaluate.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshrec.evaluate.log import EventLog
from freshrec.model.base import FloatArray, Interactions, Recommender
from freshrec.model.histories import gathered

MAX_LAG = 256


class Sequences:
    """Each user's events in time order, for vectorised history look-ups.

    ``order`` lists event indices grouped by user (time order within a user);
    ``start[u]`` is where user ``u``'s run begins and ``before[e]`` is how many
    earlier events event ``e``'s user has, so a user's history before ``e`` is
    ``order[start[u] : start[u] + before[e]]``.
    """

    def __init__(self, log: EventLog):
        self.log = log
        self.order = np.argsort(log.user, kind="stable")
        counts = np.bincount(log.user, minlength=log.n_users)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.before = np.empty(len(log), dtype=np.int64)
        self.before[self.order] = np.arange(len(log)) - np.repeat(self.start, counts)
        self.item_before = _count_before(log.item, log.n_items)
        """Earlier interactions with each event's item (for cold-item metrics)."""

    def batch(self, events: npt.NDArray[np.int64], length: int, queries: bool = False) -> Interactions:
        """Events (or queries, with the event itself hidden) with their histories."""
        log = self.log
        users = log.user[events]
        cols = self.before[events][:, None] - length + np.arange(length)
        valid = cols >= 0
        at = np.where(valid, self.order[self.start[users][:, None] + np.where(valid, cols, 0)], -1)
        hist, htype, hvalue, htime = gathered(at, log.item, log.type, log.value, log.time)
        hidden = np.full(len(events), -1)
        return Interactions(
            user=users,
            item=hidden.astype(np.int32) if queries else log.item[events],
            type=hidden.astype(np.int8) if queries else log.type[events],
            value=np.full(len(events), np.nan, np.float32) if queries else log.value[events],
            time=log.time[events],
            hist_item=hist,
            hist_type=htype,
            hist_value=hvalue,
            hist_time=htime,
            position=events.astype(np.int64),
        )

    def seen(self, events: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """``(row, item)`` pairs: every item each event's user touched before it."""
        lengths = self.before[events]
        rows = np.repeat(np.arange(len(events)), lengths)
        firsts = np.repeat(self.start[self.log.user[events]], lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.log.item[self.order[firsts + within]]


def _count_before(codes: npt.NDArray[np.int32], n: int) -> npt.NDArray[np.int64]:
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty(len(codes), dtype=np.int64)
    out[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    return out


def rank_targets(
    scores: FloatArray,
    targets: npt.NDArray[np.int32],
    seen_rows: npt.NDArray[np.int64],
    seen_items: npt.NDArray[np.int32],
    k: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Ranks of the targets and each row's top ``k`` remaining items.

    The rank is the number of other remaining items whose score is greater
    than or equal to the target's; NaN scores count as minus infinity.
    """
    rows = np.arange(len(targets))
    s = np.where(np.isnan(scores), -np.inf, scores)
    removed = np.zeros(s.shape, dtype=bool)
    removed[seen_rows, seen_items] = True
    removed[rows, targets] = False  # a repeated item is still the target
    target_scores = s[rows, targets]
    others = ~removed
    others[rows, targets] = False
    ranks = ((s >= target_scores[:, None]) & others).sum(axis=1)
    # removed items go below every remaining one, even one scored minus infinity
    lowest = np.finfo(np.float64).min
    return ranks.astype(np.int64), top_k(np.where(removed, -np.inf, np.maximum(s, lowest)), k)


def top_k(scores: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.int64]:
    """The ``k`` best items of each row, in item order; ties at the cut go to
    the lower item code, so the lists (and coverage) are deterministic."""
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    return np.nonzero(chosen)[1].reshape(len(scores), k).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Step:
    """Outcome of one scored chunk."""

    events: npt.NDArray[np.int64]
    ranks: npt.NDArray[np.int64]
    top: npt.NDArray[np.int64]
    cold_item: npt.NDArray[np.bool_]
    cold_user: npt.NDArray[np.bool_]


def warmup_size(n_events: int, warmup: float) -> int:
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    return int(n_events * warmup)


def replay(
    model: Recommender,
    log: EventLog,
    warmup: float = 0.2,
    k: int = 10,
    lag: int = MAX_LAG,
    cold: int = 5,
) -> Iterator[Step]:
    """Fit on the warm-up, then score and learn chunk by chunk; yields one
    :class:`Step` per chunk of at most ``lag`` events."""
    if not 1 <= lag <= MAX_LAG:
        raise ValueError(f"lag must be between 1 and {MAX_LAG}, got {lag}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    seqs = Sequences(log)
    length = int(model.history_length)
    start = warmup_size(len(log), warmup)
    if start:
        model.fit(seqs.batch(np.arange(start, dtype=np.int64), length))
    for first in range(start, len(log), lag):
        events = np.arange(first, min(first + lag, len(log)), dtype=np.int64)
        scores = model.score(seqs.batch(events, length, queries=True))
        if scores.shape != (len(events), log.n_items):
            raise ValueError(f"{model.name}.score returned shape {scores.shape}, expected {(len(events), log.n_items)}")
        ranks, top = rank_targets(scores, log.item[events], *seqs.seen(events), k)
        yield Step(events, ranks, top, seqs.item_before[events] < cold, seqs.before[events] < cold)
        model.learn(seqs.batch(events, length))
