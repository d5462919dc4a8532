"""Snapshot deltas: what changed since the last snapshot, applied on serving's copy of it."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from freshrec import serialization
from freshrec.domain import Item
from freshrec.learn.sender import Sender
from freshrec.model import deltas
from freshrec.model.deltas import ITEM_TOWER, SnapshotDelta, apply, delta_since
from freshrec.model.sequence import SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serialization import Malformed
from freshrec.serve import ranker as ranker_module
from freshrec.serve.catalog import Catalog, CatalogView, starts_with
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Ranker
from freshrec.serve.scoring import build_scoring
from freshrec.settings import ClusterSettings, ModelSettings

SETTINGS = ModelSettings(dim=8, history_length=4, heads=2)
WIDTH = 6


def ids(n: int) -> list[str]:
    return [f"i{j}" for j in range(n)]


def learner(n: int = 40) -> SequenceNet:
    torch.manual_seed(0)
    net = SequenceNet(n, torch.randn(n, WIDTH), SETTINGS)
    with torch.no_grad():
        net.active[: n // 2] = True
        net.item_id.weight[: n // 2] = torch.randn(n // 2, SETTINGS.dim)
    return net


def snap(net: SequenceNet, **info: Any) -> Snapshot:
    return Snapshot.of(net, ids(len(net.active)), [], checkpoint=1, updates=info.pop("updates", 0), offset=9, **info)


def step(net: SequenceNet, rows: list[int]) -> None:
    """What an online micro-batch does: a few item rows and every dense layer move."""
    with torch.no_grad():
        net.item_id.weight[rows] += 0.5
        net.item_bias.weight[rows] -= 0.25
        net.active[rows] = True
        net.interactions[rows] += 1
        net.query += 0.1
        net.adapter.weight += 0.01


def grow(net: SequenceNet, n: int) -> None:
    net.grow(torch.randn(n, WIDTH))


def test_a_delta_carries_the_changed_rows_and_applies_to_what_the_learner_has_but_the_item_tower() -> None:
    net = learner()
    before = snap(net)
    step(net, [3, 25])
    grow(net, 2)
    after = snap(net, updates=1)
    delta = delta_since(after, before)
    assert delta is not None and delta.rows.tolist() == [3, 25, 40, 41]
    assert delta.new_item_ids == ["i40", "i41"]
    assert not any(name.startswith(ITEM_TOWER) for name in delta.state)
    read = deltas.read(delta.to_bytes(b"k"), b"k")
    assert isinstance(read, SnapshotDelta)
    kept = {name: tensor.clone() for name, tensor in before.state.items()}
    served = apply(before, read)
    assert served.item_ids == after.item_ids and served.version == "1.1"
    assert served.parent == before.serial and served.serial == after.serial
    assert served.changed is not None and served.changed.tolist() == [3, 25, 40, 41]
    for name, tensor in served.state.items():
        if name.startswith(ITEM_TOWER):  # the tower stays the last whole snapshot's
            assert tensor is before.state[name]
        else:
            assert torch.equal(tensor, after.state[name]), name
    assert not torch.equal(served.state["adapter.weight"], after.state["adapter.weight"])
    # requests may still read the base: applying leaves it as it was
    assert all(torch.equal(before.state[name], kept[name]) for name in kept)


def test_a_delta_is_not_made_where_it_cannot_say_what_changed() -> None:
    net = learner()
    before = snap(net)
    reordered = dataclasses.replace(snap(net), item_ids=list(reversed(before.item_ids)))
    other_settings = dataclasses.replace(snap(net), settings=SETTINGS.model_copy(update={"dropout": 0.3}))
    assert delta_since(reordered, before) is None
    assert delta_since(other_settings, before) is None
    assert delta_since(before, before) is not None and len(delta_since(before, before).rows) == 0  # type: ignore[union-attr]


def test_a_delta_on_another_snapshot_or_that_does_not_fit_is_refused() -> None:
    net = learner()
    before = snap(net)
    step(net, [1])
    after = snap(net, updates=1)
    delta = delta_since(after, before)
    assert delta is not None
    with pytest.raises(Malformed, match="another snapshot"):
        apply(snap(learner()), delta)
    nan = {**delta.state, "query": torch.full_like(delta.state["query"], float("nan"))}
    seen = delta.state["last_seen"]
    future = {**delta.state, "last_seen": torch.full_like(seen, float("inf"))}  # only minus infinity is allowed
    never = {**delta.state, "last_seen": torch.full_like(seen, float("-inf"))}
    assert apply(before, deltas.read(dataclasses.replace(delta, state=never).to_bytes())) is not None  # type: ignore[arg-type]
    short = {**delta.state, "item_id.weight": delta.state["item_id.weight"][:0]}
    missing = {k: v for k, v in delta.state.items() if k != "query"}
    cases = {
        "ascend": dataclasses.replace(delta, rows=torch.tensor([40])),
        "'query' holds values that are not finite": dataclasses.replace(delta, state=nan),
        "'last_seen' holds values that are not finite": dataclasses.replace(delta, state=future),
        "item_id.weight": dataclasses.replace(delta, state=short),
        "expected": dataclasses.replace(delta, state=missing),
        "every new item": dataclasses.replace(delta, new_item_ids=["new"]),
        "repeat": dataclasses.replace(delta, new_item_ids=["i0"], rows=torch.tensor([1, 40])),
    }
    for reason, case in cases.items():
        with pytest.raises(Malformed, match=reason):
            apply(before, deltas.read(case.to_bytes()))  # type: ignore[arg-type]
    with pytest.raises(Malformed, match="unexpected fields"):
        deltas.read(serialization.dumps({**delta.__dict__, "kind": "delta", "evil": 1}))


def test_a_delta_without_new_items_keeps_its_parents_item_list_and_the_view_remembers_what_leads_it() -> None:
    """At a million items, comparing the ids of every publish with the view's took 42 ms
    twice; a delta's snapshot now keeps its parent's list, which the view knows leads it."""
    net = learner()
    before = snap(net)
    step(net, [2])
    same = apply(before, delta_since(snap(net, updates=1), before))  # type: ignore[arg-type]
    assert same.item_ids is before.item_ids
    grow(net, 1)
    grown = apply(same, delta_since(snap(net, updates=2), same))  # type: ignore[arg-type]
    assert grown.item_ids == [*before.item_ids, "i40"] and before.item_ids == ids(40)  # the parent's list unchanged
    view = CatalogView([*ids(41), "extra"], np.zeros((42, WIDTH), np.float32), [""] * 42, [()] * 42, np.ones(42, bool))
    assert starts_with(view, before.item_ids) and view.led_by == (before.item_ids, 40)
    assert starts_with(view, grown.item_ids) and starts_with(view, list(before.item_ids))
    assert not starts_with(view, list(reversed(before.item_ids)))  # another list of the same length: compared
    assert not starts_with(view, [*ids(41), "other"]) and not starts_with(view, ids(43))


def test_serving_recomputes_only_the_changed_rows_and_gets_the_whole_rebuilds_table() -> None:
    net = learner()
    before = snap(net)
    step(net, [2, 30])
    served = apply(before, delta_since(snap(net, updates=1), before))  # type: ignore[arg-type]
    view = CatalogView(ids(40), before_text(net), ids(40), [()] * 40, np.ones(40, dtype=bool))
    first = build_scoring(before, view)
    following = build_scoring(served, view, previous=first)
    whole = build_scoring(served, view)
    assert following.vectors is not None and whole.vectors is not None and first.vectors is not None
    torch.testing.assert_close(following.vectors, whole.vectors)
    torch.testing.assert_close(following.bias, whole.bias)
    np.testing.assert_allclose(following.norms, whole.norms, rtol=1e-6, atol=1e-6)
    moved = (following.vectors != first.vectors).any(1).nonzero().squeeze(1).tolist()
    assert moved == [2, 30]  # the others were copied, not recomputed
    assert first.vectors is not following.vectors  # and the previous table was left to its readers


def before_text(net: SequenceNet) -> np.ndarray:
    return net.text.numpy().copy()


def test_the_server_applies_deltas_in_order_and_skips_one_on_a_snapshot_it_did_not_get() -> None:
    metrics = Metrics()
    models = Models(Ranker(Catalog()), ClusterSettings(), metrics)  # publisher not started: pending stays
    net = learner()
    first = snap(net)
    step(net, [4])
    second = snap(net, updates=1)
    step(net, [5])
    third = snap(net, updates=2)
    assert models.receive(first.to_bytes(), "learner") is not None
    models._pending = None  # as if the publisher had built it
    assert models.receive(delta_since(third, second).to_bytes(), "learner") is None  # type: ignore[union-attr]
    assert metrics.skipped_deltas._value.get() == 1
    got = models.receive(delta_since(second, first).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None and got.version == "1.1"
    got = models.receive(delta_since(third, second).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None and got.version == "1.2"
    assert torch.equal(got.state["item_id.weight"], third.state["item_id.weight"])
    # the publisher had not run: the one it builds covers the rows of both deltas
    assert models._pending is not None and models._pending.changed.tolist() == [4, 5]  # type: ignore[union-attr]
    assert models._pending.parent == first.serial


def test_the_sender_sends_deltas_between_whole_snapshots_and_a_whole_one_after_a_failure() -> None:
    sent: list[Snapshot | SnapshotDelta] = []
    fail = threading.Event()

    def deliver(data: bytes, start: bool) -> None:
        if fail.is_set():
            fail.clear()
            raise ConnectionError("the pipe is away")
        sent.append(deltas.read(data))

    sender = Sender(deliver, lambda message: None, 0.0, full_every_s=60.0).start()
    net = learner()
    try:
        for n in range(4):
            if n == 2:
                fail.set()
            step(net, [n])
            sender.snapshot(snap(net, updates=n))
            wait_for(lambda n=n: len(sent) + (n >= 2) > n and not fail.is_set())
    finally:
        sender.close(5)
    kinds = [type(x).__name__ for x in sent]
    assert kinds == ["Snapshot", "SnapshotDelta", "Snapshot"]  # the third failed; the fourth came whole


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def published_by_hand(net: SequenceNet) -> tuple[Catalog, Ranker, Models, Snapshot, Snapshot]:
    """A server's catalog, ranker and models (publisher not started) serving ``net``'s
    snapshot, which is returned as sent and as parsed."""
    catalog = Catalog()
    catalog.view = CatalogView(ids(40), before_text(net), ids(40), [()] * 40, np.ones(40, dtype=bool))
    ranker = Ranker(catalog)
    models = Models(ranker, ClusterSettings(), Metrics())
    sent = snap(net)
    first = models.parse(sent.to_bytes(), "learner")
    assert first is not None
    models.publish(first)
    ranker.publish(first)
    return catalog, ranker, models, sent, first


def delivered(
    net: SequenceNet, rows: list[int], updates: int, sent: Snapshot, models: Models
) -> tuple[Snapshot, Snapshot]:
    """``net`` after a step on ``rows``: the learner's snapshot, and what the server parsed of
    its delta on ``sent``."""
    step(net, rows)
    now = snap(net, updates=updates)
    got = models.parse(delta_since(now, sent).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None
    return now, got


def test_serving_writes_each_delta_over_the_table_no_request_reads_any_more() -> None:
    """A chain of deltas received as bytes: their per-item tables are patched in place and
    the item table of two publishes ago is written over, unless a request still holds its
    scoring; every table served equals a whole build of its snapshot."""
    net = learner()
    catalog, ranker, models, sent, first = published_by_hand(net)
    tables, held = [ranker.scoring.vectors], None  # the tables alone: no scoring is kept alive
    for n, rows in enumerate([[1], [2, 3], [3], [7], [1, 9]]):
        now, got = delivered(net, rows, n + 1, sent, models)
        assert got.state["item_id.weight"] is first.state["item_id.weight"]  # patched in place
        models.publish(got)
        ranker.publish(got)
        sent = now
        if n == 2:
            held = ranker.scoring  # a request still reading it: its table must stay
            kept = held.vectors.clone()  # type: ignore[union-attr]
        tables.append(ranker.scoring.vectors)
        expected = build_scoring(got, catalog.view)  # whole, with the item tower serving keeps
        torch.testing.assert_close(ranker.scoring.vectors, expected.vectors)
        torch.testing.assert_close(ranker.scoring.bias, expected.bias)
        np.testing.assert_allclose(ranker.scoring.norms, expected.norms, rtol=1e-6, atol=1e-6)
    assert held is not None and torch.equal(held.vectors, kept)  # type: ignore[arg-type]
    a, b = tables[0], tables[1]
    assert [t is a for t in tables] == [True, False, True, False, True, False]  # two tables take turns
    assert tables[3] is b and tables[5] is not b  # not the one the request held: a copy instead


def test_deltas_on_a_catalog_with_items_the_learner_lacks_patch_the_padded_tables_in_place() -> None:
    """Items added to the catalog that the model has not taken in yet: each delta's build
    copies its changed rows into the per-item tables padded for them by the build before
    (untouched rows after the learner's), and serves what a whole build of its snapshot
    serves."""
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    catalog.put([Item("new0"), Item("new1")], np.ones((2, WIDTH), np.float32))
    ranker.refresh()
    padded = ranker.scoring.net.item_id.weight  # type: ignore[union-attr]
    assert padded.shape[0] == 42 and not padded[40:].any()
    for n, rows in enumerate([[1], [2, 3], [3], [39, 0]]):
        now, got = delivered(net, rows, n + 1, sent, models)
        models.publish(got)
        ranker.publish(got)
        sent = now
        served = ranker.scoring.net
        assert served is not None and served.item_id.weight.data_ptr() == padded.data_ptr()  # patched, not copied
        for name in ("item_id.weight", "item_bias.weight", "active", "interactions", "last_seen"):
            mine, learned = served.state_dict()[name], got.state[name]
            torch.testing.assert_close(mine[:40], learned)
            assert (mine[40:] == (float("-inf") if name == "last_seen" else 0)).all()
        expected = build_scoring(got, catalog.view)
        torch.testing.assert_close(ranker.scoring.vectors, expected.vectors)
        torch.testing.assert_close(ranker.scoring.bias, expected.bias)


def test_items_added_between_deltas_grow_the_tables_into_spare_rows_and_no_delta_writes_a_held_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shop adds items while deltas arrive: a build for an added item writes its rows into
    the spare rows of the tables the build before made (item table, rows' lengths, text part,
    padded per-item tables), and the table kept for the next delta grows with them. Requests
    that never end hold some of those scorings: no delta writes over the memory they read,
    though it is shared with the tables extended from theirs. Every table served equals a
    whole build."""
    monkeypatch.setattr(ranker_module, "SPARE_WAIT_S", 0.02)
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    rng = np.random.default_rng(0)
    held: list[tuple[Any, ...]] = []
    shared = {"table": 0, "padded": 0}
    nets: list[SequenceNet] = []
    for n in range(9):
        for k in range(2):
            catalog.put([Item(f"new{n}-{k}")], rng.standard_normal((1, WIDTH)).astype(np.float32))
            before = ranker.scoring
            ranker.refresh()
            grown = ranker.scoring
            assert grown.vectors is not None and before.vectors is not None and grown.net is not None
            assert grown.written is not None and grown.written.tolist() == [len(before.vectors)]
            if grown.vectors.data_ptr() == before.vectors.data_ptr():
                shared["table"] += 1
                assert grown.grown_from[0]() is before and grown.bias.data_ptr() == before.bias.data_ptr()  # type: ignore[union-attr]
                assert np.shares_memory(grown.norms, before.norms)
            padded, was = grown.net.item_id.weight, before.net.item_id.weight  # type: ignore[union-attr]
            shared["padded"] += padded.data_ptr() == was.data_ptr() and len(padded) == len(was) + 1
            nets.append(grown.net)  # a network no scoring uses any more, refilled with more items
            if n % 3 == k:
                held.append((grown, grown.vectors.clone(), grown.bias.clone(), grown.norms.copy()))  # type: ignore[union-attr]
            expected = build_scoring(grown.snapshot, catalog.view)
            torch.testing.assert_close(grown.vectors, expected.vectors)
        now, got = delivered(net, [n, 20 + n], n + 1, sent, models)
        models.publish(got)
        ranker.publish(got)
        sent = now
        expected = build_scoring(got, catalog.view)
        torch.testing.assert_close(ranker.scoring.vectors, expected.vectors)
        torch.testing.assert_close(ranker.scoring.bias, expected.bias)
        np.testing.assert_allclose(ranker.scoring.norms, expected.norms, rtol=1e-6, atol=1e-6)
    # the second add of each round found spare rows, but where the block had none left
    assert shared["table"] >= 8 and shared["padded"] >= 12
    assert len({id(net) for net in nets}) <= 8
    for sc, vectors, bias, norms in held:
        assert torch.equal(sc.vectors, vectors) and torch.equal(sc.bias, bias)
        np.testing.assert_array_equal(sc.norms, norms)


def test_the_first_item_added_after_a_whole_model_writes_its_rows_into_spare_rows() -> None:
    """A whole model's served tables (item table, biases, rows' lengths, what the text adds to
    them) and the copy kept for its first delta are made with spare rows: the first item added
    after it copies none of them (on a million items, 0.3-1.0 s of copies), also after deltas
    and another whole model."""
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    rng = np.random.default_rng(0)
    for n in range(3):
        whole, kept = ranker.scoring, ranker._behind.tables  # type: ignore[union-attr]
        assert whole.snapshot is not None and whole.snapshot.changed is None
        catalog.put([Item(f"new{n}")], rng.standard_normal((1, WIDTH)).astype(np.float32))
        ranker.refresh()
        grown = ranker.scoring
        assert grown.vectors is not None and whole.vectors is not None and grown.bias is not None
        assert grown.vectors.data_ptr() == whole.vectors.data_ptr() and len(grown.vectors) == len(whole.vectors) + 1
        assert grown.bias.data_ptr() == whole.bias.data_ptr() and np.shares_memory(grown.norms, whole.norms)
        now = ranker._behind.tables  # type: ignore[union-attr]
        assert now[0].data_ptr() == kept[0].data_ptr() and len(now[0]) == len(kept[0]) + 1
        assert np.shares_memory(now[2], kept[2])
        assert whole.text_part is not None and grown.text_part is not None  # what the text adds, too
        for was, part in zip(whole.text_part, grown.text_part, strict=True):
            assert part.data_ptr() == was.data_ptr() and len(part) == len(was) + 1
        expected = build_scoring(grown.snapshot, catalog.view)
        torch.testing.assert_close(grown.vectors, expected.vectors)
        np.testing.assert_allclose(grown.norms, expected.norms, rtol=1e-6, atol=1e-6)
        sent, got = delivered(net, [n, 10 + n], 2 * n + 1, sent, models)  # a delta, then a whole model again
        ranker.publish(got)
        sent = snap(net, updates=2 * n + 2)
        whole_again = models.parse(sent.to_bytes(), "learner")
        assert whole_again is not None
        models.publish(whole_again)
        ranker.publish(whole_again)


def test_deltas_that_add_items_extend_the_received_tables_into_spare_rows() -> None:
    """Each time the learner takes new items in, serving's copy of the snapshot gets its
    rows: the first such delta copies the per-item tables into blocks with spare rows, the
    later ones write there. The tables equal the learner's."""
    net = learner()
    _, _, models, sent, _ = published_by_hand(net)
    addresses = []
    for n in range(3):
        grow(net, 1)
        now, got = delivered(net, [n, 40 + n], n + 1, sent, models)
        assert len(got.item_ids) == 41 + n
        for name in ("item_id.weight", "item_bias.weight", "active", "interactions", "last_seen"):
            assert torch.equal(got.state[name], now.state[name])
        addresses.append(got.state["item_id.weight"].data_ptr())
        models.publish(got)
        sent = now
    assert addresses[0] == addresses[1] == addresses[2]


def test_a_delta_that_adds_items_the_catalog_serves_already_recomputes_the_changed_rows_alone() -> None:
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    catalog.put([Item("i40"), Item("i41")], np.ones((2, WIDTH), np.float32))
    ranker.refresh()
    grow(net, 1)  # the learner takes "i40" in (an event named it), not yet "i41"
    step(net, [2, 40])
    got = models.parse(delta_since(snap(net, updates=1), sent).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None and got.item_ids == ids(41)
    models.publish(got)
    ranker.publish(got)
    served = ranker.scoring
    assert catalog.view.ids == ids(42) and served.written is not None and served.written.tolist() == [2, 40]
    expected = build_scoring(got, catalog.view)
    torch.testing.assert_close(served.vectors, expected.vectors)
    torch.testing.assert_close(served.bias, expected.bias)
    np.testing.assert_allclose(served.norms, expected.norms, rtol=1e-6, atol=1e-6)


def test_the_first_delta_after_a_whole_snapshot_writes_over_a_copy_made_with_the_whole_build() -> None:
    """After a whole snapshot there is no older table a delta could write over, so a copy
    of the whole one's is made with its build: the first delta takes that copy at once,
    even while a request still reads the whole one's scoring, and copies nothing itself.
    What the items' text adds to their rows (the item tower's work, which deltas leave as
    it was) is kept from the whole build too."""
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    held = ranker.scoring  # a request reading the whole snapshot's table
    before = held.vectors.clone()  # type: ignore[union-attr]
    copy = ranker._behind.tables[0]  # type: ignore[union-attr]
    assert copy is not held.vectors and torch.equal(copy, held.vectors)  # type: ignore[arg-type]
    step(net, [2, 5])
    now = snap(net, updates=1)
    got = models.parse(delta_since(now, sent).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None
    started = time.monotonic()
    ranker.publish(got)
    assert time.monotonic() - started < 0.5  # no wait for the request (that would be SPARE_WAIT_S)
    assert ranker.scoring.vectors is copy
    assert torch.equal(held.vectors, before)  # type: ignore[arg-type]
    assert held.text_part is not None and ranker.scoring.text_part is held.text_part  # kept, not recomputed
    expected = build_scoring(got, catalog.view)
    torch.testing.assert_close(ranker.scoring.vectors, expected.vectors)
    torch.testing.assert_close(ranker.scoring.bias, expected.bias)
    np.testing.assert_allclose(ranker.scoring.norms, expected.norms, rtol=1e-6, atol=1e-6)


def test_a_whole_snapshot_after_a_delta_copies_its_table_into_the_one_no_request_reads() -> None:
    """The copy a whole snapshot's build makes for the next delta goes into the table that
    no request reads any more (the whole one before it, which the delta's build left), not
    into new memory: a quarter of a gigabyte on a million items, per whole snapshot."""
    net = learner()
    catalog, ranker, models, sent, _ = published_by_hand(net)
    old = ranker.scoring.vectors  # the table alone: its scoring is let go
    step(net, [2, 5])
    got = models.parse(delta_since(snap(net, updates=1), sent).to_bytes(), "learner")  # type: ignore[union-attr]
    assert got is not None
    ranker.publish(got)
    step(net, [7])
    whole = models.parse(snap(net, updates=2).to_bytes(), "learner")
    assert whole is not None and whole.changed is None
    ranker.publish(whole)
    copy = ranker._behind.tables  # type: ignore[union-attr]
    assert copy[0] is old and copy[0] is not ranker.scoring.vectors
    assert torch.equal(copy[0], ranker.scoring.vectors) and torch.equal(copy[1], ranker.scoring.bias)  # type: ignore[arg-type]
    np.testing.assert_array_equal(copy[2], ranker.scoring.norms)
    expected = build_scoring(whole, catalog.view)
    torch.testing.assert_close(ranker.scoring.vectors, expected.vectors)


def test_the_server_tells_what_each_whole_snapshot_cost_it_and_nothing_for_deltas() -> None:
    """Settling after a whole snapshot's build (the server's collector) counts in its cost."""
    net = learner()
    catalog = Catalog()
    catalog.view = CatalogView(ids(40), before_text(net), ids(40), [()] * 40, np.ones(40, dtype=bool))
    models = Models(Ranker(catalog), ClusterSettings(), Metrics())
    costs: list[float] = []
    settled: list[int | None] = []
    models.on_whole = costs.append
    models.settle = lambda: (settled.append(models.ranker.scoring.snapshot.updates), time.sleep(0.1))  # type: ignore[union-attr]
    models.start()
    try:
        first = snap(net)
        assert models.receive(first.to_bytes(), "learner") is not None
        wait_for(lambda: len(costs) == 1)
        step(net, [3])
        second = snap(net, updates=1)
        assert models.receive(delta_since(second, first).to_bytes(), "learner") is not None  # type: ignore[union-attr]
        wait_for(lambda: models.ranker.scoring.snapshot is not None and models.ranker.scoring.snapshot.updates == 1)
        step(net, [4])
        assert models.receive(snap(net, updates=2).to_bytes(), "learner") is not None
        wait_for(lambda: len(costs) == 2)
    finally:
        models.close()
    assert settled == [0, 2]  # after each whole one's build, not after the delta's
    assert all(0.1 <= cost < 60 for cost in costs)


def test_a_whole_snapshot_merged_with_a_delta_before_its_build_still_reports_its_cost() -> None:
    """The learner spaces whole snapshots by what they cost serving: one that a delta joined
    while it waited for the publisher (busy with the build before) must still say so."""
    net = learner()
    catalog = Catalog()
    catalog.view = CatalogView(ids(40), before_text(net), ids(40), [()] * 40, np.ones(40, dtype=bool))
    models = Models(Ranker(catalog), ClusterSettings(), Metrics())  # publisher not started: pending stays
    costs: list[float] = []
    models.on_whole = costs.append
    first = snap(net)
    assert models.receive(first.to_bytes(), "learner") is not None
    step(net, [3])
    second = snap(net, updates=1)
    assert models.receive(delta_since(second, first).to_bytes(), "learner") is not None  # type: ignore[union-attr]
    models.start()
    try:
        wait_for(lambda: models.ranker.scoring.snapshot is not None and models.ranker.scoring.snapshot.updates == 1)
        wait_for(lambda: len(costs) == 1)
    finally:
        models.close()
    assert models.ranker.scoring.snapshot.changed is None  # type: ignore[union-attr]  # built whole


def test_a_build_waits_for_the_request_that_reads_the_table_it_would_write_over() -> None:
    """Rather than copy the whole table (half a second on a million items), a build waits
    for a request still reading the older table to end, then writes over that one."""
    net = learner()
    _, ranker, models, sent, _ = published_by_hand(net)
    oldest = ranker.scoring.vectors
    for n in range(2):
        now, got = delivered(net, [n + 1], n + 1, sent, models)
        if n == 0:
            held = [ranker.scoring]  # a request reading the oldest table
        else:
            threading.Timer(0.2, held.clear).start()  # ends in 0.2 s
            started = time.monotonic()
        models.publish(got)
        ranker.publish(got)
        sent = now
    waited = time.monotonic() - started
    assert ranker.scoring.vectors is oldest  # written over, not copied
    assert 0.15 < waited < 0.9  # it waited for the request, which took 0.2 s


def test_builds_are_spaced_by_their_cost_and_what_arrives_meanwhile_is_built_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from freshrec.serve import models as serving_models

    monkeypatch.setattr(serving_models, "PUBLISH_SHARE", 0.002)  # 500 times a delta's build between two
    monkeypatch.setattr(serving_models, "PUBLISH_BURST_S", 0.0)  # no time to spare
    net = learner()
    models, metrics = intake(net)
    models.start()
    try:
        sent = snap(net)
        assert models.receive(sent.to_bytes(), "learner") is not None
        wait_for(lambda: built(models, 0))  # a whole one: not spaced here (the learner spaces those)
        for n in range(1, 4):
            sent = sent_delta(net, models, sent, n)
            if n == 1:
                wait_for(lambda: built(models, 1))  # the first delta at once, the next two after its cost
        wait_for(lambda: built(models, 3), 30.0)
        wait_for(lambda: builds(metrics) >= 3)  # the publisher counts a build just after its swap
    finally:
        models.close()
    assert builds(metrics) == 3  # the whole one, the first delta, then the other two as one
    assert builds(metrics, "receive_lag_seconds") == 4  # each timed as it was parsed, merged or not


def test_deltas_are_built_as_they_come_while_the_builds_took_less_than_their_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The share holds on average: a delta that comes when the builds before it left time
    to spare is built at once, not put off by the cost of the build before it."""
    from freshrec.serve import models as serving_models

    monkeypatch.setattr(serving_models, "PUBLISH_SHARE", 1e-6)  # spaced by cost alone: minutes between two
    monkeypatch.setattr(serving_models, "PUBLISH_LONGEST_S", 600.0)
    monkeypatch.setattr(serving_models, "PUBLISH_BURST_S", 10.0)  # but with ample time to spare
    net = learner()
    models, metrics = intake(net)
    models.start()
    try:
        sent = snap(net)
        assert models.receive(sent.to_bytes(), "learner") is not None
        wait_for(lambda: built(models, 0), 60.0)  # else the first delta may merge into it
        for n in range(1, 4):
            sent = sent_delta(net, models, sent, n)
            # (beside other processes a build may be slow: a minute at most)
            wait_for(lambda n=n: built(models, n), 60.0)
        wait_for(lambda: builds(metrics) >= 4, 60.0)
    finally:
        models.close()
    assert builds(metrics) == 4  # the whole one and each delta on its own


def test_a_build_that_fails_leaves_the_model_before_served_and_the_next_one_is_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher thread that died with one build's error would serve the model before it for
    good, while the server still reads ready."""
    net = learner()
    models, metrics = intake(net)
    publish, failing = models.ranker.publish, threading.Event()

    def flaky(snapshot: Snapshot | None) -> None:
        if failing.is_set():
            failing.clear()
            raise RuntimeError("out of memory")
        publish(snapshot)

    monkeypatch.setattr(models.ranker, "publish", flaky)
    models.start()
    try:
        sent = snap(net)
        models.receive(sent.to_bytes(), "learner")
        wait_for(lambda: built(models, 0), 60.0)
        failing.set()
        sent = sent_delta(net, models, sent, 1)
        wait_for(lambda: metrics.failed_builds._value.get() == 1, 60.0)
        assert built(models, 0)  # the one before stays served
        sent_delta(net, models, sent, 2)
        wait_for(lambda: built(models, 2), 60.0)  # on the delta of the one that failed: built whole
    finally:
        models.close()
    assert "could not build the serving copy of model 1.1; the one before stays" in caplog.text
    served = models.ranker.scoring
    whole = build_scoring(served.snapshot, served.view)
    assert served.vectors is not None and whole.vectors is not None
    torch.testing.assert_close(served.vectors, whole.vectors)


def intake(net: SequenceNet) -> tuple[Models, Metrics]:
    """A server's snapshot intake of ``net``'s 40 items (its publisher not started) and its metrics."""
    catalog = Catalog()
    catalog.view = CatalogView(ids(40), before_text(net), ids(40), [()] * 40, np.ones(40, dtype=bool))
    metrics = Metrics()
    return Models(Ranker(catalog), ClusterSettings(), metrics), metrics


def sent_delta(net: SequenceNet, models: Models, sent: Snapshot, n: int) -> Snapshot:
    """A micro-batch's step of ``net`` (update ``n``), received by ``models`` as a delta on
    ``sent``; the snapshot it now is."""
    step(net, [n])
    now = snap(net, updates=n)
    assert models.receive(delta_since(now, sent).to_bytes(), "learner") is not None  # type: ignore[union-attr]
    return now


def built(models: Models, updates: int) -> bool:
    """Whether ``models``' ranker serves the snapshot of ``updates`` updates."""
    snapshot = models.ranker.scoring.snapshot
    return snapshot is not None and snapshot.updates == updates


def builds(metrics: Metrics, histogram: str = "publish_seconds") -> float:
    """Serving copies built, as ``/metrics`` counts them (``histogram``: another count, of
    :class:`Metrics`'s histograms)."""
    samples = getattr(metrics, histogram).collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_count"))


def test_a_costly_build_puts_the_next_off_by_at_most_the_longest_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.serve import models as serving_models

    monkeypatch.setattr(serving_models, "PUBLISH_SHARE", 1e-6)  # by cost alone: hours between two builds
    monkeypatch.setattr(serving_models, "PUBLISH_BURST_S", 0.0)
    monkeypatch.setattr(serving_models, "PUBLISH_LONGEST_S", 0.2)
    net = learner()
    models, _ = intake(net)
    models.start()
    try:
        sent = snap(net)
        models.receive(sent.to_bytes(), "learner")
        for n in (1, 2):
            sent = sent_delta(net, models, sent, n)
            wait_for(lambda n=n: built(models, n), 5.0)
    finally:
        models.close()


def test_long_id_lists_are_checked_and_compared_in_pieces_with_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call on a whole list of a million ids holds the interpreter lock throughout; in
    pieces (or hashed and sorted by NumPy), requests go on between them. The answers must
    not depend on where pieces end, nor on hashes that collide."""
    from freshrec.model import snapshot as module
    from freshrec.serve import catalog

    monkeypatch.setattr(catalog, "PIECE", 3)

    def problem(item_ids: list[str]) -> str | None:
        return module.CheckedIds().problem(item_ids)  # nothing known before

    assert problem(ids(10)) is None and problem([]) is None
    assert problem([*ids(5), "i1"]) == problem(["i7", *ids(8)]) == "repeat an id"
    monkeypatch.setattr(module, "hash", len, raising=False)  # every id of one length collides
    assert problem(ids(10)) is None and problem([*ids(10), "i3"]) == "repeat an id"
    net = learner(8)
    with pytest.raises(Malformed, match="repeat"):
        dataclasses.replace(snap(net), item_ids=[*ids(7), "i0"]).validate()
    view = CatalogView(ids(8), np.zeros((8, WIDTH), np.float32), [""] * 8, [()] * 8, np.ones(8, bool))
    for lead, found in ((ids(7), True), (ids(8), True), ([*ids(4), "x", "i5"], False), (ids(9), False), ([], True)):
        assert starts_with(view, lead) is found, lead


def test_item_ids_found_valid_are_not_checked_again_and_of_a_longer_list_only_the_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking a million ids held the interpreter lock 150 ms per whole snapshot; the ids of
    the one before are known valid, and so are the first ones of a grown list. Counted here
    by the ids hashed; a repeat or a hash shared with a known id is still found."""
    from freshrec.model import snapshot as module

    hashed: list[str] = []

    def counting(item_id: str) -> int:
        hashed.append(item_id)
        return len(item_id) if item_id.startswith("x") else hash(item_id)  # "x..." ids of one length collide

    monkeypatch.setattr(module, "hash", counting, raising=False)
    checked = module.CheckedIds()
    first = ids(100)
    assert checked.problem(first) is None and hashed == first
    hashed.clear()
    assert checked.problem(first) is None and checked.problem(list(first)) is None and hashed == []
    grown = [*first, "i100", "x1"]
    assert checked.problem(grown) is None and hashed == ["i100", "x1"]
    hashed.clear()
    for bad, problem in (([*grown, "i5"], "repeat an id"), ([*grown, 3], "must be a list of strings")):
        assert checked.problem(bad) == problem
    assert checked.problem([*grown, "i102", "i102"]) == "repeat an id"
    hashed.clear()
    assert checked.problem([*grown, "x2"]) is None  # x2 shares x1's hash: the whole list compared
    assert hashed == ["x2", *grown, "x2"]
    hashed.clear()
    assert checked.problem([*grown, "x2", "x1"]) == "repeat an id"  # x1 shares x2's hash and repeats
    assert checked.problem(list(reversed(first))) is None  # another list: checked whole
    assert checked.problem("i1") == "must be a list of strings"  # type: ignore[arg-type]


def test_a_whole_snapshot_with_the_ids_of_the_one_before_keeps_its_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the server takes in: the same item ids come back as the same list (the view then
    knows its rows as they are: :func:`starts_with`), a grown list shares the known ids."""
    monkeypatch.setattr(serialization, "STRINGS_MIN", 1)
    models = Models(Ranker(Catalog()), ClusterSettings(), Metrics())  # publisher not started
    net = learner()
    first = models.receive(snap(net).to_bytes(), "learner")
    step(net, [3])
    second = models.receive(snap(net, updates=1).to_bytes(), "learner")
    assert first is not None and second is not None and second.item_ids is first.item_ids
    grow(net, 2)
    third = models.receive(snap(net, updates=2).to_bytes(), "learner")
    assert third is not None and third.item_ids == ids(42) and third.item_ids[7] is first.item_ids[7]
    step(net, [41])
    fourth = models.receive(delta_since(snap(net, updates=3), third).to_bytes(), "learner")  # type: ignore[union-attr]
    assert fourth is not None and fourth.item_ids is third.item_ids
