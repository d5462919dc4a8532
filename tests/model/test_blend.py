"""The blend and its counting signals: what each promises on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.encoders.hashing import HashingEncoder
from freshrec.evaluate.replay import Sequences
from freshrec.learn.recommender import build_freshrec
from freshrec.model import pairs, signals, similarity
from freshrec.model.base import Interactions
from freshrec.model.blend import N_CONTEXTS, Features, Gate, seen_mask
from freshrec.model.pairs import PairCounts
from freshrec.model.signals import CountSignals, Decayed
from freshrec.settings import BlendSettings, LearnSettings, ModelSettings
from tests.evaluate.helpers import tiny_log


def events(hist: list[list[int]], items: list[int], start: int = 0) -> Interactions:
    """Rows with the given (right-aligned, -1 padded) histories and items."""
    n, length = len(items), len(hist[0])
    h = np.array(hist, dtype=np.int32)
    return Interactions(
        user=np.arange(n, dtype=np.int32),
        item=np.array(items, dtype=np.int32),
        type=np.zeros(n, np.int8),
        value=np.full(n, np.nan, np.float32),
        time=np.arange(start, start + n, dtype=np.float64),
        hist_item=h,
        hist_type=np.where(h >= 0, 0, -1).astype(np.int8),
        hist_value=np.full((n, length), np.nan, np.float32),
        hist_time=np.where(h >= 0, 0.0, np.nan),
        position=np.arange(start, start + n, dtype=np.int64),
    )


@pytest.mark.parametrize("dense", [True, False])
def test_pair_counts_mix_rows_normalised(dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs, "DENSE_MAX", 1_000 if dense else 1)
    c = PairCounts(5)
    c.add(np.array([0, 0, 0, 1]), np.array([2, 2, 3, 4]))
    mixed = c.mix(np.array([[0, 1], [-1, 0]]), np.array([[0.5, 0.5], [1.0, 1.0]]))
    np.testing.assert_allclose(mixed[0], [0, 0, 0.5 * 2 / 3, 0.5 / 3, 0.5], rtol=1e-6)
    np.testing.assert_allclose(mixed[1], [0, 0, 2 / 3, 1 / 3, 0], rtol=1e-6)  # padding adds nothing


def test_pair_counts_backends_agree_across_growth_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    dense = PairCounts(30)
    monkeypatch.setattr(pairs, "DENSE_MAX", 10)
    sparse = PairCounts(30)
    assert dense.dense is not None and sparse.dense is None
    src, weight = rng.integers(-1, 33, (6, 4)), rng.random((6, 4))
    for step in range(20):
        a, b = rng.integers(0, 30, 50), rng.integers(0, 30, 50)
        dense.add(a, b)
        sparse.add(a, b)
        if step == 10:
            dense.grow(3)
            sparse.grow(3)
    assert dense.dense is None  # grew past the (patched) limit: now sparse too
    np.testing.assert_allclose(dense.mix(src, weight), sparse.mix(src, weight), rtol=1e-6)
    restored = PairCounts(1)
    restored.restore(sparse.state())
    np.testing.assert_allclose(restored.mix(src, weight), sparse.mix(src, weight), rtol=1e-6)
    assert restored.nnz == sparse.nnz > 0


def test_signals_follow_what_came_next_and_what_is_recent() -> None:
    s = CountSignals(6, window=3, half_lives=(2.0, 1_000.0))
    # item 1 always follows item 0; item 4 was popular long ago, item 5 just now
    s.learn(events([[-1, -1, 0]] * 10, [1] * 10))
    s.learn(events([[-1, -1, -1]] * 20, [4] * 20, start=10))
    s.learn(events([[-1, -1, -1]] * 3, [5] * 3, start=30))
    per_query, per_item = s.features(events([[-1, -1, 0], [-1, -1, -1]], [-1, -1], start=40))
    names = s.names
    assert per_query[0, names.index("transitions")].argmax() == 1
    assert (per_query[1, names.index("transitions")] == per_query[1, names.index("transitions"), 0]).all()
    item_names = names[s.n_per_query :]
    short, long = per_item[:, item_names.index("popularity-2")], per_item[:, item_names.index("popularity-1000")]
    assert short.argmax() == 5 and long.argmax() == 4
    untouched = per_item[:, item_names.index("untouched")]
    assert untouched.tolist() == [1, 0, 1, 1, 0, 0]  # item 0 only appears in histories here


def test_long_warm_start_with_short_half_life_stays_finite() -> None:
    s = CountSignals(3, window=2, half_lives=(10.0, 1_000.0))
    n = 50_000  # 5,000 half-lives in one batch: one weight for all would overflow
    s.learn(events([[-1, -1]] * n, [i % 3 for i in range(n)]))
    _, per_item = s.features(events([[-1, -1]], [-1], start=n))
    assert torch.isfinite(per_item).all() and np.isfinite(s.popularity.counts).all()


def test_decayed_counts_follow_their_clock_and_never_overflow() -> None:
    d = Decayed(3, (10.0, 1e13))
    d.add(np.array([0, 0]), np.array([0.0, 5.0]))
    d.add(np.array([1]), np.array([1e6]))  # 100,000 half-lives later: item 0 is forgotten, not inf
    d.add(np.array([2]), np.array([1e6 - 10]))  # out of order: counts as ten seconds old
    assert np.isfinite(d.counts).all() and d.now == 1e6
    np.testing.assert_allclose(d.counts[0], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(d.counts[1], [2.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(d.shares().sum(1), [1.0, 1.0])
    restored = Decayed(3, (10.0, 1e13))
    restored.restore(d.state())
    np.testing.assert_array_equal(restored.counts, d.counts)


def test_recency_counts_on_the_wall_clock_not_the_stream() -> None:
    s = CountSignals(3, window=2, half_lives=(1_000.0,))
    day = 86_400.0
    old = events([[-1, -1]] * 50, [0] * 50)
    old.time[:] = 0.0  # fifty events a month ago
    s.learn(old)
    new = events([[-1, -1]] * 5, [1] * 5, start=50)
    new.time[:] = 30 * day  # five today
    s.learn(new)
    _, per_item = s.features(events([[-1, -1]], [-1], start=55))
    item_names = s.names[s.n_per_query :]
    assert per_item[:, item_names.index("popularity-1000")].argmax() == 0  # by events: item 0
    assert per_item[:, item_names.index("recency-1d")].argmax() == 1  # by days: item 1
    assert per_item[:, item_names.index("recency-30d")].argmax() == 0


def test_gate_context_by_history_length_and_time_since_previous_event() -> None:
    batch = events([[-1, -1, -1], [-1, 2, 3], [1, 2, 3]], [0, 0, 0])
    batch.hist_time[1:, -1] = batch.time[1:] - np.array([30.0, 10 * 86_400.0])
    ctx = Gate.context(batch)
    assert ctx[:, 0].tolist() == [0, 2, 2]  # 0 events; 2-4 events twice
    assert (ctx[:, 1] - N_CONTEXTS[0]).tolist() == [N_CONTEXTS[1] - 1, 0, N_CONTEXTS[1] - 2]  # none, <1 min, >= 1 week


def test_text_similarity_favours_items_that_read_alike() -> None:
    text = np.eye(4, dtype=np.float32)
    text[3] = [0.9, 0.1, 0, 0]  # reads like item 0
    s = CountSignals(4, window=2, half_lives=(10.0,), text=text)
    per_query, _ = s.features(events([[-1, 0]], [-1]))
    similarity = per_query[0, s.names.index("text-similarity")]
    assert similarity.argsort(descending=True)[:2].tolist() == [0, 3]


def test_text_nearest_finds_what_reads_like_any_one_recent_item() -> None:
    text = np.eye(5, dtype=np.float32)
    text[3] = [0.95, 0.05, 0, 0, 0]  # reads like item 0
    text[4] = [0.5, 0.5, 0, 0, 0]  # reads a bit like both 0 and 1
    s = CountSignals(5, window=2, half_lives=(10.0,), text=text)
    per_query, _ = s.features(events([[0, 1], [-1, -1]], [-1, -1]))
    nearest, mean = per_query[0, s.names.index("text-nearest")], per_query[0, s.names.index("text-similarity")]
    assert nearest[3] > nearest[4]  # close to one of them beats halfway to both
    assert mean[4] > mean[3]  # unlike the mean profile
    assert torch.isfinite(per_query[1]).all()  # an empty history


def test_text_nearest_from_the_stored_pair_similarities_equals_the_products_and_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small catalogs look up each pair's similarity, made once and grown with the catalog;
    larger ones multiply: both give the same feature."""
    rng = np.random.default_rng(2)
    text = rng.normal(size=(12, 6)).astype(np.float32)
    queries = events([[-1, -1, 3], [0, 1, 2], [-1, -1, -1], [4, -1, 11]], [-1, -1, -1, -1])
    looked_up = CountSignals(8, window=3, half_lives=(10.0,), text=text[:8])
    column = looked_up.names.index("text-nearest")
    looked_up.features(queries.take(np.arange(2)))  # the similarities are made here, for 8 items
    looked_up.grow(text[8:])
    assert looked_up._gram is not None and looked_up._gram.shape == (12, 12)
    assert looked_up.text is not None
    products = similarity.nearest(torch.from_numpy(looked_up.text), queries)
    torch.testing.assert_close(looked_up.features(queries)[0][:, column], products)
    monkeypatch.setattr(signals, "GRAM_MAX_ITEMS", 4)
    large = CountSignals(12, window=3, half_lives=(10.0,), text=text)
    torch.testing.assert_close(large.features(queries)[0][:, column], products)
    assert large._gram is None


