"""The candidate index kept current between its builds: the rows the learner moved further
than the codes' error, coded anew (``Index.update``, ``Retrieval.moved``)."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from typing import Any

import faiss
import numpy as np
import pytest
import torch

from freshrec.domain import Item
from freshrec.encoders.hashing import HashingEncoder
from freshrec.model.deltas import apply, delta_since
from freshrec.model.snapshot import Snapshot
from freshrec.serve import index as ann
from freshrec.serve import retrieval as background
from freshrec.serve.exact import top_rows
from freshrec.serve.index import Index
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Ranker
from freshrec.serve.retrieval import Retrieval, ServedTable
from freshrec.serve.scoring import Scoring, moved
from freshrec.settings import ClusterSettings, RetrievalSettings
from tests.serve.test_retrieval import CALIBRATED, T0, N, catalog, clicks, no_hits, snapshot

MOVED = np.arange(100, 4_100, 40)
"""The rows the learner moves far (100 of them)."""
NUDGED = np.arange(120, 4_120, 40)
"""Rows it moves by a hair."""


def with_rows(base: Snapshot, rows: np.ndarray, length: float, seed: int, tower: bool = False) -> Snapshot:
    """``base`` with ``rows``' ID vectors drawn anew at about ``length`` (and active), and
    with ``tower``, a new item tower too: what the learner sends whole."""
    state = dict(base.state)
    ids, active = state["item_id.weight"].clone(), state["active"].clone()
    g = torch.Generator().manual_seed(seed)
    ids[rows] += torch.randn(len(rows), ids.shape[1], generator=g) * length / np.sqrt(ids.shape[1])
    active[rows] = True
    state["item_id.weight"], state["active"] = ids, active
    if tower:
        state["adapter.weight"] = state["adapter.weight"] * 1.5
    return dataclasses.replace(base, state=state, serial=secrets.randbits(62))


def as_delta(base: Snapshot, later: Snapshot) -> Snapshot:
    delta = delta_since(later, base)
    assert delta is not None
    return apply(base, delta)


def tables(sc: Scoring) -> tuple[np.ndarray, np.ndarray]:
    assert sc.vectors is not None and sc.bias is not None
    return sc.vectors.numpy().copy(), sc.bias.numpy().copy()


def built(seed: int) -> tuple[Retrieval, Index, np.ndarray, np.ndarray]:
    """A retrieval with an index built on random rows, and those rows."""
    rng = np.random.default_rng(seed)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    retrieval = Retrieval(RetrievalSettings(min_items=1_000))
    retrieval.build_now(vectors, bias)
    assert retrieval.index is not None
    return retrieval, retrieval.index, vectors, bias


def checked_soon(seed: int) -> tuple[Retrieval, Index, np.ndarray, np.ndarray, np.ndarray]:
    """A retrieval with an index built and calibrated on random rows and 200 users, kept as the
    latest requests, checked at a refresh once it is old (``rebuild_s`` 0.01); the rows and users."""
    rng = np.random.default_rng(seed)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    users = rng.normal(size=(200, 16)).astype(np.float32)
    retrieval = Retrieval(RetrievalSettings(min_items=1_000, candidates=50, rebuild_s=0.01))
    retrieval.build_now(vectors, bias, users)
    assert retrieval.index is not None
    retrieval.recent.extend(users)
    return retrieval, retrieval.index, vectors, bias, users


@pytest.mark.parametrize("rounds", [1, 3])
def test_an_index_with_rows_coded_anew_is_the_index_built_on_the_new_rows(rounds: int) -> None:
    """Every list probed, an index whose moved rows were coded anew (once, or three times
    over, as they move on) finds what one built on the new rows with the same clustering
    finds, at the same approximate scores, and holds each row once: what faiss's removal
    leaves in a fast-scan list does not spoil the codes added after it."""
    rng = np.random.default_rng(0)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    settings = RetrievalSettings(min_items=1_000)
    index = Index(vectors, bias, settings)
    later = vectors.copy()
    for _ in range(rounds):
        later[MOVED] = 3 * rng.normal(size=(len(MOVED), 16))
        index.update(MOVED, later[MOVED], bias[MOVED])
    fresh = Index(later, bias, settings, trained=index.trained)
    assert index.index.ntotal == N and index.updated == rounds * len(MOVED)
    users = rng.normal(size=(5, 16)).astype(np.float32)
    queries = np.zeros((5, index.dims), np.float32)
    queries[:, :16], queries[:, 16] = users, 1.0
    params = faiss.SearchParametersIVF()
    params.nprobe = index.index.nlist
    got_scores, got = index.index.search(queries, N, params=params)
    want_scores, want = fresh.index.search(queries, N, params=params)
    for gs, g, ws, w in zip(got_scores, got, want_scores, want, strict=True):
        assert sorted(g) == list(range(N))
        np.testing.assert_array_equal(gs[np.argsort(g)], ws[np.argsort(w)])


def test_the_codes_error_is_the_typical_distance_from_a_row_to_its_code() -> None:
    rng = np.random.default_rng(1)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    small = Index(vectors, bias, RetrievalSettings(min_items=1_000))
    large = Index(10 * vectors, 10 * bias, RetrievalSettings(min_items=1_000))
    assert 0 < small.error < np.median(np.linalg.norm(vectors, axis=1))
    assert large.error == pytest.approx(10 * small.error, rel=0.2)


def test_a_deltas_moved_rows_are_its_changed_rows_by_how_far_they_went() -> None:
    """A delta's rows, measured exactly; a whole snapshot with a new item tower reports the
    rows whose own parts moved, not the tower's move of every row; a catalog change alone
    moves nothing."""
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=N + 1))
    ranker.publish(base)
    before = ranker.scoring
    ranker.publish(as_delta(base, with_rows(base, MOVED, 2.0, seed=1)))
    after = ranker.scoring
    rows, distances = moved(before, after)
    assert rows.tolist() == MOVED.tolist()
    old, new = tables(before), tables(after)
    expected = np.linalg.norm(np.hstack([new[0] - old[0], (new[1] - old[1])[:, None]])[MOVED], axis=1)
    np.testing.assert_allclose(distances, expected, rtol=1e-5)

    whole = with_rows(after.snapshot, NUDGED, 2.0, seed=2, tower=True)  # type: ignore[arg-type]
    ranker.publish(whole)
    rows, _ = moved(after, ranker.scoring)
    assert rows.tolist() == NUDGED.tolist()
    assert np.all(np.linalg.norm(tables(ranker.scoring)[0] - new[0], axis=1) > 0)  # the tower moved every row
    assert moved(ranker.scoring, ranker.scoring)[0].size == 0


def test_rows_a_publish_moved_far_are_coded_anew_and_found_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The publish of a delta that moves some rows far has them coded anew in the background
    (and not the ones it moved by less than the codes' error): the index then finds as much
    of the top 10 those rows now make as one built on them, which the codes of their old
    values did not."""
    monkeypatch.setattr(background, "UPDATE_S", 0.0)
    base = snapshot()
    ranker = Ranker(catalog(), CALIBRATED)
    ranker.publish(base)
    ranker.retrieval.wait()
    ranker.retrieval.build_now(*tables(ranker.scoring))
    index = ranker.retrieval.index
    assert index is not None
    stale = Index(*tables(ranker.scoring), CALIBRATED, trained=index.trained)
    stale.index.nprobe = index.index.nprobe
    far = with_rows(base, MOVED, 3.0, seed=3)
    later = with_rows(far, NUDGED, index.error / 100, seed=4)
    ranker.publish(as_delta(base, later))
    ranker.retrieval.wait()
    assert ranker.retrieval.index is index and index.updated == len(MOVED)
    assert ranker.retrieval._drift is not None and np.all(ranker.retrieval._drift[MOVED] == 0)
    assert np.all(ranker.retrieval._drift[NUDGED] > 0)

    vectors, bias = tables(ranker.scoring)
    users = np.random.default_rng(5).normal(size=(100, vectors.shape[1])).astype(np.float32)
    best = top_rows(vectors, bias, users)
    assert np.isin(best, MOVED).mean() > 0.5  # the moved rows make most of the top 10

    def found(ix: Index) -> float:
        shortlists = ix._search(users, ix.shortlist(CALIBRATED.candidates), probes=ix.probes)
        return float(np.mean([np.isin(b, s).mean() for b, s in zip(best, shortlists, strict=True)]))

    fresh = Index(vectors, bias, CALIBRATED, trained=index.trained)
    fresh.index.nprobe = index.index.nprobe
    assert found(index) >= found(fresh) - 0.01 and found(index) > found(stale) + 0.2


