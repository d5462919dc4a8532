"""Candidates from the approximate nearest-neighbour index on a large catalog, against
exact scoring of every item by the same served model."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from freshrec.domain import Event, EventType, Item
from freshrec.encoders.hashing import HashingEncoder
from freshrec.learn.recommender import build_freshrec
from freshrec.model.snapshot import Snapshot
from freshrec.runtime import BACKGROUND_NICE
from freshrec.serve import clustering
from freshrec.serve import index as ann
from freshrec.serve.catalog import Catalog
from freshrec.serve.exact import hits, top_rows
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.request import encode
from freshrec.serve.retrieval import ServedTable
from freshrec.serve.service import latest_histories
from freshrec.settings import LearnSettings, ModelSettings, RetrievalSettings
from freshrec.storage import open_store
from tests.serve.conftest import READ, make_settings, start_server, wait_for

N = 6_000
TOPICS = ["garden", "kitchen", "space", "music", "books", "games", "tools", "sport"]
IDS = [f"i{n:05d}" for n in range(N)]
T0 = 1_700_000_000.0


def titles(ids: list[str]) -> list[str]:
    return [f"{TOPICS[int(i[1:]) % len(TOPICS)]} item {int(i[1:]) % 97} {i}" for i in ids]


def catalog(ids: list[str] = IDS) -> Catalog:
    c = Catalog()
    cats = [(TOPICS[int(i[1:]) % len(TOPICS)],) if int(i[1:]) >= 12 else ("rare",) for i in ids]
    c.put([Item(i, title=t, categories=k) for i, t, k in zip(ids, titles(ids), cats, strict=True)], text(ids))
    return c


def text(ids: list[str]) -> np.ndarray:
    return HashingEncoder(48).encode(titles(ids))


def snapshot() -> Snapshot:
    model = build_freshrec(N, text(IDS), ModelSettings(dim=32, history_length=8), LearnSettings())
    return Snapshot.of(model.net, IDS, [], checkpoint=1, updates=0, offset=0)


def ranked(ranker: Ranker, past: list[Event], options: Options) -> list[str]:
    return [r.item_id for r in ranker.recommend(past, T0 + 100, options)]


CALIBRATED = RetrievalSettings(min_items=1_000, candidates=50, calibration_requests=200)


def clicks(rng: np.random.Generator, n: int) -> list[list[Event]]:
    """``n`` users' histories of five random clicks."""
    return [
        [Event(f"u{u}", IDS[p], EventType.CLICK, T0 + j) for j, p in enumerate(rng.choice(N, size=5))] for u in range(n)
    ]


def after_traffic(snap: Snapshot, rng: np.random.Generator) -> tuple[Ranker, np.ndarray, np.ndarray, np.ndarray]:
    """A ranker of ``snap`` with the index that has served 200 requests, and what its next
    build calibrates on: the served vectors and biases and those requests' user vectors."""
    ranker = Ranker(catalog(), CALIBRATED)
    ranker.publish(snap)
    ranker.retrieval.wait()
    for past in clicks(rng, 200):
        ranked(ranker, past, Options(10))
    scoring = ranker.scoring
    assert scoring.vectors is not None and scoring.bias is not None
    return ranker, scoring.vectors.numpy(), scoring.bias.numpy(), np.array(ranker.retrieval.recent)


def table(vectors: np.ndarray, bias: np.ndarray) -> ServedTable:
    """What a ranker gives its retrieval: the served rows (these)."""
    return ServedTable(torch.from_numpy(vectors), torch.from_numpy(bias))


def no_hits(best: np.ndarray, most: int) -> np.ndarray:
    """Stands in for :func:`ann.hits`: a calibration without them."""
    return np.zeros(0, dtype=np.int64)