def gate_data(n: int, rows: int, seed: int) -> tuple[Features, torch.Tensor]:
    """A network feature of noise and a per-query feature that marks the target."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n, (rows,), generator=g)
    informative = torch.randn(rows, 1, n, generator=g)
    informative[torch.arange(rows), 0, target] += 3.0
    network = torch.randn(rows, n, generator=g)
    per_item = torch.zeros(n, 1)
    context = torch.stack(
        [torch.randint(0, N_CONTEXTS[0], (rows,), generator=g), torch.full((rows,), N_CONTEXTS[0])], 1
    )
    return Features(network, informative, per_item, context), target


def test_gate_learns_to_trust_the_feature_that_predicts() -> None:
    gate = Gate(["network", "signal", "flat"], 1, BlendSettings())
    features, target = gate_data(50, 256, seed=0)
    for _ in range(10):
        gate.learn(features, target, torch.ones(len(target)), torch.zeros(len(target), 50, dtype=torch.bool))
    w = gate.weight.detach()
    used = w[: N_CONTEXTS[0]] + w[N_CONTEXTS[0]]  # every row here has the first time context
    assert (used[:, 1] > used[:, 0]).all() and (used[:, 1] > 1.0).all()
    test, test_target = gate_data(50, 256, seed=1)
    hits = (gate.combine(test).argmax(1) == test_target).float().mean()
    assert hits > 0.5  # noise alone would give 1 in 50


def test_gate_leaves_excluded_features_at_zero_and_rejects_unknown_names() -> None:
    gate = Gate(["network", "signal", "flat"], 1, BlendSettings(exclude=("signal",)))
    features, target = gate_data(50, 128, seed=2)
    gate.learn(features, target, torch.ones(len(target)), torch.zeros(len(target), 50, dtype=torch.bool))
    assert (gate.weight.detach()[:, 1] == 0).all()
    with pytest.raises(ValueError, match="unknown features"):
        Gate(["network"], 0, BlendSettings(exclude=("nope",)))


def test_seen_mask_hides_history_but_not_the_target() -> None:
    mask = seen_mask(events([[-1, 1, 2], [2, 2, 3]], [2, 0]), 5)
    assert mask.tolist() == [[False, True, False, False, False], [False, False, True, True, False]]


def test_blended_model_calibrates_on_the_warm_start_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    rows = [(f"u{rng.integers(15)}", f"i{(t * 7) % 30}", float(t)) for t in range(600)]
    log = tiny_log(rows, items=[f"i{n}" for n in range(35)])
    text = HashingEncoder(32).encode(log.catalog.texts)
    settings = ModelSettings(dim=16, history_length=6, heads=2)
    m = build_freshrec(log.n_items, text, settings, LearnSettings(batch_size=64))
    seqs = Sequences(log)
    before = m.gate.weight.detach().clone() if m.gate is not None else None
    m.fit(seqs.batch(np.arange(400), 6))
    assert m.gate is not None and before is not None
    assert not torch.equal(m.gate.weight.detach(), before)  # the calibration slice moved the weights
    assert m.signals is not None
    assert set(m.params()["blend"]["history 0"]) == {"network", "learned-nearest", *m.signals.names}
    queries = seqs.batch(np.arange(400, 450), 6, queries=True)
    state = m.state()
    twin = build_freshrec(log.n_items, text, settings, LearnSettings(batch_size=64))
    twin.load_state(state)
    np.testing.assert_allclose(m.score(queries), twin.score(queries), rtol=1e-5, atol=1e-5)