def test_a_step_codes_the_rows_that_moved_furthest_first_and_the_rest_at_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(background, "UPDATE_S", 0.0)
    monkeypatch.setattr(background, "UPDATE_SHARE", 50 / N)
    retrieval, index, vectors, bias = built(seed=6)
    distances = np.linspace(2, 4, len(MOVED)).astype(np.float32) * index.error
    retrieval.moved(MOVED, distances)
    table = ServedTable(torch.from_numpy(vectors), torch.from_numpy(bias))
    retrieval.refresh(table, N)
    retrieval.wait()
    assert retrieval._drift is not None and index.updated == retrieval.updated == 50
    assert np.all(retrieval._drift[MOVED[50:]] == 0) and np.all(retrieval._drift[MOVED[:50]] > 0)
    retrieval.refresh(table, N)
    retrieval.wait()
    assert index.updated == 100 and not retrieval._drift.any()


def test_moves_of_publishes_after_the_one_a_step_codes_wait_for_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step codes the rows that moved far by the publish that started it, from that
    publish's table: a publish while its thread waits for the processor adds moves that
    table lacks, which the next step codes (counted as coded, they were lost)."""
    monkeypatch.setattr(background, "UPDATE_S", 0.0)
    retrieval, index, vectors, bias = built(seed=12)
    go = threading.Event()
    monkeypatch.setattr(background, "_in_background", lambda: go.wait(10))
    retrieval.moved(MOVED, np.full(len(MOVED), 2 * index.error, np.float32))
    retrieval.refresh(ServedTable(torch.from_numpy(vectors), torch.from_numpy(bias)), N)
    retrieval.moved(NUDGED, np.full(len(NUDGED), 2 * index.error, np.float32))  # the next publish, meanwhile
    go.set()
    retrieval.wait()
    assert index.updated == len(MOVED) and retrieval._drift is not None
    assert np.all(retrieval._drift[NUDGED] > index.error) and not retrieval._drift[MOVED].any()


def test_moves_after_the_publish_a_build_takes_count_against_the_index_it_builds() -> None:
    """A publish after the one whose rows a build takes (while it waits for its thread, or
    builds) is a move the new index's codes lack; one before it is in them."""
    rng = np.random.default_rng(7)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    retrieval = Retrieval(RetrievalSettings(min_items=1_000))
    retrieval.build_now(vectors, bias)
    first = retrieval.index
    retrieval.index = None  # as if the catalog had grown past it
    retrieval.moved(MOVED, np.ones(len(MOVED), np.float32))  # before the build's publish: in its rows
    taken = threading.Event()

    class Taken(ServedTable):
        def rows(self, which: Any = None, tower: Any = None) -> tuple[np.ndarray, np.ndarray]:
            assert which is None
            taken.set()
            retrieval.moved(NUDGED, np.full(len(NUDGED), 0.5, np.float32))  # a publish meanwhile
            return super().rows(which, tower)

    retrieval.refresh(Taken(torch.from_numpy(vectors), torch.from_numpy(bias)), N)
    retrieval.wait()
    assert taken.is_set() and retrieval.index is not None and retrieval.index is not first
    assert retrieval._drift is not None and retrieval._pending is None
    assert np.flatnonzero(retrieval._drift).tolist() == NUDGED.tolist()