def found_share(index: ann.Index, queries: np.ndarray, vectors: np.ndarray, bias: np.ndarray, k: int) -> float:
    """The share of each query's exact top 10 among ``index``'s shortlist of ``k`` and its
    hits, with the lists it probes now: what its calibration measures, computed apart."""
    best = np.argsort(-(queries @ vectors.T + bias), axis=1)[:, :10]
    found = zip(best, index._search(queries, index.shortlist(k)), strict=True)
    return float(np.mean([np.isin(b, np.union1d(f, index.head)).mean() for b, f in found]))


def recall_on_others(ranker: Ranker, snap: Snapshot, others: list[list[Event]]) -> float:
    """Recall@10 of ``ranker``'s lists against scoring every item, on ``others``' requests."""
    exact = Ranker(catalog(), RetrievalSettings(min_items=N + 1))
    exact.publish(snap)
    found = sum(len(set(ranked(exact, p, Options(10))) & set(ranked(ranker, p, Options(10)))) for p in others)
    return found / (10 * len(others))


def test_candidates_from_the_index_recall_what_exact_scoring_ranks_first() -> None:
    snap = snapshot()
    exact = Ranker(catalog(), RetrievalSettings(min_items=N + 1))
    approximate = Ranker(catalog(), RetrievalSettings(min_items=1_000, candidates=200))
    exact.publish(snap)
    approximate.publish(snap)  # builds the index in the background
    deadline = time.monotonic() + 60
    while approximate.retrieval.index is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert approximate.retrieval.index is not None and exact.retrieval.index is None
    rng = np.random.default_rng(0)
    found, total = 0, 0
    for user in range(300):
        picks = rng.choice(N, size=int(rng.integers(1, 8)), replace=False)
        past = [Event(f"u{user}", IDS[p], EventType.CLICK, T0 + j) for j, p in enumerate(picks)]
        want = ranked(exact, past, Options(10))
        got = ranked(approximate, past, Options(10))
        assert len(got) == 10 and not set(got) & {e.item_id for e in past}
        found, total = found + len(set(want) & set(got)), total + 10
    assert found / total >= 0.98, f"recall@10 {found / total:.3f}"
    past = [Event("u", IDS[40], EventType.CLICK, T0)]
    rare = ranked(approximate, past, Options(10, categories=("rare",)))  # 12 items match
    assert len(rare) == 10 and all(int(i[1:]) < 12 for i in rare)
    explained = approximate.recommend(
        [*past, Event("u", IDS[41], EventType.CLICK, T0 + 1)], T0 + 2, Options(5, explain=True)
    )
    assert explained[0].because and explained[0].explanation


def test_a_request_that_excludes_items_gets_as_many_allowed_rows_of_its_shortlist_as_one_that_does_not() -> None:
    """Each request excludes its user's exact top 100 (as ``exclude_seen`` passes a user's
    seen items): its shortlist is only as many rows longer as it excludes, and holds every
    allowed row among the ``factor * wanted`` best by the codes that the lists probed hold."""
    snap = snapshot()
    rng = np.random.default_rng(1)
    ranker, vectors, bias, queries = after_traffic(snap, rng)
    ranker.retrieval.build_now(vectors, bias, queries)
    exact = Ranker(catalog(), RetrievalSettings(min_items=N + 1))
    exact.publish(snap)
    index = ranker.retrieval.index
    assert index is not None
    index.index.nprobe = 20  # lists that hold several times a shortlist (about 40 rows each)
    for past in clicks(rng, 30):
        first = ranked(exact, past, Options(100))
        request = ranker.plan(past, T0 + 100, Options(10, exclude=tuple(first)))
        codes = ranker.scoring.view.codes
        codes_out = {codes[i] for i in first} | {codes[e.item_id] for e in past}
        assert request.excluded.tolist() == sorted(codes_out)
        shortlist = index.factor * request.wanted + len(request.excluded)
        assert index.shortlist(request.wanted, len(request.excluded)) == shortlist
        encode([request])
        assert request.candidates is not None and request.users is not None
        by_codes = index._search(request.users[:1].numpy(), N)[0]
        allowed = [r for r in by_codes if r >= 0 and request.allowed[r]][: index.factor * request.wanted]
        assert set(allowed) <= set(request.candidates.tolist())
        assert len(allowed) == index.factor * request.wanted
        # what finish takes of the mask it never makes whole on this path
        rows = np.arange(N)
        assert (request.allowed_at(rows) == request.allowed).all() and request.allowed[rows].sum() == N - len(codes_out)
        got = ranked(ranker, past, Options(10, exclude=tuple(first)))
        assert len(got) == 10 and not set(got) & set(first) and not set(got) & {e.item_id for e in past}


