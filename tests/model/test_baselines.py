from __future__ import annotations

import numpy as np
import pytest

from freshrec.evaluate.replay import Sequences
from freshrec.model.baselines import RecentPopularity, Transitions
from tests.evaluate.helpers import tiny_log


def test_recent_popularity_equals_explicit_exponential_decay() -> None:
    rng = np.random.default_rng(3)
    rows = [("u", f"i{rng.integers(5)}", float(t)) for t in range(3_000)]
    log = tiny_log(rows, items=[f"i{n}" for n in range(5)])
    seqs = Sequences(log)
    model = RecentPopularity(log.n_items, half_life=50.0)  # small half-life: exercises the rescaling
    for start in range(0, 3_000, 256):
        model.learn(seqs.batch(np.arange(start, min(start + 256, 3_000)), 0))
    now = 2_999
    expected = np.zeros(5)
    for position, item in enumerate(log.item):
        expected[item] += 2.0 ** (-(now - position) / 50.0)
    got = model.score(seqs.batch(np.array([0]), 0, queries=True))[0]
    np.testing.assert_allclose(got, expected / expected.max(), rtol=1e-5)


def test_transitions_by_hand() -> None:
    # u1: a b c ; u2: a b d ; then u3 has just seen a, b
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 4), ("u2", "b", 5), ("u2", "d", 6)]
    rows += [("u3", "a", 7), ("u3", "b", 8), ("u3", "e", 9)]
    log = tiny_log(rows, items=["a", "b", "c", "d", "e"])
    seqs = Sequences(log)
    model = Transitions(log.n_items)
    model.learn(seqs.batch(np.arange(6), 3))
    # counts from each of the last 3 items to the next: a->b 2, a->c 1, b->c 1, a->d 1, b->d 1
    # query u3 after a, b (most recent b): 1.0 * row(b) + 0.6 * row(a)
    # row(b) = {c: .5, d: .5}; row(a) = {b: .5, c: .25, d: .25}
    scores = model.score(seqs.batch(np.array([8]), 3, queries=True))[0]
    expected = np.array([0, 0.6 * 0.5, 0.5 + 0.6 * 0.25, 0.5 + 0.6 * 0.25, 0])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # the popularity prior orders items no transition reaches: a (2 events) above e (none)
    assert scores[0] > scores[4]


def test_transitions_refuses_catalogs_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="at most"):
        Transitions(Transitions.max_items + 1)
