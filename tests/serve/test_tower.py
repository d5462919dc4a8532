"""The item tower kept while a candidate index is (``Tower``, ``build_scoring``'s ``tower``):
a whole snapshot's rows served with the tower served before, until ``tower_s`` is up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from freshrec.model.deltas import delta_since
from freshrec.model.snapshot import Snapshot
from freshrec.serve import retrieval as background
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Ranker
from freshrec.serve.scoring import Scoring, build_scoring, tower_of
from freshrec.serve.tower import Tower
from freshrec.settings import ClusterSettings, RetrievalSettings
from tests.serve.test_index_updates import MOVED, NUDGED, as_delta, tables, with_rows
from tests.serve.test_retrieval import N, catalog, snapshot


def with_tower(later: Snapshot, earlier: Snapshot) -> Snapshot:
    """``later`` with ``earlier``'s item tower: what serving with a kept tower must equal."""
    return dataclasses.replace(later, state={**later.state, **tower_of(earlier.state)})


def assert_same_tables(got: Scoring, want: Scoring) -> None:
    for g, w in zip(tables(got), tables(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def indexed(tower_s: float = 600.0) -> tuple[Ranker, Snapshot]:
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=1_000, tower_s=tower_s))
    ranker.publish(base)
    ranker.retrieval.wait()
    assert ranker.retrieval.index is not None
    return ranker, base


def test_a_whole_snapshot_is_served_with_the_kept_tower_and_the_index_stays_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an index kept, a whole snapshot with a newer tower is served with the tower
    served before: its item table is the one its rows make with that tower, built from
    its changed rows (the unchanged ones are the scoring before's, not recomputed); the
    index stays current, its moved rows coded anew and no build asked for; and the deltas
    that follow keep the tower too."""
    monkeypatch.setattr(background, "UPDATE_S", 0.0)
    ranker, base = indexed()
    first, index = ranker.scoring, ranker.retrieval.index
    assert index is not None and first.text_part is not None
    whole = with_rows(base, MOVED, 3.0, seed=1, tower=True)
    ranker.publish(whole)
    ranker.retrieval.wait()
    now = ranker.scoring
    assert now.snapshot is whole and now.text_part is first.text_part and now.tower == first.tower
    assert_same_tables(now, build_scoring(with_tower(whole, base), now.view))
    unchanged = np.setdiff1d(np.arange(N), MOVED)
    assert np.array_equal(tables(now)[0][unchanged], tables(first)[0][unchanged])
    table = background.ServedTable(now.vectors, now.bias, now.text_part, now.tower)  # type: ignore[arg-type]
    assert ranker.retrieval._current(index, table)
    assert ranker.retrieval.index is index and index.updated == len(MOVED) and ranker.retrieval.builds == 1

    later = with_rows(whole, NUDGED, 3.0, seed=2)
    ranker.publish(as_delta(whole, later))
    assert ranker.scoring.text_part is first.text_part
    assert_same_tables(ranker.scoring, build_scoring(with_tower(later, base), now.view))


def test_the_kept_tower_gives_way_to_the_newest_once_it_is_tower_s_old() -> None:
    ranker, base = indexed(tower_s=60.0)
    first = ranker.scoring
    ranker.publish(with_rows(base, MOVED, 1.0, seed=3, tower=True))
    assert ranker.scoring.text_part is first.text_part and ranker.tower.age_s < 60.0
    ranker.tower.since -= 60.0  # as if a minute had gone by
    whole = with_rows(base, NUDGED, 1.0, seed=4, tower=True)
    ranker.publish(whole)
    now = ranker.scoring
    assert now.tower == tuple(tower_of(whole.state).values()) and ranker.tower.age_s < 60.0
    assert_same_tables(now, build_scoring(whole, now.view))


def test_without_an_index_every_whole_snapshots_tower_is_served_at_once() -> None:
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=N + 1))
    ranker.publish(base)
    whole = with_rows(base, MOVED, 1.0, seed=5, tower=True)
    ranker.publish(whole)
    assert ranker.scoring.tower == tuple(tower_of(whole.state).values())
    assert_same_tables(ranker.scoring, build_scoring(whole, ranker.scoring.view))


def test_a_tower_of_other_shapes_is_served_at_once() -> None:
    tower = Tower()
    base = snapshot()
    assert tower.pick(base, 600.0) == tower_of(base.state)
    wider = dict(base.state)
    wider["adapter.weight"] = torch.zeros(64, base.state["adapter.weight"].shape[1])
    other = dataclasses.replace(base, state=wider)
    assert tower.pick(other, 600.0) == tower_of(other.state)
    assert tower.pick(None, 600.0) is None


def test_a_whole_snapshot_after_a_delta_never_built_serves_and_moves_that_deltas_rows_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delta is applied in place to the tables of the snapshot served (nothing else reads
    them); when a whole snapshot replaces it before its build, the rows it changed differ
    from what is served although they equal the served snapshot's patched tables: they are
    served anew and counted as moved all the same."""
    monkeypatch.setattr(background, "UPDATE_S", 1e9)  # the moves stay counted, not coded
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=1_000))
    models = Models(ranker, ClusterSettings(), Metrics())  # publisher not started
    first = models.parse(base.to_bytes(), "learner")
    assert first is not None
    models.publish(first)
    models._pending = None  # as if the publisher had built it
    ranker.publish(first)
    ranker.retrieval.wait()
    assert ranker.retrieval._drift is not None
    later = with_rows(base, MOVED, 3.0, seed=6)
    delta = models.parse(delta_since(later, base).to_bytes(), "learner")  # type: ignore[union-attr]
    assert delta is not None and delta.state["item_id.weight"] is first.state["item_id.weight"]
    models.publish(delta)  # pending, never built: the learner's next whole snapshot replaces it
    whole = models.parse(with_rows(later, NUDGED, 3.0, seed=7, tower=True).to_bytes(), "learner")
    assert whole is not None
    models.publish(whole)
    assert models._pending is whole
    ranker.publish(whole)
    assert ranker.scoring.tower == tuple(tower_of(first.state).values())  # the kept tower
    assert_same_tables(ranker.scoring, build_scoring(with_tower(whole, base), ranker.scoring.view))
    assert (ranker.retrieval._drift[MOVED] > 0).all() and (ranker.retrieval._drift[NUDGED] > 0).all()