def test_a_build_calibrates_its_probes_on_the_latest_requests_to_the_recall_it_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Searches leave their user vectors behind; the next build scores them exactly and
    probes the fewest lists that find ``target_recall`` of their top 10: what it measured
    holds for other requests too, and a lower target probes fewer lists. (Without the
    calibration's hits, which on this untrained model hold most top 10s: one list does.)"""
    monkeypatch.setattr(ann, "hits", no_hits)
    snap = snapshot()
    rng = np.random.default_rng(1)
    ranker, vectors, bias, queries = after_traffic(snap, rng)
    assert len(queries) == 200
    probes = {}
    for target in (0.5, 0.99):
        ranker.retrieval.settings = RetrievalSettings(min_items=1_000, candidates=50, target_recall=target)
        ranker.retrieval.build_now(vectors, bias, queries)
        index = ranker.retrieval.index
        assert index is not None and index.recall >= target
        probes[target] = index.probes
    assert probes[0.5] < probes[0.99] <= index.index.nlist
    # the fewest probes that reach the target, found one by one: the calibration's doubling
    # and halving land within an eighth of its last step above them, not at a power of two

    def recall(n: int) -> float:  # with the shortlist the probes were calibrated with
        index.index.nprobe, factor = n, index.factor
        index.factor = ann.SHORTLIST
        try:
            return found_share(index, queries, vectors, bias, 50)
        finally:
            index.factor = factor

    fewest = next(n for n in range(1, index.index.nlist + 1) if recall(n) >= 0.99)
    assert fewest <= probes[0.99] <= fewest + max(1, fewest // 8), (fewest, probes[0.99])
    index.index.nprobe = probes[0.99]
    recall_at_10 = recall_on_others(ranker, snap, clicks(rng, 100))
    assert recall_at_10 >= 0.97, f"recall@10 {recall_at_10:.3f} on requests it was not calibrated on"


def test_the_calibrations_hits_are_every_requests_candidates_and_cut_the_lists_probed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows in the exact top 10 of two or more calibration requests are scored for every
    request: the fewest lists that reach the target are fewer, and requests the build did
    not see find as much of their top 10 (measured by the served ranker against exact)."""
    assert hits(np.array([[5, 1, 2], [2, 7, 5], [9, 5, 3]]), 10).tolist() == [2, 5]
    assert hits(np.array([[5, 1, 2], [2, 7, 5], [9, 5, 3]]), 1).tolist() == [5]  # the most frequent
    snap = snapshot()
    rng = np.random.default_rng(3)
    ranker, vectors, bias, queries = after_traffic(snap, rng)
    ranker.retrieval.build_now(vectors, bias, queries)
    index = ranker.retrieval.index
    assert index is not None and 0 < len(index.head) <= 50 and index.recall >= 0.99
    with monkeypatch.context() as m:
        m.setattr(ann, "hits", no_hits)
        alone = ann.Index(vectors, bias, CALIBRATED, queries)
    assert index.probes < alone.probes
    request = ranker.plan(clicks(rng, 1)[0], T0 + 100, Options(10))
    encode([request])
    assert request.candidates is not None and set(index.head.tolist()) <= set(request.candidates.tolist())
    recall_at_10 = recall_on_others(ranker, snap, clicks(rng, 100))
    assert recall_at_10 >= 0.97, f"recall@10 {recall_at_10:.3f} on requests it was not calibrated on"


def test_a_build_keeps_the_shortest_shortlist_that_finds_as_much_and_merges_it_with_the_hits() -> None:
    """After the probes, the calibration takes the shortest shortlist (1 to ``SHORTLIST``
    times the candidates) that finds what the longest found: one row shorter finds less
    where it is not the shortest. A request's candidates are its shortlist and the hits,
    ascending, each once."""
    _, vectors, bias, queries = after_traffic(snapshot(), np.random.default_rng(7))
    factors = set()
    for candidates, target in ((50, 0.99), (12, 0.999)):
        settings = RetrievalSettings(min_items=1_000, candidates=candidates, target_recall=target)
        index = ann.Index(vectors, bias, settings, queries)
        factors.add(index.factor)
        assert found_share(index, queries, vectors, bias, candidates) == index.recall
        if index.factor > 1:
            index.factor -= 1
            assert found_share(index, queries, vectors, bias, candidates) < index.recall
    assert min(factors) < ann.SHORTLIST and max(factors) > 1, factors
    rng = np.random.default_rng(0)
    for _ in range(50):
        found = rng.choice(index.n, size=int(rng.integers(0, 300)), replace=False)
        assert index.with_head(found).tolist() == np.union1d(found, index.head).tolist()


def test_where_the_codes_cannot_reach_the_target_the_calibration_probes_what_comes_close(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A target that even every list misses (the 4-bit codes misjudge close calls, here with
    no shortlist beyond the candidates and no hits) does not make every request scan every
    list: the fewest lists within ``SLACK`` of what all of them find, and a warning."""
    monkeypatch.setattr(ann, "hits", no_hits)
    monkeypatch.setattr(ann, "SHORTLIST", 1)
    _, vectors, bias, queries = after_traffic(snapshot(), np.random.default_rng(5))
    settings = RetrievalSettings(min_items=1_000, candidates=12, target_recall=1.0)
    with caplog.at_level("WARNING", logger=ann.__name__):
        index = ann.Index(vectors, bias, settings, queries)
    probes, lists = index.probes, index.index.nlist
    index.index.nprobe = lists
    every = found_share(index, queries, vectors, bias, 12)
    assert every < 1.0 and every - ann.SLACK <= index.recall <= every and probes < lists / 2
    assert f"with every list probed and {index.recall:.4f} with the {probes} of {lists}" in caplog.text
    # the search itself: the fewest probes that reach a target, within an eighth of the last step
    found = ann._fewest(lambda p: min(1.0, p / 100), 0.5, 1_000)
    assert 50 <= found <= 56 and ann._fewest(lambda p: 0.3, 0.5, 1_000) == 1_000


def test_a_first_index_is_calibrated_once_requests_arrive_and_later_builds_reuse_its_clustering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server's first index has no requests to calibrate on: it is built again as soon as
    ``calibration_requests`` of them came, not ``rebuild_s`` later; a build reuses the
    clustering of the one before (until it is ``RETRAIN_S`` old, or the rows no longer fit)."""
    snap = snapshot()
    rng = np.random.default_rng(4)
    ranker = Ranker(catalog(), CALIBRATED)
    ranker.publish(snap)
    ranker.retrieval.wait()
    first = ranker.retrieval.index
    assert first is not None and np.isnan(first.recall) and first.probes == CALIBRATED.probes
    histories = clicks(rng, CALIBRATED.calibration_requests)
    for past in histories[:-1]:
        ranked(ranker, past, Options(10))
    ranker.refresh()
    ranker.retrieval.wait()
    assert ranker.retrieval.index is first  # one request short
    ranked(ranker, histories[-1], Options(10))
    ranker.refresh()
    ranker.retrieval.wait()
    second = ranker.retrieval.index
    assert second is not None and second is not first and second.recall >= CALIBRATED.target_recall
    assert second.trained is first.trained and second.index.ntotal == first.index.ntotal == N
    ranker.refresh()
    ranker.retrieval.wait()
    assert ranker.retrieval.index is second  # calibrated and young: kept
    assert recall_on_others(ranker, snap, clicks(rng, 100)) >= 0.97
    lists = second.index.nlist
    assert second.trained.fits(second.dims, lists) and not second.trained.fits(second.dims + 2, lists)
    assert not second.trained.fits(second.dims, 2 * lists)
    monkeypatch.setattr(clustering, "RETRAIN_S", 0.0)
    assert not second.trained.fits(second.dims, lists)


def test_a_first_index_calibrates_on_stored_users_and_later_ones_on_requests() -> None:
    """Before any request, a build calibrates on the stored users' histories the ranker is
    given (``calibration_requests`` of them, ``history_length`` events each): the first index
    is calibrated, finds the target on requests it did not see, and is not built again when
    requests come; a build with enough requests calibrates on those."""
    snap = snapshot()
    rng = np.random.default_rng(6)
    asked: list[tuple[int, int]] = []

    def stored(users: int, length: int) -> tuple[list[list[Event]], float]:
        asked.append((users, length))
        return clicks(rng, users), T0 + 100

    ranker = Ranker(catalog(), CALIBRATED, stored)
    refresh, served_before = ranker.retrieval.refresh, []

    def refreshed(*args: Any) -> None:  # the build is claimed before the model is served: not ready meanwhile
        served_before.append(ranker.scoring.snapshot is not None)
        refresh(*args)

    ranker.retrieval.refresh = refreshed  # type: ignore[method-assign]
    ranker.publish(snap)
    assert served_before == [False] and (ranker.retrieval.warming or ranker.retrieval.index is not None)
    ranker.retrieval.wait()
    first = ranker.retrieval.index
    assert asked == [(CALIBRATED.calibration_requests, snap.settings.history_length)]
    assert first is not None and first.recall >= CALIBRATED.target_recall and first.stand_in
    assert recall_on_others(ranker, snap, clicks(rng, 100)) >= 0.97
    built = first.built_at
    for past in clicks(rng, CALIBRATED.calibration_requests):
        ranked(ranker, past, Options(10))
    ranker.refresh()
    ranker.retrieval.wait()
    assert ranker.retrieval.index is first  # young, but checked at once on the requests: calibrated on them
    assert not first.stand_in and first.built_at > built and first.recall >= CALIBRATED.target_recall
    ranker.refresh()
    ranker.retrieval.wait()
    assert first.built_at > built and ranker.retrieval.index is first  # young and calibrated: left alone
    ranker.retrieval.index = None
    ranker.refresh()  # builds again, with the requests there
    ranker.retrieval.wait()
    assert asked == [(CALIBRATED.calibration_requests, snap.settings.history_length)]  # not asked again
    second = ranker.retrieval.index
    assert second is not None and second.recall >= CALIBRATED.target_recall


def test_an_old_index_that_still_finds_its_recall_is_kept_and_one_that_drifted_is_built_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past ``rebuild_s``, the index is first checked on the latest requests against the
    newer vectors: kept (with the check's recall, counted as built now) while it finds what
    its calibration did; built again when the vectors moved so that it no longer does.
    (Without the calibration's hits, which on this untrained model hold most top 10s.)"""
    monkeypatch.setattr(ann, "hits", no_hits)
    ranker, vectors, bias, queries = after_traffic(snapshot(), np.random.default_rng(8))
    served = ranker.retrieval
    served.build_now(vectors, bias, queries)
    index = served.index
    assert index is not None and index.recall >= CALIBRATED.target_recall
    served.settings = CALIBRATED.model_copy(update={"rebuild_s": 0.01})

    def aged() -> float:
        time.sleep(max(0.02, 4 * index.build_s))
        return index.built_at

    built = aged()
    served.refresh(table(vectors, bias), N)
    served.wait()
    assert served.index is index and index.built_at > built and index.recall >= CALIBRATED.target_recall
    drifted = np.random.default_rng(9).permutation(vectors)  # every item another's vector
    assert not index.holds(drifted, bias, queries)
    served.moved(np.arange(N), np.linalg.norm(drifted - vectors, axis=1))  # as a ranker's publish says
    aged()
    with caplog.at_level(logging.INFO, logger="freshrec.serve.retrieval"):
        served.refresh(table(drifted, bias), N)
        served.wait()
    rebuilt = served.index
    assert rebuilt is not None and rebuilt is not index and rebuilt.recall >= CALIBRATED.target_recall
    found, probes = index.checked
    bound = int(ann.REPROBE * index.calibrated_probes)
    assert found < CALIBRATED.target_recall and index.calibrated_probes < probes <= bound
    said = f"finds {found:.3f} of the exact top 10 of {len(queries)} requests with {probes} of {index.index.nlist}"
    assert any(said in r.getMessage() and "building it again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("items", [6, 500])
def test_the_exact_top_10_what_calibrations_measure_against_is_each_users_best_rows(items: int) -> None:
    """Over several chunks of users, and for catalogs of fewer than ten items (all of them)."""
    rng = np.random.default_rng(3)
    vectors, bias = rng.normal(size=(items, 8)).astype(np.float32), rng.normal(size=items).astype(np.float32)
    users = rng.normal(size=(150, 8)).astype(np.float32)
    best = top_rows(vectors, bias, users)
    expected = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    assert best.shape == (150, min(10, items)) and best.dtype == np.int64
    assert all(set(b) == set(e) for b, e in zip(best, expected, strict=True))


def test_a_check_that_falls_short_probes_more_lists_up_to_its_bound_before_a_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check that finds less than its target with the lists probed now tries more, up to
    :data:`~freshrec.serve.index.REPROBE` times those its calibration chose, and keeps the
    index with the fewest that find enough; where even those fall short, it leaves the
    index as it is, to be built again. (The index is made to probe too few lists here: as
    if the requests had moved to where it needs more.)"""
    monkeypatch.setattr(ann, "hits", no_hits)
    ranker, vectors, bias, queries = after_traffic(snapshot(), np.random.default_rng(8))
    ranker.retrieval.build_now(vectors, bias, queries)
    index = ranker.retrieval.index
    assert index is not None and index.recall >= CALIBRATED.target_recall
    calibrated = index.calibrated_probes
    assert calibrated >= 8
    index.index.nprobe = calibrated // 2
    assert found_share(index, queries, vectors, bias, CALIBRATED.candidates) < CALIBRATED.target_recall
    assert index.holds(vectors, bias, queries)
    assert calibrated // 2 < index.probes <= int(ann.REPROBE * calibrated)
    assert found_share(index, queries, vectors, bias, CALIBRATED.candidates) >= CALIBRATED.target_recall
    assert index.recall >= CALIBRATED.target_recall

    index.calibrated_probes = index.index.nprobe = calibrated // 4  # its bound: fewer lists than it needs
    bound = int(ann.REPROBE * index.calibrated_probes)
    index.index.nprobe = bound
    assert found_share(index, queries, vectors, bias, CALIBRATED.candidates) < CALIBRATED.target_recall
    index.index.nprobe = calibrated // 4
    built = index.built_at
    assert not index.holds(vectors, bias, queries)
    assert index.probes == calibrated // 4 and index.built_at == built

    index.stand_in = True  # calibrated on stored users: the first check on requests has no bound
    assert index.holds(vectors, bias, queries)
    assert bound < index.probes == index.calibrated_probes and not index.stand_in
    assert found_share(index, queries, vectors, bias, CALIBRATED.candidates) >= CALIBRATED.target_recall


def test_latest_histories_are_those_of_the_users_who_acted_last(tmp_path: Path) -> None:
    """What a first index calibrates on: the users whose events end the log, newest first,
    each with their own last ``length`` events (older ones read from the user's history,
    not only from the log's end)."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        events = [Event(f"u{n % 50}", IDS[n], EventType.CLICK, T0 + n) for n in range(400)]
        events += [Event("u7", IDS[500 + n], EventType.VIEW, T0 + 500 + n) for n in range(3)]
        store.append_events(events)
        latest = latest_histories(store, 4, 5)
        assert [h[-1].user_id for h in latest] == ["u7", "u49", "u48", "u47"]
        assert [e.item_id for e in latest[0]] == [IDS[307], IDS[357], IDS[500], IDS[501], IDS[502]]
        assert all(len(h) == 5 and len({e.user_id for e in h}) == 1 for h in latest)
        assert len(latest_histories(store, 1_000, 3)) == 50
    finally:
        store.close()


def test_items_added_after_the_index_was_built_are_always_candidates() -> None:
    snap = snapshot()
    c = catalog()
    ranker = Ranker(c, RetrievalSettings(min_items=1_000))
    ranker.publish(snap)
    scoring = ranker.scoring
    assert scoring.vectors is not None and scoring.bias is not None
    ranker.retrieval.build_now(scoring.vectors.numpy(), scoring.bias.numpy())
    c.put([Item("late", title="garden item late")], HashingEncoder(48).encode(["garden item late"]))
    ranker.refresh()
    request = ranker.plan([Event("u", IDS[3], EventType.CLICK, T0)], T0 + 1, Options(10))
    encode([request])
    assert request.candidates is not None and c.view.codes["late"] in request.candidates
    index = ranker.retrieval.index
    assert (
        index is not None
        and len(request.candidates) == index.shortlist(request.wanted, len(request.excluded)) + 1 < N / 5
    )


def test_a_relayout_keeps_the_index_where_it_moves_only_rows_added_after_it_and_drops_it_elsewhere() -> None:
    """The learner took in an item the catalog added after another (an event named it
    first): the view is laid out anew past the index's rows, which stay as they were. A
    layout that moves a row the index holds makes it build one anew. Each ranker compares
    the view it serves with the one before, whoever laid it out: another ranker on the
    catalog (an experiment's arm) that lays it out in its own numbering again keeps its index."""

    def learned(ids: list[str]) -> Snapshot:
        model = build_freshrec(len(ids), text(ids), ModelSettings(dim=32, history_length=8), LearnSettings())
        return Snapshot.of(model.net, ids, [], checkpoint=1, updates=0, offset=0)

    c = catalog()
    ranker, arm = Ranker(c, RetrievalSettings(min_items=1_000)), Ranker(c, RetrievalSettings(min_items=1_000))
    for r in (ranker, arm):
        r.publish(snapshot())
        r.retrieval.wait()
        sc = r.scoring
        assert sc.vectors is not None and sc.bias is not None
        r.retrieval.build_now(sc.vectors.numpy(), sc.bias.numpy())
    index, arms = ranker.retrieval.index, arm.retrieval.index
    first, second = "i90000", "i90001"
    c.put(
        [Item(i, title=t) for i, t in zip([first, second], titles([first, second]), strict=True)], text([first, second])
    )
    ranker.publish(learned([*IDS, second]))
    assert c.view.ids[N:] == [second, first] and ranker.retrieval.index is index  # rows past the index's
    request = ranker.plan([Event("u", IDS[3], EventType.CLICK, T0)], T0 + 1, Options(10))
    encode([request])
    assert request.candidates is not None and {N, N + 1} <= set(request.candidates.tolist())
    arm.refresh()
    assert arm.retrieval.index is arms
    ranker.publish(learned([*IDS[:5], *IDS[6:], second, IDS[5]]))  # row 5 holds another item now
    assert c.view.ids[5] == IDS[6] and ranker.retrieval.index is not index
    arm.refresh()  # the arm lays the catalog out in its model's numbering again: its index's rows are as they were
    assert c.view.ids[:N] == IDS and arm.retrieval.index is arms
    for r in (ranker, arm):
        r.retrieval.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="niceness per thread is Linux's")
def test_the_background_build_runs_at_a_lower_priority_than_requests_and_only_its_thread() -> None:
    snap = snapshot()
    ranker = Ranker(catalog(), RetrievalSettings(min_items=1_000))
    ranker.publish(snap)  # builds in the background
    ranker.retrieval.wait()
    seen: list[tuple[int, int]] = []
    scoring = ranker.scoring
    assert scoring.vectors is not None and scoring.bias is not None

    class Watched(ServedTable):
        def rows(self, which: Any = None, tower: Any = None) -> tuple[np.ndarray, np.ndarray]:
            seen.append((os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), threading.get_native_id()))
            return super().rows(which, tower)  # called on the build's thread

    ranker.retrieval.index = None
    ranker.retrieval.refresh(Watched(scoring.vectors, scoring.bias), len(scoring.vectors))
    ranker.retrieval.wait()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert [nice for nice, _ in seen] == [min(base + BACKGROUND_NICE, 19)]
    assert seen[0][1] != threading.get_native_id() and ranker.retrieval.index is not None


def test_a_server_builds_the_index_in_the_background_says_so_and_ranks_its_candidates(tmp_path: Path) -> None:
    """End to end: a catalog above ``min_items`` gets its index after the first model is
    served (``/metrics`` counts its items), and requests still return full lists."""
    settings = make_settings(tmp_path, retrieval=RetrievalSettings(min_items=50, candidates=20))
    for served in start_server(tmp_path, settings):
        with served.api(READ) as api:
            wait_for(lambda: re.search(r"^freshrec_candidate_index_items 120\.0$", api.metrics(), re.M), 60)
            assert re.search(r"^freshrec_candidate_index_recall ", api.metrics(), re.M)
            assert re.search(r"^freshrec_candidate_index_builds [1-9]", api.metrics(), re.M)
            assert re.search(r"^freshrec_candidate_index_updated_rows ", api.metrics(), re.M)
            age = re.search(r"^freshrec_item_tower_age_seconds (\S+)$", api.metrics(), re.M)
            assert age and 0 <= float(age.group(1)) == pytest.approx(served.engine.service.ranker.tower.age_s, abs=5)
            index = served.engine.service.ranker.retrieval.index
            assert index is not None and 0 < index.scanned <= 1
            scanned = re.search(r"^freshrec_candidate_index_probes (\S+)$", api.metrics(), re.M)
            assert scanned and float(scanned.group(1)) == index.probes / index.index.nlist
            user = str(served.events[-1]["user_id"])
            assert len(api.recommend(user, k=10)["items"]) == 10
            # while the first index is built, the server says it is not ready
            retrieval = served.engine.service.ranker.retrieval
            with retrieval._building:
                retrieval.index = None
                assert not api.ready()
                retrieval.index = index
            assert api.ready()


def test_search_threads_limit_the_calling_thread_only() -> None:
    """The server's event loop searches on ``torch_threads`` OpenMP threads; the setting
    stays with that thread (a thread started later gets faiss's default)."""
    import faiss

    def in_thread(fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn)
        thread.start()
        thread.join()

    seen: dict[str, int] = {}
    in_thread(lambda: seen.setdefault("default", faiss.omp_get_max_threads()))

    def loop() -> None:
        ann.search_threads(1)
        seen["loop"] = faiss.omp_get_max_threads()
        in_thread(lambda: seen.setdefault("later", faiss.omp_get_max_threads()))

    in_thread(loop)
    assert seen["loop"] == 1 and seen["later"] == seen["default"]
