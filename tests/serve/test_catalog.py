"""The catalog's writes: a view made from the one before (its text table's spare rows, its
codes and categories carried over) equals one made from its rows, and views never change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.domain import Item
from freshrec.model.sequence import SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog, CatalogView
from freshrec.serve.ranker import Ranker
from freshrec.serve.scoring import build_scoring
from freshrec.settings import ModelSettings

WIDTH = 3
CATEGORIES = ("Shoes", "shoes", "Hats", "bags", "Socks")

put = st.tuples(
    st.just("put"),
    st.lists(st.tuples(st.integers(0, 30), st.lists(st.sampled_from(CATEGORIES), max_size=3)), min_size=1, max_size=6),
)
remove = st.tuples(st.just("remove"), st.integers(0, 30))
align = st.tuples(st.just("align"), st.lists(st.integers(0, 30), unique=True, max_size=10))


def rebuilt(view: CatalogView) -> CatalogView:
    """The same rows, with codes and categories made from them."""
    return CatalogView(
        list(view.ids), view.text.copy(), list(view.titles), list(view.categories), view.alive.copy(),
        list(view.attributes), list(view.created),
    )  # fmt: skip


def frozen(view: CatalogView) -> tuple[object, ...]:
    return list(view.ids), view.text.copy(), list(view.categories), view.alive.copy(), dict(view.codes)


def same_view(a: CatalogView, b: CatalogView) -> None:
    assert a.ids == b.ids and a.titles == b.titles and a.categories == b.categories
    np.testing.assert_array_equal(a.text, b.text)
    np.testing.assert_array_equal(a.alive, b.alive)
    assert a.codes == b.codes
    assert a.by_category.keys() == b.by_category.keys()
    for name, rows in a.by_category.items():
        np.testing.assert_array_equal(rows, b.by_category[name])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(put, remove, align), min_size=1, max_size=12), st.integers(0, 2**32 - 1))
def test_a_view_made_from_the_last_equals_one_made_from_its_rows(ops: list[tuple[str, object]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    catalog = Catalog()
    kept: list[tuple[CatalogView, tuple[object, ...]]] = []
    for op, arg in ops:
        if op == "put":
            assert isinstance(arg, list)
            items = [Item(f"i{k}", title=f"t{k}-{rng.integers(9)}", categories=tuple(cats)) for k, cats in arg]
            vectors = rng.standard_normal((len(items), WIDTH)).astype(np.float32)
            for j, item in enumerate(items):  # some items written again with the numbers they have
                if item.item_id in catalog.view.codes and rng.random() < 0.5:
                    vectors[j] = catalog.view.text[catalog.view.codes[item.item_id]]
            catalog.put(items, vectors)
            for item in items:  # the last write of an id wins
                row = catalog.view.codes[item.item_id]
                assert catalog.view.titles[row] == [i for i in items if i.item_id == item.item_id][-1].title
        elif op == "remove":
            catalog.remove(f"i{arg}")
        else:
            assert isinstance(arg, list)
            catalog.align([f"i{k}" for k in arg])
        same_view(catalog.view, rebuilt(catalog.view))
        if catalog.view.led_by is not None:  # carried over from an earlier view: still true of this one
            led, n = catalog.view.led_by
            assert catalog.view.ids[:n] == list(led[:n])
        for earlier, _ in kept:  # a view of the same lineage: its rows are the view's first, unchanged
            if earlier.lineage is catalog.view.lineage:
                assert catalog.view.ids[: len(earlier)] == earlier.ids
                np.testing.assert_array_equal(catalog.view.text[: len(earlier)], earlier.text)
        for name in ("shoes", "hats"):
            mask = catalog.view.in_categories([name.upper()])
            expected = [any(c.casefold() == name for c in cats) for cats in catalog.view.categories]
            np.testing.assert_array_equal(mask, expected)
        kept.append((catalog.view, frozen(catalog.view)))
    for view, was in kept:  # no later write changed a view that requests may still read
        now = frozen(view)
        assert now[0] == was[0] and now[2] == was[2] and now[4] == was[4]
        np.testing.assert_array_equal(now[1], was[1])
        np.testing.assert_array_equal(now[3], was[3])


def test_adding_items_writes_the_spare_rows_and_a_rewrite_copies() -> None:
    catalog = Catalog()
    catalog.put([Item(f"i{k}") for k in range(100)], np.ones((100, WIDTH), np.float32))
    first = catalog.view
    catalog.put([Item("new")], np.full((1, WIDTH), 2.0, np.float32))
    added = catalog.view
    assert np.shares_memory(first.text, added.text)  # appended in place, past the first view's rows
    assert len(first.text) == 100 and (first.text == 1.0).all()
    catalog.put([Item("i3")], np.full((1, WIDTH), 3.0, np.float32))
    rewritten = catalog.view
    assert not np.shares_memory(added.text, rewritten.text)  # a row the views before hold: copied
    assert added.text[3, 0] == 1.0 and rewritten.text[3, 0] == 3.0 and rewritten.text[100, 0] == 2.0
    with pytest.raises(ValueError, match="as many rows"):
        catalog.put([Item("a"), Item("b")], np.ones((1, WIDTH), np.float32))
    assert catalog.view is rewritten


def test_items_added_extend_the_served_table_as_a_whole_build_would() -> None:
    torch.manual_seed(0)
    n, width = 40, 6
    net = SequenceNet(n, torch.randn(n, width), ModelSettings(dim=8, history_length=4, heads=2))
    with torch.no_grad():
        net.active[:20] = True
        net.item_id.weight[:20] = torch.randn(20, 8)
    snapshot = Snapshot.of(net, [f"i{k}" for k in range(n)], [], checkpoint=1, updates=0, offset=9)
    catalog = Catalog()
    catalog.put([Item(f"i{k}", categories=("c",)) for k in range(n)], net.text.numpy().copy())
    ranker = Ranker(catalog)
    ranker.publish(snapshot)

    def served_as_whole(expected_written: list[int] | None) -> None:
        sc, whole = ranker.scoring, build_scoring(snapshot, catalog.view)
        assert (None if sc.written is None else sc.written.tolist()) == expected_written
        assert sc.vectors is not None and whole.vectors is not None and sc.text_part is not None
        assert whole.text_part is not None
        torch.testing.assert_close(sc.vectors, whole.vectors)
        torch.testing.assert_close(sc.bias, whole.bias)
        np.testing.assert_allclose(sc.norms, whole.norms, rtol=1e-6)
        for mine, theirs in zip(sc.text_part, whole.text_part, strict=True):
            torch.testing.assert_close(mine, theirs)

    before = ranker.scoring
    catalog.put([Item("new0"), Item("new1")], np.ones((2, width), np.float32))
    ranker.refresh()
    served_as_whole([40, 41])  # the rows added alone computed
    assert before.vectors is not None and len(before.vectors) == n  # the table before left to its readers
    previous = ranker.scoring
    catalog.put([Item("i3", title="on sale")], catalog.view.text[3:4].copy())  # the same text: no row changes
    ranker.refresh()
    served_as_whole([])
    assert ranker.scoring.vectors is not previous.vectors  # a table of its own, though equal
    catalog.remove("i4")
    ranker.refresh()
    served_as_whole([])
    catalog.put([Item("new2")], np.ones((1, width), np.float32))  # writes while a build ran: one build extends
    catalog.remove("new0")
    catalog.put([Item("new3"), Item("i6", title="edited")], catalog.view.text[[0, 6]].copy())
    ranker.refresh()
    served_as_whole([42, 43])
    catalog.put([Item("i5")], np.full((1, width), 2.0, np.float32))  # a row's text changed: built whole
    ranker.refresh()
    served_as_whole(None)


def one_item() -> tuple[Catalog, Ranker]:
    catalog = Catalog()
    catalog.put([Item("i0")], np.ones((1, WIDTH), np.float32))
    return catalog, Ranker(catalog)


def while_held(
    ranker: Ranker, entered: threading.Event, release: threading.Event, callers: Callable[[], list[threading.Thread]]
) -> None:
    """Refresh in a thread; once its build is held (``entered``), ``callers()`` starts the
    threads that wait for the build's lock; then the build goes on (``release``) and every
    thread is joined."""
    first = threading.Thread(target=ranker.refresh)
    first.start()
    assert entered.wait(10)
    started = callers()
    time.sleep(0.05)  # the callers wait for the build's lock
    release.set()
    for thread in [first, *started]:
        thread.join(10)


def started(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_refreshes_asked_for_while_a_build_runs_share_the_next_one() -> None:
    """Each caller returns after a build that began after its call (so it serves what it
    wrote), and callers that came during one build share one more, not one each."""
    catalog, ranker = one_item()
    entered, release = threading.Event(), threading.Event()
    built: list[int] = []
    build = ranker._build

    def slow_build() -> None:  # the build's end held back, the first time
        build()
        built.append(len(ranker.scoring.view))
        if len(built) == 1:
            entered.set()
            release.wait(10)

    ranker._build = slow_build  # type: ignore[method-assign]

    def callers() -> list[threading.Thread]:
        threads = []
        for k in range(1, 6):  # items written, each by its own caller, while the first build runs
            catalog.put([Item(f"i{k}")], np.ones((1, WIDTH), np.float32))
            threads.append(started(ranker.refresh))
        return threads

    while_held(ranker, entered, release, callers)
    assert built == [1, 6]  # one build for the five, which saw every item
    assert [ranker.scoring.view.ids[k] for k in range(6)] == [f"i{k}" for k in range(6)]
    ranker.refresh()  # nothing began after this call: it builds
    assert built == [1, 6, 6]


def test_a_caller_that_waited_for_a_build_that_failed_gets_one_that_ends_well(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two callers wait while a build runs; the next build, one caller's, fails: that caller
    gets the error, and the other builds again instead of returning without its item served."""
    from freshrec.serve import ranker as ranker_module

    catalog, ranker = one_item()
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []
    real = ranker_module.build_scoring

    def build_scoring(*args: object, **kwargs: object) -> object:
        calls.append(len(calls))
        if len(calls) == 1:  # the first build: held back until the callers wait
            entered.set()
            release.wait(10)
        elif len(calls) == 2:
            raise MemoryError("the second build fails")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ranker_module, "build_scoring", build_scoring)
    failed: list[BaseException] = []

    def refresh() -> None:
        try:
            ranker.refresh()
        except MemoryError as exc:
            failed.append(exc)

    def callers() -> list[threading.Thread]:  # an item written, then two callers
        catalog.put([Item("i1")], np.ones((1, WIDTH), np.float32))
        return [started(refresh), started(refresh)]

    while_held(ranker, entered, release, callers)
    assert len(failed) == 1 and len(calls) == 3 and ranker.scoring.view.ids == ["i0", "i1"]