def test_rows_coded_anew_after_a_new_item_tower_keep_the_tower_the_index_was_built_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a whole snapshot with a newer item tower, the rows that moved are coded with
    their ID parts as they are now and their text's part as the index's other rows have it:
    the index is then the one built on those rows."""
    monkeypatch.setattr(background, "UPDATE_S", 0.0)
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=1_000, tower_s=0))  # each tower served at once
    ranker.publish(base)
    ranker.retrieval.wait()
    first, index = ranker.scoring, ranker.retrieval.index
    assert index is not None and first.text_part is not None
    ranker.publish(with_rows(base, MOVED, 3.0, seed=9, tower=True))
    ranker.retrieval.wait()
    now = ranker.scoring
    assert now.text_part is not None and index.updated == len(MOVED)
    assert not torch.equal(now.text_part[0], first.text_part[0])  # the newer tower is served
    vectors, bias = tables(first)
    served, served_bias = tables(now)
    vectors[MOVED] = served[MOVED] - now.text_part[0].numpy()[MOVED] + first.text_part[0].numpy()[MOVED]
    bias[MOVED] = served_bias[MOVED] - now.text_part[1].numpy()[MOVED] + first.text_part[1].numpy()[MOVED]
    expected = Index(vectors, bias, RetrievalSettings(min_items=1_000), trained=index.trained)
    queries = np.zeros((3, index.dims), np.float32)
    queries[:, : vectors.shape[1]], queries[:, vectors.shape[1]] = np.random.default_rng(10).normal(size=(3, 32)), 1
    params = faiss.SearchParametersIVF()
    params.nprobe = index.index.nlist
    got_scores, got = index.index.search(queries, N, params=params)
    want_scores, want = expected.index.search(queries, N, params=params)
    for gs, g, ws, w in zip(got_scores, got, want_scores, want, strict=True):
        np.testing.assert_allclose(gs[np.argsort(g)], ws[np.argsort(w)], rtol=1e-5, atol=1e-5)


def test_a_check_on_an_index_a_build_would_make_again_probes_more_lists_instead() -> None:
    """Where the index's rows are the served ones (none moved further than its codes' error),
    its item tower the served one and its clustering young, a build would make the same
    index: a check that falls short probes as many lists as it takes, past the bound on
    other checks, and that becomes its calibration. (The index probes too few lists here,
    as if the requests had moved to where it needs more.)"""
    retrieval, index, vectors, bias, _ = checked_soon(11)
    assert index.calibrated_probes >= 8
    index.calibrated_probes = index.index.nprobe = 2  # its bound: 3 lists, too few
    table = ServedTable(torch.from_numpy(vectors), torch.from_numpy(bias))
    assert retrieval._current(index, table)
    retrieval.moved(MOVED, np.full(len(MOVED), 2 * index.error, np.float32))
    assert retrieval._current(index, table)  # fewer than a step codes anew
    retrieval.moved(np.arange(N), np.full(N, 2 * index.error, np.float32))
    assert not retrieval._current(index, table)
    retrieval._drift[:] = 0  # type: ignore[index]
    other = (table.vectors, table.bias)  # another tower, and what it makes of the text
    assert not retrieval._current(index, ServedTable(table.vectors, table.bias, other, other))
    assert retrieval._current(index, ServedTable(table.vectors, table.bias, other))  # made anew by the same one
    time.sleep(max(0.02, 4 * index.build_s))
    retrieval.refresh(table, N)
    retrieval.wait()
    assert retrieval.index is index and index.probes > 3 and index.calibrated_probes == index.probes
    assert index.recall >= 0.99 - ann.SLACK and retrieval.builds == 0


def test_a_check_that_falls_short_takes_a_longer_shortlist_before_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the codes, not the lists probed, miss the exact top 10 (a shortlist too short for
    how they blur close calls), a check takes more rows a candidate rather than failing: here
    every list probed with one row a candidate finds too little, as an index calibrated on
    an earlier model may."""
    monkeypatch.setattr(ann, "hits", no_hits)
    rng = np.random.default_rng(11)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    users = rng.normal(size=(200, 16)).astype(np.float32)
    settings = RetrievalSettings(min_items=1_000, candidates=20)
    index = Index(vectors, bias, settings, users)
    best, none = top_rows(vectors, bias, users), np.zeros(0, dtype=np.int64)
    assert index.factor > 1 and index._found(best, users, none, index.index.nlist, 1) < settings.target_recall
    index.factor = 1
    assert index.holds(vectors, bias, users)
    assert 1 < index.factor <= ann.SHORTLIST and index.recall >= settings.target_recall - ann.SLACK
    assert index.calibrated == index.recall and index.checked == (index.recall, index.probes)


