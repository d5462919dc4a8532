"""Ranking from a published snapshot: row mapping, explanations, filters, fallback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from freshrec.domain import Event, EventType, Item
from freshrec.encoders.hashing import HashingEncoder
from freshrec.learn.recommender import build_freshrec
from freshrec.model.base import Interactions
from freshrec.model.freshrec import FreshRec
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.scoring import Scoring, build_scoring, top
from freshrec.settings import LearnSettings, ModelSettings

MODEL = ModelSettings(dim=16, history_length=6, heads=2)
TOPICS = ["garden", "kitchen", "space"]
IDS = [f"{TOPICS[n % 3]}-{n}" for n in range(30)]
T0 = 1_700_000_000.0


def items() -> list[Item]:
    return [Item(i, title=f"{i.split('-')[0]} thing {i}", categories=(i.split("-")[0].title(),)) for i in IDS]


def text(ids: list[str]) -> np.ndarray:
    return HashingEncoder(32).encode([f"{i.split('-')[0]} thing {i}" for i in ids])


def trained_snapshot() -> tuple[FreshRec, Snapshot]:
    rng = np.random.default_rng(0)
    # five epochs: the fixture must have learned the topics (with one, whether the top item of a
    # garden history was a garden item depended on the dropout draws)
    model = build_freshrec(len(IDS), text(IDS), MODEL, LearnSettings(epochs=5))
    n, length = 400, MODEL.history_length
    users = rng.integers(0, 3, n)
    item = (users + 3 * rng.integers(0, 10, n)).astype(np.int32)  # each "user kind" sticks to one topic
    hist = (users[:, None] + 3 * rng.integers(0, 10, (n, length))).astype(np.int32)
    batch = Interactions(
        user=users.astype(np.int32),
        item=item,
        type=np.full(n, 1, dtype=np.int8),
        value=np.full(n, np.nan, dtype=np.float32),
        time=T0 + np.arange(n, dtype=np.float64),
        hist_item=hist,
        hist_type=np.full((n, length), 1, dtype=np.int8),
        hist_value=np.full((n, length), np.nan, dtype=np.float32),
        hist_time=T0 + np.arange(n, dtype=np.float64)[:, None] - np.arange(length, 0, -1),
        position=np.arange(n, dtype=np.int64),
    )
    model.fit(batch)
    return model, Snapshot.of(model.net, IDS, [], checkpoint=1, updates=0, offset=n)


@pytest.fixture(scope="module")
def trained() -> tuple[FreshRec, Snapshot]:
    return trained_snapshot()


def shuffled_catalog() -> Catalog:
    catalog = Catalog()
    order = list(reversed(range(len(IDS))))  # serving's rows in another order than the learner's
    catalog.put([items()[n] for n in order], text([IDS[n] for n in order]))
    return catalog


def history(*ids: str) -> list[Event]:
    return [Event("u", i, EventType.CLICK, T0 + n) for n, i in enumerate(ids)]


def test_serving_rows_follow_item_ids_not_positions(trained: tuple[FreshRec, Snapshot]) -> None:
    model, snapshot = trained
    catalog = shuffled_catalog()
    scoring = build_scoring(snapshot, catalog.view)
    assert scoring.vectors is not None and scoring.version == "1.0"
    with torch.no_grad():
        vectors, _ = model.net.item_table()
    for n, item_id in enumerate(IDS):
        torch.testing.assert_close(scoring.vectors[catalog.view.codes[item_id]], vectors[n])


def test_the_catalog_follows_the_learners_numbering_and_a_publish_remaps_nothing(
    trained: tuple[FreshRec, Snapshot],
) -> None:
    _, snapshot = trained
    catalog = shuffled_catalog()
    catalog.put([Item("new-1", title="space thing new-1", categories=("Space",))], text(["new-1"]))  # not learned yet
    catalog.remove("garden-3")
    ranker = Ranker(catalog)
    before = catalog.view.ids
    ranker.publish(snapshot)
    view = catalog.view
    assert view.ids == [*IDS, "new-1"] and sorted(before) == sorted(view.ids)  # re-laid out, nothing lost
    assert not view.alive[view.codes["garden-3"]] and view.alive[view.codes["new-1"]]  # deletions kept
    np.testing.assert_array_equal(view.text[view.codes["new-1"]], text(["new-1"])[0])
    assert ranker.scoring.net is not None
    learned = snapshot.state["item_id.weight"]
    torch.testing.assert_close(ranker.scoring.net.item_id.weight[: len(IDS)], learned)
    assert not ranker.scoring.net.item_id.weight[len(IDS)].any()  # the new item: untouched, judged on its text
    assert catalog.align(snapshot.item_ids) is False  # the next snapshot with the same items: nothing to do
    catalog.remove("new-1")
    ranker.publish(snapshot)
    assert catalog.view.ids == [*IDS, "new-1"]
    learner_only = dataclasses.replace(snapshot, item_ids=[*IDS[1:], IDS[0]])  # another numbering, same items
    fresh = build_scoring(learner_only, shuffled_catalog().view)  # an unaligned view: moved by id
    assert fresh.net is not None
    torch.testing.assert_close(fresh.net.item_id.weight[shuffled_catalog().view.codes[IDS[0]]], learned[-1])


def test_explanations_are_the_score_drop_without_each_event(trained: tuple[FreshRec, Snapshot]) -> None:
    _, snapshot = trained
    ranker = Ranker(shuffled_catalog())
    ranker.publish(snapshot)
    past = history("garden-0", "garden-3", "space-2", "garden-6")
    recs = ranker.recommend(past, T0 + 100, Options(5, explain=True))
    assert len(recs) == 5 and not {r.item_id for r in recs} & {e.item_id for e in past}
    top = recs[0]
    assert top.because and top.explanation == f"because you clicked {top.because[0].title}"
    named = top.because[0]
    without = [e for e in past if e.item_id != named.item_id]
    rescored = {r.item_id: r.score for r in ranker.recommend(without, T0 + 100, Options(30, exclude_seen=False))}
    assert rescored[top.item_id] == pytest.approx(top.score - named.weight, abs=1e-4)
    assert [b.weight for b in top.because] == sorted((b.weight for b in top.because), reverse=True)


def test_filters_and_a_deleted_item(trained: tuple[FreshRec, Snapshot]) -> None:
    _, snapshot = trained
    catalog = shuffled_catalog()
    ranker = Ranker(catalog)
    ranker.publish(snapshot)
    past = history("garden-0")
    kitchen = ranker.recommend(past, T0, Options(20, categories=("KITCHEN",)))
    assert len(kitchen) == 10 and all(r.item_id.startswith("kitchen") for r in kitchen)
    catalog.remove("kitchen-1")
    ranker.refresh()
    rest = ranker.recommend(past, T0, Options(20, exclude=("kitchen-4",), categories=("kitchen",)))
    assert {r.item_id for r in rest} == {f"kitchen-{n}" for n in range(1, 30, 3)} - {"kitchen-1", "kitchen-4"}
    assert ranker.similar("kitchen-1", 5) is None
    similar = ranker.similar("garden-0", 29)
    assert similar is not None and "garden-0" not in {r.item_id for r in similar} and len(similar) == 28
    sc = ranker.scoring  # the cosines of the served vectors (by the rows' lengths kept), best first
    assert sc.vectors is not None
    vectors = sc.vectors.numpy()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = [float(unit[sc.view.codes[r.item_id]] @ unit[sc.view.codes["garden-0"]]) for r in similar]
    assert [r.score for r in similar] == pytest.approx(cosines, abs=1e-5)
    assert cosines == sorted(cosines, reverse=True)


def test_before_any_model_text_similarity_and_popularity_serve() -> None:
    ranker = Ranker(shuffled_catalog())
    assert ranker.scoring.net is None
    by_text = ranker.recommend(history("space-2", "space-5"), T0, Options(3, explain=True))
    assert len(by_text) == 3 and by_text[0].explanation is not None
    popular = [(i, 100.0 - n) for n, i in enumerate(IDS)]
    picks = ranker.recommend([], T0, Options(3), lambda: popular)
    assert picks[0].item_id == IDS[0] and all(r.explanation == "popular right now" for r in picks)


def test_popular_picks_skip_near_duplicates() -> None:
    catalog = Catalog()
    twins = [Item(f"twin-{n}", title="same") for n in range(5)] + [Item("other", title="other")]
    vectors = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]], dtype=np.float32)
    catalog.put(twins, vectors)
    ranker = Ranker(catalog)
    popular = [(f"twin-{n}", 10.0 - n) for n in range(5)] + [("other", 6.0)]
    picks = [r.item_id for r in ranker.recommend([], T0, Options(2), lambda: popular)]
    assert picks == ["twin-0", "other"]  # not the second twin, though it is more popular


def test_a_new_shop_tops_popular_items_up_with_the_newest_allowed_ones() -> None:
    catalog = Catalog()
    catalog.put([Item(f"i{n}", title=f"i{n}") for n in range(8)], np.eye(8, dtype=np.float32))
    ranker = Ranker(catalog)
    popular = [("i7", 3.0), ("i2", 1.0)]  # the newest item is among them: no place twice
    picks = [r.item_id for r in ranker.recommend([], T0, Options(5, exclude=("i6",)), lambda: popular)]
    assert picks[:2] == ["i7", "i2"] and sorted(picks[2:]) == ["i3", "i4", "i5"]


def test_top_breaks_ties_by_lower_code() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    allowed = np.array([True, True, False, True, True])
    assert top(scores, allowed, 3) == [1, 4, 3]
    assert top(scores, np.zeros(5, dtype=bool), 3) == []


def test_a_network_is_refilled_only_once_no_scoring_holds_it(trained: tuple[FreshRec, Snapshot]) -> None:
    _, snapshot = trained

    def shifted(by: float) -> Snapshot:
        state = {**snapshot.state, "query": snapshot.state["query"] + by}
        return dataclasses.replace(snapshot, state=state)

    ranker = Ranker(shuffled_catalog())
    ranker.publish(shifted(0.0))
    held = ranker.scoring  # a request in flight holds this one
    held_query = held.net.query.clone()  # type: ignore[union-attr]
    ranker.publish(shifted(1.0))
    dropped_net = ranker.scoring.net
    ranker.publish(shifted(2.0))  # the previous scoring was still current while this one was built
    assert ranker.scoring.net is not dropped_net and ranker.scoring.net is not held.net
    ranker.publish(shifted(3.0))  # now nobody holds the second one: its network is refilled
    assert ranker.scoring.net is dropped_net
    torch.testing.assert_close(held.net.query, held_query)  # type: ignore[union-attr]
    fresh = build_scoring(shifted(3.0), ranker.catalog.view)
    assert fresh.vectors is not None and ranker.scoring.vectors is not None
    torch.testing.assert_close(ranker.scoring.vectors, fresh.vectors)
    past = history("garden-0", "kitchen-1")
    assert ranker.recommend(past, T0 + 10, Options(k=5)) == _with(fresh).recommend(past, T0 + 10, Options(k=5))


def _with(scoring: Scoring) -> Ranker:
    ranker = Ranker(Catalog())
    ranker.scoring = scoring
    return ranker
