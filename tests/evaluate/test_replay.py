"""The replay against the protocol, on logs small enough to check by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.evaluate.metrics import summarise
from freshrec.evaluate.replay import rank_targets, replay
from freshrec.model.base import FloatArray, Interactions
from freshrec.model.baselines import Popularity
from tests.evaluate.helpers import tiny_log


def test_popularity_on_a_hand_checked_log() -> None:
    # catalog a..e; warm-up (first 40% = 2 events): u1 a, u2 a
    log = tiny_log(
        [("u1", "a", 1), ("u2", "a", 2), ("u1", "b", 3), ("u3", "a", 4), ("u2", "c", 5)],
        items=["a", "b", "c", "d", "e"],
    )
    steps = list(replay(Popularity(log.n_items), log, warmup=0.4, k=2))
    ranks = np.concatenate([s.ranks for s in steps]).tolist()
    # event 3, u1 -> b: counts a2 b0 c0 d0 e0; a removed (seen); b ties with c, d, e -> rank 3
    # event 4, u3 -> a: counts a2 b1; a is top -> rank 0
    # event 5, u2 -> c: counts a3 b1 c0; a removed; b above c, d and e tie -> rank 3
    assert ranks == [3, 0, 3]
    cold_user = np.concatenate([s.cold_user for s in steps]).tolist()
    assert cold_user == [True, True, True]
    summary = summarise(iter(steps), log.n_items, k=2, window=2)
    assert summary.scored == 3
    assert summary.hr_at_10 == pytest.approx(1.0)
    assert summary.ndcg_at_10 == pytest.approx((1 / np.log2(5) + 1 + 1 / np.log2(5)) / 3)
    assert summary.hr_at_k == pytest.approx(1 / 3)
    assert summary.ndcg_at_k == pytest.approx(1 / 3)
    assert summary.mrr == pytest.approx((1 / 4 + 1 + 1 / 4) / 3)
    # top-2 lists, ties going to the earlier item: {b, c} (a seen), {a, b}, {b, c}
    assert summary.coverage_at_k == pytest.approx(3 / 5)
    assert summary.curve_ndcg_at_10.tolist() == pytest.approx([(1 / np.log2(5) + 1) / 2, (1 + 1 / np.log2(5)) / 2])
    assert summary.curve_x.tolist() == [3, 4]


class Recorder:
    """A model that scores nothing in particular and records what it was given."""

    name = "recorder"
    history_length = 50

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.fitted = 0
        self.learned: list[int] = []
        self.queries: list[Interactions] = []

    def fit(self, events: Interactions) -> None:
        self.fitted += len(events)

    def learn(self, events: Interactions) -> None:
        self.learned.append(len(events))

    def score(self, queries: Interactions) -> FloatArray:
        self.queries.append(queries)
        return np.zeros((len(queries), self.n_items), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {}


def test_lag_warmup_hidden_targets_and_current_histories() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(4)}", f"i{rng.integers(30)}", float(t)) for t in range(1_000)]
    log = tiny_log(rows, items=[f"i{n}" for n in range(30)])
    model = Recorder(log.n_items)
    steps = list(replay(model, log, warmup=0.2))
    assert model.fitted == 200
    assert sum(model.learned) == 800 and max(model.learned) <= 256
    assert sum(len(s.events) for s in steps) == 800
    seen_so_far: dict[str, list[int]] = {}
    for event in range(200):
        seen_so_far.setdefault(rows[event][0], []).append(int(log.item[event]))
    for q in model.queries:
        assert (q.item == -1).all() and (q.type == -1).all() and np.isnan(q.value).all()
        for row in range(len(q)):
            user = log.user_ids[q.user[row]]
            history = [int(i) for i in q.hist_item[row] if i >= 0]
            assert history == seen_so_far.get(user, [])[-50:]  # every earlier event, even inside the chunk
            event = int(q.position[row])
            seen_so_far.setdefault(user, []).append(int(log.item[event]))


def test_all_tied_scores_rank_last() -> None:
    log = tiny_log([("u", "a", 1), ("v", "b", 2)], items=["a", "b", "c"])
    (step,) = replay(Recorder(log.n_items), log, warmup=0.5)
    assert step.ranks.tolist() == [2]  # b ties with a and c: both count against it


def test_invalid_arguments() -> None:
    log = tiny_log([("u", "a", 1)], items=["a"])
    with pytest.raises(ValueError, match="warmup"):
        list(replay(Recorder(1), log, warmup=1.0))
    with pytest.raises(ValueError, match="lag"):
        list(replay(Recorder(1), log, lag=257))


def brute_force_rank(scores: np.ndarray, target: int, seen: set[int]) -> int:
    t = -np.inf if np.isnan(scores[target]) else scores[target]
    rank = 0
    for item, s in enumerate(scores):
        if item == target or item in seen:
            continue
        s = -np.inf if np.isnan(s) else s
        rank += s >= t
    return rank


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n_items=st.integers(1, 12),
    n_rows=st.integers(1, 6),
)
def test_ranks_match_a_brute_force_reference(data: st.DataObject, n_items: int, n_rows: int) -> None:
    # few distinct values, so that ties are common; NaN and infinities included
    values = st.sampled_from([0.0, 1.0, 1.0, 2.0, -1.0, np.inf, -np.inf, np.nan])
    scores = np.array([[data.draw(values) for _ in range(n_items)] for _ in range(n_rows)], dtype=np.float32).reshape(
        n_rows, n_items
    )
    targets = np.array([data.draw(st.integers(0, n_items - 1)) for _ in range(n_rows)], dtype=np.int32)
    seen = [data.draw(st.sets(st.integers(0, n_items - 1))) for _ in range(n_rows)]
    rows = np.array([r for r, s in enumerate(seen) for _ in s], dtype=np.int64)
    items = np.array([i for s in seen for i in sorted(s)], dtype=np.int32)
    k = data.draw(st.integers(1, n_items))
    ranks, top = rank_targets(scores, targets, rows, items, k)
    for r in range(n_rows):
        assert ranks[r] == brute_force_rank(scores[r], int(targets[r]), seen[r] - {int(targets[r])})
        assert len(set(top[r].tolist())) == k
        remaining = [i for i in range(n_items) if i not in seen[r] or i == targets[r]]
        if k <= len(remaining):
            assert set(top[r].tolist()) <= set(remaining)
