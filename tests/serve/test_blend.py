"""The blend served: the server's copy of the counts follows the learner's, and its
lists rank by the same scores the learner's model gives (what the evaluator measures)."""

from __future__ import annotations

import dataclasses
import threading
import uuid

import numpy as np
import pytest
import torch

from freshrec import serialization
from freshrec.bus import RedisBus, keys
from freshrec.domain import Event, EventType
from freshrec.learn.recommender import build_freshrec
from freshrec.learn.sender import Sender
from freshrec.model import similarity
from freshrec.model.base import Interactions
from freshrec.model.blend import contributions
from freshrec.model.deltas import apply, delta_since, read
from freshrec.model.freshrec import FreshRec
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.replica import follow
from freshrec.settings import ClusterSettings, LearnSettings
from tests.serve.conftest import wait_for
from tests.serve.test_ranker import IDS, MODEL, T0, items, text

LENGTH = MODEL.history_length


def events(rng: np.random.Generator, n: int, start: int) -> Interactions:
    """Users who stick to a topic and, within it, often go from item ``k`` to ``k + 3``."""
    users = rng.integers(0, 3, n)
    hist = (users[:, None] + 3 * rng.integers(0, 9, (n, LENGTH))).astype(np.int32)
    follows = rng.random(n) < 0.6
    item = np.where(follows, hist[:, -1] + 3, users + 3 * rng.integers(0, 10, n)).astype(np.int32)
    times = T0 + np.arange(start, start + n, dtype=np.float64) * 60
    return Interactions(
        user=users.astype(np.int32),
        item=item,
        type=np.full(n, 1, dtype=np.int8),
        value=np.full(n, np.nan, dtype=np.float32),
        time=times,
        hist_item=hist,
        hist_type=np.full((n, LENGTH), 1, dtype=np.int8),
        hist_value=np.full((n, LENGTH), np.nan, dtype=np.float32),
        hist_time=times[:, None] - 60 * np.arange(LENGTH, 0, -1),
        position=np.arange(start, start + n, dtype=np.int64),
    )


def snapshot_of(model: FreshRec, blend: dict[str, object] | None, **info: int) -> Snapshot:
    return Snapshot.of(model.net, IDS, [], checkpoint=1, updates=info.get("updates", 0), offset=0, blend=blend)


@pytest.fixture(scope="module")
def learned() -> tuple[FreshRec, Snapshot, Snapshot]:
    """A model with the blend, its whole snapshot (counts included) and a later one that
    carries only what the counts took in since, the way the learner sends them."""
    rng = np.random.default_rng(1)
    model = build_freshrec(len(IDS), text(IDS), MODEL, LearnSettings(epochs=3))
    assert model.signals is not None
    model.fit(events(rng, 400, 0))
    model.signals.journal = []
    whole = snapshot_of(model, {**model.blend_part(), "signals": model.signals.state()})  # type: ignore[dict-item]
    for start in range(400, 700, 100):
        batch = events(rng, 100, start)
        model.score(batch)
        model.learn(batch)
    later = snapshot_of(model, model.blend_part(), updates=3)
    return model, whole, later


def aligned_ranker() -> Ranker:
    catalog = Catalog()
    catalog.put(items(), text(IDS))
    return Ranker(catalog)


def history(*codes: int) -> list[Event]:
    return [Event("u", IDS[c], EventType.CLICK, T0 + 60 * n) for n, c in enumerate(codes)]


def query(codes: list[int], now: float) -> Interactions:
    hist = np.full((1, LENGTH), -1, dtype=np.int32)
    hist[0, -len(codes) :] = codes
    times = np.full((1, LENGTH), np.nan)
    times[0, -len(codes) :] = T0 + 60 * np.arange(len(codes))
    return Interactions(
        user=np.zeros(1, np.int32),
        item=np.full(1, -1, np.int32),
        type=np.zeros(1, np.int8),
        value=np.full(1, np.nan, np.float32),
        time=np.array([now]),
        hist_item=hist,
        hist_type=np.where(hist >= 0, 1, -1).astype(np.int8),
        hist_value=np.full((1, LENGTH), np.nan, np.float32),
        hist_time=times,
        position=np.zeros(1, np.int64),
    )