def test_a_check_that_needs_more_lists_takes_the_shortlist_that_needs_the_fewest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search costs the lists it scans: a check that must probe more lists than the index
    does takes the shortlist (1 to ``SHORTLIST`` times the candidates) that reaches the
    target with the fewest, not the shortest one that reaches it at all (here one row a
    candidate would, with many more lists: the codes blur close calls)."""
    monkeypatch.setattr(ann, "hits", no_hits)
    rng = np.random.default_rng(11)
    vectors, bias = rng.normal(size=(N, 16)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    users = rng.normal(size=(200, 16)).astype(np.float32)
    settings = RetrievalSettings(min_items=1_000, candidates=20, target_recall=0.92)
    index = Index(vectors, bias, settings, users)
    best, none = top_rows(vectors, bias, users), np.zeros(0, dtype=np.int64)
    index.factor, index.calibrated_probes, index.index.nprobe = 1, 2, 2  # as if the requests had moved
    one = index._recall(best, users, none, 1)
    alone = ann._fewest(one, settings.target_recall, index.index.nlist, 2)
    assert one(alone) >= settings.target_recall  # one row a candidate would do, with `alone` lists
    assert index.holds(vectors, bias, users, current=True)
    assert index.factor > 1 and index.probes < alone
    assert index.recall == index._found(best, users, none, index.probes, index.factor) >= settings.target_recall


def test_a_row_a_later_delta_moved_before_a_build_rewrote_it_counts_as_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each delta patches the served snapshot's per-item tables in place as it arrives, and a
    build computes its delta's rows over the table two builds old (``Spare``), with the rows
    the build before changed copied from that one's table: a row the delta before changed,
    which a later delta (not built yet) moved again, moves with the later delta's build.
    Its move counts all the same: every row's summed moves reach at least how far it is from
    its code."""
    monkeypatch.setattr(background, "UPDATE_S", 1e9)  # the moves stay counted, not coded
    base = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=1_000))
    models = Models(ranker, ClusterSettings(), Metrics())  # publisher not started: built by hand
    sent = [base, with_rows(base, MOVED, 1.0, seed=20)]
    sent += [with_rows(sent[-1], NUDGED, 1.0, seed=21)]
    sent += [with_rows(sent[-1], MOVED, 1.0, seed=22)]

    def received(n: int) -> Snapshot:
        got = models.parse((delta_since(sent[n], sent[n - 1]) if n else base).to_bytes(), "learner")  # type: ignore[union-attr]
        assert got is not None
        models.publish(got)
        models._pending = None  # the publisher takes it
        return got

    ranker.publish(received(0))
    ranker.retrieval.wait()
    coded = tables(ranker.scoring)
    ranker.publish(received(1))
    second = received(2)
    third = received(3)  # arrives before the build of the second reads its rows
    ranker.publish(second)
    ranker.publish(third)
    drift, now = ranker.retrieval._drift, tables(ranker.scoring)
    assert drift is not None
    off = np.hypot(np.linalg.norm(now[0] - coded[0], axis=1), now[1] - coded[1])
    assert (drift >= off * (1 - 1e-4)).all()
    assert (drift[MOVED] > 0).all()