def served_scores(
    ranker: Ranker, codes: list[int] | list[Event], now: float, held: list[Event] | None = None
) -> np.ndarray:
    past = [c for c in codes if isinstance(c, Event)] or history(*(c for c in codes if isinstance(c, int)))
    listed = ranker.recommend(past, now, Options(k=len(IDS), exclude_seen=False), held=held)
    scores = np.full(len(IDS), np.nan)
    for r in listed:
        scores[IDS.index(r.item_id)] = r.score
    return scores


def test_the_served_blend_ranks_by_the_learners_scores_from_a_whole_snapshot_and_the_counts_since(
    learned: tuple[FreshRec, Snapshot, Snapshot],
) -> None:
    model, whole, later = learned
    assert later.blend is not None and len(later.blend["counted"]) == 3
    ranker = aligned_ranker()
    for snapshot in (whole, later):  # through bytes, as the pipe carries them
        ranker.publish(Snapshot.from_bytes(snapshot.to_bytes()))
    for codes in ([0, 3, 6], [1], [2, 5, 8, 11, 14, 17], [4, 7, 10, 13, 16, 19]):
        now = T0 + 60 * len(codes)  # contexts the blend learned in: a minute since the last event
        expected = model.score(query(codes, now))[0]
        np.testing.assert_allclose(served_scores(ranker, codes, now), expected, rtol=1e-4, atol=1e-4)
    codes = [1, 4, 7, 10, 13, 16]
    network = model._network_scores(query(codes, T0 + 360))[0]
    assert not np.allclose(served_scores(ranker, codes, T0 + 360), network, atol=1e-2)  # the blend, not the network


def test_a_delta_carries_the_counts_increments_and_a_gap_leaves_the_network_alone(
    learned: tuple[FreshRec, Snapshot, Snapshot],
) -> None:
    model, whole, later = learned
    delta = delta_since(later, whole)
    assert delta is not None
    got = read(delta.to_bytes())
    assert not isinstance(got, Snapshot)
    applied = apply(whole, got)
    ranker = aligned_ranker()
    ranker.publish(whole)
    ranker.publish(applied)
    # a delta keeps the whole snapshot's item tower: compare with the counts sent whole on its network
    assert model.signals is not None and later.blend is not None
    counts_now = aligned_ranker()
    counts_now.publish(
        dataclasses.replace(applied, blend={**later.blend, "counted": [], "signals": model.signals.state()})
    )
    now = T0 + 60 * 2
    np.testing.assert_allclose(served_scores(ranker, [0, 3], now), served_scores(counts_now, [0, 3], now), atol=1e-5)

    assert later.blend is not None
    skipping = dataclasses.replace(later, blend={**later.blend, "counted": later.blend["counted"][1:]})
    gap = aligned_ranker()
    gap.publish(whole)
    gap.publish(skipping)  # the first increment never came: no copy until the next whole snapshot
    assert not gap.blend.ready
    network = model._network_scores(query([0, 3], now))[0]
    np.testing.assert_allclose(served_scores(gap, [0, 3], now), network, rtol=1e-4, atol=1e-4)
    gap.publish(whole)
    assert gap.blend.ready


@pytest.mark.parametrize(
    "change",
    [
        lambda b: {**b, "weight": b["weight"][:, :3]},
        lambda b: {**b, "weight": b["weight"] * float("nan")},
        lambda b: {**b, "counted": [dataclasses.replace(b["counted"][0], items=b["counted"][0].items + 1000)]},
        lambda b: {**b, "counted": list(reversed(b["counted"]))},
        lambda b: {**b, "extra": 1},
        lambda b: {**b, "signals": {**b["signals"], "interactions": np.zeros(3)}},
    ],
    ids=["weight-shape", "weight-nan", "codes", "order", "fields", "signals"],
)
def test_a_malformed_blend_is_refused(learned: tuple[FreshRec, Snapshot, Snapshot], change: object) -> None:
    _, whole, later = learned
    assert whole.blend is not None and later.blend is not None
    blend = {**whole.blend, "counted": later.blend["counted"]}
    bad = dataclasses.replace(whole, blend=change(blend))  # type: ignore[operator]
    with pytest.raises(serialization.Malformed):
        Snapshot.from_bytes(bad.to_bytes())


def test_explanations_name_the_event_whose_removal_lowers_the_blended_score_most(
    learned: tuple[FreshRec, Snapshot, Snapshot],
) -> None:
    _, whole, later = learned
    ranker = aligned_ranker()
    ranker.publish(whole)
    ranker.publish(later)
    codes, now = [0, 3, 9, 12, 6], T0 + 300  # without one event, another context: the weights are held
    listed = ranker.recommend(history(*codes), now, Options(k=8, explain=True))
    reasons = {r.reason for r in listed}
    assert reasons and None not in reasons
    for r in listed:
        assert r.explanation
        if not r.because:
            continue
        item = IDS.index(r.item_id)
        full, past = served_scores(ranker, codes, now)[item], history(*codes)
        without = [served_scores(ranker, past[:j] + past[j + 1 :], now, held=past)[item] for j in range(len(codes))]
        drops = [full - score for score in without]
        named = codes.index(IDS.index(r.because[0].item_id))
        assert drops[named] == pytest.approx(max(drops), abs=1e-5)
        assert r.because[0].weight == pytest.approx(drops[named], abs=1e-4)


def test_each_reason_is_the_feature_that_lifts_the_item_most_above_the_items_that_would_come_next(
    learned: tuple[FreshRec, Snapshot, Snapshot],
) -> None:
    """Against the next items of the list (not the average item, which every listed item
    beats by the same feature), computed here from the learner's own model."""
    model, whole, later = learned
    ranker = aligned_ranker()
    ranker.publish(whole)
    ranker.publish(later)
    codes, now, k = [0, 3, 9, 12, 6], T0 + 300, 6
    listed = ranker.recommend(history(*codes), now, Options(k=k, explain=True))
    assert model.gate is not None
    features = model._blend_features(query(codes, now))
    scores = model.score(query(codes, now))[0]
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i not in codes]
    assert [IDS[i] for i in order[:k]] == [r.item_id for r in listed]
    with torch.no_grad():
        parts = contributions(model.gate.weight, model.gate.n_per_query, features, 0, torch.arange(len(IDS)))
    lift = parts[order[:k]] - parts[order[k : 2 * k]].mean(0)
    assert [r.reason for r in listed] == [model.gate.names[int(f)] for f in lift.argmax(1)]
    assert (lift.max(1).values > 0).all()  # ahead of the next items, so some feature raised it


def test_a_model_without_its_blend_says_so_in_its_snapshots_and_scores_with_the_network() -> None:
    model = build_freshrec(len(IDS), text(IDS), MODEL, LearnSettings(epochs=1))
    assert model.blend_part() is not None
    model.drop_blend()  # the online learner's choice on a catalog over [model.blend] max_items
    model.add_items(text(["new-1"]))
    assert model.blend_part() is None and model.gate is None
    now = T0 + 60
    np.testing.assert_array_equal(model.score(query([0, 3], now)), model._network_scores(query([0, 3], now)))


def test_the_similarity_rows_a_server_keeps_equal_the_products(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similarity, "SIMILARITY_CACHE_BYTES", 0)  # 16 rows: the cache evicts
    unit = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    cache = similarity.SimilarityCache(unit)
    for codes in ([1, 2, 2, 39], list(range(30)), [5, 1, 0]):
        torch.testing.assert_close(cache(torch.tensor(codes)), unit[codes] @ unit.T)
    assert len(cache.rows) == 16