def test_an_item_whose_text_changed_moves_in_the_index_and_the_others_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog change rebuilds the item table with the same model: the rows it moved (here
    an item's new text) count as moved, the others not; the index's item tower is still the
    one served, so a check may probe every list before a build."""
    monkeypatch.setattr(background, "UPDATE_S", 1e9)  # the moves stay counted, not coded
    shop = catalog()
    ranker = Ranker(shop, RetrievalSettings(min_items=1_000))
    ranker.publish(snapshot())
    ranker.retrieval.wait()
    index, first = ranker.retrieval.index, ranker.scoring
    assert index is not None
    title = "a kitchen knife of another kind"
    shop.put([Item("i00042", title=title, categories=("kitchen",))], HashingEncoder(48).encode([title]))
    ranker.refresh()
    now, drift = ranker.scoring, ranker.retrieval._drift
    assert now.view is not first.view and drift is not None and ranker.retrieval.index is index
    assert np.flatnonzero(drift).tolist() == [42]
    table = ServedTable(now.vectors, now.bias, now.text_part, now.tower)  # type: ignore[arg-type]
    assert now.text_part is not first.text_part and ranker.retrieval._current(index, table)


def test_a_check_codes_the_rows_that_moved_before_it_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check first codes anew the rows that moved further than the codes' error since the
    last step, as a build would take them: the rows the learner is moving most are the ones
    most requests' top 10 hold, and without them the index looks as if it had drifted apart.
    Here a hundred rows take the places of those most often in the users' top 10, and no
    step runs before the check."""
    monkeypatch.setattr(background, "UPDATE_S", 1e9)  # no step: only the check codes them
    monkeypatch.setattr(ann, "hits", no_hits)
    retrieval, index, vectors, bias, users = checked_soon(12)
    counts = np.bincount(top_rows(vectors, bias, users).ravel(), minlength=N)
    counts[MOVED] = -1
    hot = np.argsort(-counts)[: len(MOVED)]
    swapped = np.concatenate([MOVED, hot])
    later, later_bias = vectors.copy(), bias.copy()
    later[swapped], later_bias[swapped] = vectors[np.concatenate([hot, MOVED])], bias[np.concatenate([hot, MOVED])]
    distances = np.hypot(np.linalg.norm(later - vectors, axis=1), later_bias - bias)[swapped]
    retrieval.moved(swapped, distances.astype(np.float32))
    assert np.isin(top_rows(later, later_bias, users), MOVED).mean() > 0.2  # the check fails without them
    time.sleep(max(0.02, 4 * index.build_s))
    retrieval.refresh(ServedTable(torch.from_numpy(later), torch.from_numpy(later_bias)), N)
    retrieval.wait()
    assert retrieval.index is index and retrieval.builds == 0 and index.updated == len(swapped)
    assert index.recall >= 0.99 - ann.SLACK


def test_a_build_in_the_background_keeps_no_table_from_being_written_over() -> None:
    """While a first index builds (calibrated on stored users, which it asks for), the second
    delta after the model it builds on writes over that model's table, at once: the build
    holds no scoring (a build's holding one made such a publish wait a second, then copy
    the whole table: publishes of 2 s on a million items). The build still calibrates on
    the stored users, by the model it was started with."""
    asked, go = threading.Event(), threading.Event()

    def stored(users: int, length: int) -> tuple[list[list[Any]], float]:
        asked.set()
        assert go.wait(30)
        return clicks(np.random.default_rng(1), users), T0 + 100

    base = snapshot()
    ranker = Ranker(catalog(), CALIBRATED, stored)
    try:
        ranker.publish(base)
        assert asked.wait(30), "the first build did not ask for stored users"
        assert ranker.scoring.vectors is not None
        first = ranker.scoring.vectors
        one = with_rows(base, MOVED, 0.5, seed=3)
        ranker.publish(as_delta(base, one))
        started = time.monotonic()
        ranker.publish(as_delta(one, with_rows(one, NUDGED, 0.5, seed=4)))
        assert time.monotonic() - started < 0.5
        assert ranker.scoring.vectors is first  # written over, not copied
    finally:
        go.set()
        ranker.retrieval.wait()
    index = ranker.retrieval.index
    assert index is not None and index.stand_in and index.calibrated >= CALIBRATED.target_recall