def test_the_pipes_sender_keeps_the_servers_counts_equal_to_the_learners_through_a_failed_delivery() -> None:
    """Whole counts with the first snapshot, increments after; a failed delivery loses a
    snapshot's increments, so the next one brings the counts whole again."""
    rng = np.random.default_rng(4)
    model = build_freshrec(len(IDS), text(IDS), MODEL, LearnSettings(epochs=1))
    assert model.signals is not None
    model.fit(events(rng, 200, 0))
    model.signals.journal = []
    ranker = aligned_ranker()
    models = Models(ranker, ClusterSettings(), Metrics())
    fail, delivered = threading.Event(), threading.Event()
    carried: list[bool] = []

    def deliver(data: bytes, start: bool) -> None:
        if fail.is_set():
            fail.clear()
            raise ConnectionError("the pipe is away")
        got = read(data)
        carried.append(got.blend is not None and got.blend["signals"] is not None)
        assert models.receive(data, "learner") is not None
        delivered.set()

    sender = Sender(deliver, lambda message: None, 0.0, full_every_s=60.0, counts=True).start()
    try:
        for n in range(5):
            batch = events(rng, 50, 200 + 50 * n)
            model.score(batch)
            model.learn(batch)
            if n == 2:
                fail.set()
            delivered.clear()
            sender.snapshot(snapshot_of(model, model.blend_part(with_counts=sender.counts_due()), updates=n))
            assert delivered.wait(5) or n == 2
    finally:
        sender.close(5)
    assert carried == [True, False, True, False]  # the third failed: the fourth brought the counts whole
    served, learned = ranker.blend.signals, model.signals
    assert served is not None and served.seq == learned.seq
    for name in ("transitions", "cooc"):
        a, b = getattr(served, name).state(), getattr(learned, name).state()
        assert all(np.array_equal(a[k], b[k]) for k in ("indptr", "indices", "data"))
    np.testing.assert_array_equal(served.popularity.counts, learned.popularity.counts)
    np.testing.assert_array_equal(served.interactions, learned.interactions)


def test_replicas_follow_the_bus_to_the_learners_counts_from_a_late_start_and_past_trimmed_entries(
    redis_url: str,
) -> None:
    """Through a real Redis: one replica reads every snapshot; one starts late (from the
    newest start); one loses its place (entries trimmed before it read them), ranks with
    the network alone meanwhile, and is whole again from the next start."""
    cluster = ClusterSettings(bus_url=redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}", snapshot_stream_len=10)
    rng = np.random.default_rng(5)
    model = build_freshrec(len(IDS), text(IDS), MODEL, LearnSettings(epochs=1))
    assert model.signals is not None
    model.fit(events(rng, 200, 0))
    model.signals.journal = []
    bus, delivered = RedisBus(cluster), threading.Event()

    def deliver(data: bytes, start: bool) -> None:
        bus.put_snapshot(data, start)
        delivered.set()

    sender = Sender(deliver, lambda m: None, 0.0, None, 60.0, counts=True).start()
    replicas = {name: Models(aligned_ranker(), cluster, Metrics()) for name in ("every", "late", "lost")}
    read_to: dict[str, str | None] = dict.fromkeys(replicas)

    def learn_and_send(n: int, counts_whole: bool) -> None:
        batch = events(rng, 50, 200 + 50 * n)
        model.score(batch)
        model.learn(batch)
        delivered.clear()
        sender.snapshot(snapshot_of(model, model.blend_part(with_counts=counts_whole), updates=n))
        assert delivered.wait(5)

    def take(*names: str) -> None:
        for name in names:
            read_to[name] = follow(bus, replicas[name], read_to[name])

    def same_counts(name: str) -> bool:
        served, learned = replicas[name].ranker.blend.signals, model.signals
        assert learned is not None
        return (
            served is not None
            and served.seq == learned.seq
            and np.array_equal(served.interactions, learned.interactions)
        )

    try:
        learn_and_send(0, True)
        take("every", "lost")
        for n in range(1, 12):  # the stream keeps ten: the start and the first delta are trimmed
            learn_and_send(n, False)
            take("every")
        take("late", "lost")
        assert same_counts("every")
        assert read_to["late"] is None  # no start left to begin from: it waits for the next
        assert replicas["lost"].ranker.blend.signals is None  # missed increments: the network alone
        learn_and_send(12, True)  # the next start (the learner sends one a minute)
        take("every", "late", "lost")
        assert all(same_counts(name) for name in replicas)
        now = T0 + 700 * 60
        expected = model.score(query([0, 3, 9], now))[0]
        for models in replicas.values():
            models.start()
            wait_for(lambda m=models: m.ranker.scoring.snapshot is not None and m.ranker.scoring.snapshot.updates == 12)
            np.testing.assert_allclose(served_scores(models.ranker, [0, 3, 9], now), expected, rtol=1e-4, atol=1e-4)
    finally:
        sender.close(5)
        for models in replicas.values():
            models.close()
        bus.client.delete(*keys(cluster.prefix).values())
        bus.close()
