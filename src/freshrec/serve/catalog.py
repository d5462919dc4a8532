"""The catalog as serving sees it: items with their text embeddings, in memory.

A :class:`CatalogView` is immutable; a write builds a new view and swaps it in,
so a request reads one consistent catalog from start to end without locks.
Deleted items keep their row (codes stay stable for the model's tables) but
are marked dead and never recommended.

Rows follow the learner's numbering: when a model snapshot brings an item
list the view does not start with, :meth:`Catalog.align` lays the view out
again with the snapshot's items first, in its order, and the items the
learner has not taken in yet after them. The snapshot's tables then apply to
the view as they are (:func:`freshrec.serve.scoring.build_scoring`), and
later snapshots with the same items cost no remapping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from freshrec.domain import Item, ItemId
from freshrec.model.rows import spare_rows
from freshrec.serve.columns import PIECE, Codes, Column
from freshrec.serve.rules import Check, Fields
from freshrec.storage.base import Store

T = TypeVar("T")

Derived = tuple[Codes, dict[str, npt.NDArray[np.int64]]]
"""A view's row of each item and rows of each category (:attr:`CatalogView.codes`,
:attr:`CatalogView.by_category`)."""


@dataclass(frozen=True)
class CatalogView:
    """The catalog at one moment. Its columns are given as sequences and held as
    :class:`~freshrec.serve.columns.Column` (a list given is copied), which the views a
    catalog makes one from another share (:mod:`freshrec.serve.columns`)."""

    ids: Sequence[ItemId]
    text: npt.NDArray[np.float32]
    """``(n, width)`` frozen text embeddings."""
    titles: Sequence[str]
    categories: Sequence[tuple[str, ...]]
    alive: npt.NDArray[np.bool_]
    attributes: Sequence[dict[str, Any]] = ()
    """Each row's item attributes (for business rules; given shorter, the rows past it have none)."""
    created: Sequence[float | None] = ()
    """Each row's ``created_at`` (for business rules; given shorter, ``None`` past it)."""
    lineage: object = field(default_factory=object, repr=False, compare=False)
    """Shared by the views a catalog made one from another by adding items, editing items'
    fields but their text, and removing items: an earlier view's ids and text embeddings
    are a later one's first rows, unchanged. A scoring of an earlier view is extended by
    the rows added since, not built again (:func:`~freshrec.serve.scoring.build_scoring`),
    whatever the number of writes in between (several, when they came while a build ran)."""
    known: InitVar[Derived | None] = None
    """:attr:`codes` and :attr:`by_category` where the writer has them (``None``: made from the
    rows). Why: made from the rows, on a million items they took 1.2 s of a core per write
    (``benchmarks/catalog_change.py``), though a write changes a few rows."""
    codes: Codes = field(init=False)
    by_category: dict[str, npt.NDArray[np.int64]] = field(init=False)
    """The rows of each category (casefolded), ascending."""
    led_by: tuple[Sequence[ItemId], int] | None = field(init=False, default=None, repr=False, compare=False)
    """The last item list found to start the view, and its length (see :func:`starts_with`)."""

    def __post_init__(self, known: Derived | None) -> None:
        n = len(self.ids)
        pads: dict[str, object] = {"attributes": {}}  # rows past a list given shorter: None elsewhere
        for name in ("ids", "titles", "categories", "attributes", "created"):
            given = getattr(self, name)
            if not isinstance(given, Column):
                object.__setattr__(self, name, Column([*given, *[pads.get(name)] * (n - len(given))]))
        if known is None:
            index: dict[str, list[int]] = {}
            for n, cats in enumerate(self.categories):
                for c in dict.fromkeys(c.casefold() for c in cats):
                    index.setdefault(c, []).append(n)
            by_category = {c: np.array(v, dtype=np.int64) for c, v in index.items()}
            known = Codes({item_id: n for n, item_id in enumerate(self.ids)}), by_category
        object.__setattr__(self, "codes", known[0])
        object.__setattr__(self, "by_category", known[1])

    def derived(self) -> Derived:
        """What a view with the same ids and categories takes as ``known``."""
        return self.codes, self.by_category

    def __len__(self) -> int:
        return len(self.ids)

    def fields(self, row: int) -> Fields:
        """What a business rule reads of the item in ``row``."""
        return Fields(self.ids[row], self.titles[row], self.categories[row], self.created[row], self.attributes[row])

    def matching(self, check: Check) -> npt.NDArray[np.bool_]:
        """Mask of the live rows whose item satisfies ``check`` (a parsed rule). The columns
        are read as plain lists first: a row read through a :class:`Column` is a call of
        Python's, five per item."""
        mask = np.zeros(len(self.ids), dtype=bool)
        ids, titles, cats = self.ids[:], self.titles[:], self.categories[:]
        created, attributes = self.created[:], self.attributes[:]
        for row in np.flatnonzero(self.alive).tolist():
            mask[row] = check(Fields(ids[row], titles[row], cats[row], created[row], attributes[row]))
        return mask

    def in_categories(self, names: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Mask of the items in any of ``names`` (case-insensitive)."""
        mask = np.zeros(len(self.ids), dtype=bool)
        for name in names:
            rows = self.by_category.get(name.casefold())
            if rows is not None:
                mask[rows] = True
        return mask


def _empty() -> CatalogView:
    return CatalogView([], np.zeros((0, 0), dtype=np.float32), [], [], np.zeros(0, dtype=bool))


class Catalog:
    """Holder of the current :class:`CatalogView`; writers take a lock, readers don't."""

    def __init__(self) -> None:
        self.view = _empty()
        self._lock = threading.Lock()
        self._spare: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        """The text table with spare rows and the current view's rows of it (:meth:`_text`)."""

    def load(self, store: Store, encoder: str) -> None:
        """Every embedded item of the store; items no longer in it are marked dead.
        Rows of items already held keep their codes, so calling it again (an API
        replica following another's catalog writes) is cheap for the ranker."""
        ids, vectors = store.item_vectors(encoder)
        items = {item.item_id: item for item in store.iter_items()}
        ids_vectors = [(i, v) for i, v in zip(ids, vectors, strict=True) if i in items]  # deleted in between
        with self._lock:
            self._put([items[i] for i, _ in ids_vectors], np.array([v for _, v in ids_vectors], dtype=np.float32))
            present = {i for i, _ in ids_vectors}
            view = self.view
            alive = np.array([i in present for i in view.ids], dtype=bool)
            if not np.array_equal(alive, view.alive):
                self.view = _led(view, replace(view, alive=alive, known=view.derived()))

    def put(self, items: Sequence[Item], vectors: npt.NDArray[np.float32]) -> None:
        """Add or replace items (row ``n`` of ``vectors`` belongs to ``items[n]``)."""
        with self._lock:
            self._put(items, vectors)

    def _put(self, items: Sequence[Item], vectors: npt.NDArray[np.float32]) -> None:
        if not items:
            return
        old = self.view
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(items):
            raise ValueError(f"{len(items)} items need as many rows of vectors, not an array of shape {vectors.shape}")
        if len(old) and vectors.shape[1] != old.text.shape[1]:
            raise ValueError(f"item vectors have width {vectors.shape[1]}, the catalog {old.text.shape[1]}")
        n0 = len(old)
        added: dict[ItemId, int] = {}  # new ids' rows, in the order they came
        latest: dict[int, int] = {}  # an id's last write wins
        for j, item in enumerate(items):
            row = old.codes.get(item.item_id)
            latest[added.setdefault(item.item_id, n0 + len(added)) if row is None else row] = j
        n = n0 + len(added)
        rows = np.fromiter(latest, dtype=np.int64, count=len(latest))
        which = np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
        held = rows < n0
        rewrites = not np.array_equal(old.text[rows[held]], vectors[which[held]]) if held.any() else False
        text = self._text(old, n, rewrites, vectors.shape[1])
        written = slice(None) if rewrites else ~held  # else the same numbers: views before read those rows
        text[rows[written]] = vectors[which[written]]
        alive = np.concatenate([old.alive, np.ones(len(added), dtype=bool)])
        alive[rows] = True

        def column(before: Sequence[Any], value: Callable[[Item], Any]) -> Column[Any]:
            edits = {row: value(items[j]) for row, j in latest.items() if row < n0}
            return _column(before).written(edits, [value(items[latest[row]]) for row in range(n0, n)])

        ids = _column(old.ids).written({}, list(added))
        titles, cats = column(old.titles, lambda i: i.title), column(old.categories, lambda i: i.categories)
        attributes = column(old.attributes, lambda i: i.attributes)
        created = column(old.created, lambda i: i.created_at)
        was = {row: old.categories[row] if row < n0 else () for row in latest}
        by_category = _reindexed(old.by_category, was, {row: items[j].categories for row, j in latest.items()})
        codes = old.codes.added(list(added))
        lineage = object() if rewrites or not n0 else old.lineage
        view = CatalogView(ids, text, titles, cats, alive, attributes, created, lineage, (codes, by_category))
        self.view = _led(old, view)

    def _text(self, old: CatalogView, n: int, rewrites: bool, width: int) -> npt.NDArray[np.float32]:
        """The text embeddings' table of a view of ``n`` rows that starts with ``old``'s:
        ``old``'s own rows and the spare ones after them where they are the catalog's last and
        no row of ``old`` is written (a view never changes), else a copy with spare rows again
        (:func:`~freshrec.model.rows.spare_rows`). Rows past ``old``'s are for the caller to
        fill. Why: on a million items of 384 numbers, a copy is 1.5 GB per write."""
        spare = self._spare
        if not rewrites and spare is not None and old.text is spare[1] and n <= len(spare[0]):
            rows = spare[0]
        else:
            rows = np.empty((n + spare_rows(n), width), dtype=np.float32)
            rows[: len(old)] = old.text if len(old) else 0.0
        text = rows[:n]
        self._spare = rows, text
        return text

    def align(self, item_ids: Sequence[ItemId]) -> bool:
        """Lay the view out with ``item_ids`` (the learner's numbering) as its first rows;
        the catalog's other items follow, in their order. An id the catalog lacks (deleted,
        or not yet loaded by this replica) gets a dead row. Returns whether the view changed."""
        with self._lock:
            old = self.view
            if not len(old) or starts_with(old, item_ids):  # an empty catalog: nothing to lay out yet
                return False
            width = old.text.shape[1] if len(old) else 0
            ids = list(item_ids)
            listed = set(ids)
            ids += [i for i in old.ids if i not in listed]
            rows = np.array(old.codes.rows_of(ids), dtype=np.int64)
            known = rows >= 0
            text = np.zeros((len(ids), width), dtype=np.float32)
            text[known] = old.text[rows[known]]
            alive = np.zeros(len(ids), dtype=bool)
            alive[known] = old.alive[rows[known]]
            was = old.titles[:], old.categories[:], old.attributes[:], old.created[:]  # plain lists: read fast
            titles = [was[0][r] if r >= 0 else "" for r in rows]
            cats = [was[1][r] if r >= 0 else () for r in rows]
            attributes = [was[2][r] if r >= 0 else {} for r in rows]
            created = [was[3][r] if r >= 0 else None for r in rows]
            self.view = CatalogView(ids, text, titles, cats, alive, attributes, created)
            return True

    def remove(self, item_id: ItemId) -> bool:
        with self._lock:
            old = self.view
            n = old.codes.get(item_id)
            if n is None or not old.alive[n]:
                return False
            alive = old.alive.copy()
            alive[n] = False
            self.view = _led(old, replace(old, alive=alive, known=old.derived()))
            return True


def _reindexed(
    by_category: dict[str, npt.NDArray[np.int64]],
    was: dict[int, tuple[str, ...]],
    now: dict[int, tuple[str, ...]],
) -> dict[str, npt.NDArray[np.int64]]:
    """``by_category`` with rows moved from the categories they ``was`` in to those they are
    in ``now`` (casefolded); the categories no row changed keep their arrays."""
    gone: dict[str, list[int]] = {}
    added: dict[str, list[int]] = {}
    for n, cats in now.items():
        before = dict.fromkeys(c.casefold() for c in was[n])
        after = dict.fromkeys(c.casefold() for c in cats)
        for c in before.keys() - after.keys():
            gone.setdefault(c, []).append(n)
        for c in after.keys() - before.keys():
            added.setdefault(c, []).append(n)
    out = dict(by_category)
    for c in gone.keys() | added.keys():  # by place, not by set operations: those hash or sort every row
        rows = out.get(c, np.zeros(0, dtype=np.int64))
        if c in gone:  # rows it holds
            rows = np.delete(rows, np.searchsorted(rows, sorted(gone[c])))
        if c in added:  # rows it lacks
            new = np.array(sorted(added[c]), dtype=np.int64)
            rows = np.insert(rows, np.searchsorted(rows, new), new)
        if len(rows):
            out[c] = rows
        else:
            out.pop(c, None)
    return out


def _column(given: Sequence[T]) -> Column[T]:
    """A view's column, as :class:`CatalogView` holds it."""
    assert isinstance(given, Column)
    return given


def _led(old: CatalogView, new: CatalogView) -> CatalogView:
    """``new``, a view whose first ids are ``old``'s (a write appends items and edits rows in
    place, a removal keeps every row), knowing the item list found to start ``old``. Why:
    else each item a shop adds has the next build compare a million ids with the learner's
    list again (34 ms of the interpreter, in pieces)."""
    if old.led_by is not None:
        object.__setattr__(new, "led_by", old.led_by)
    return new


def starts_with(view: CatalogView, item_ids: Sequence[ItemId]) -> bool:
    """Whether the view's first rows are ``item_ids``, in that order.

    The answer for the list last found to start the view is remembered: a snapshot delta
    without new items keeps its parent's list (:func:`freshrec.model.deltas.apply`), and
    comparing a million ids took 42 ms, twice per publish, with the interpreter lock held
    while requests waited. Item lists are never changed in place; a new one is compared in
    pieces (:data:`PIECE`), between which requests go on."""
    n = len(item_ids)
    led_by = view.led_by
    if led_by is not None and led_by[0] is item_ids and led_by[1] == n:
        return True
    found = len(view) >= n and all(
        view.ids[start : min(start + PIECE, n)] == list(item_ids[start : start + PIECE]) for start in range(0, n, PIECE)
    )
    if found:
        object.__setattr__(view, "led_by", (item_ids, n))
    return found


def first_moved(before: CatalogView, after: CatalogView, upto: int) -> int:
    """The first of the first ``upto`` rows that holds another item in ``after`` than in
    ``before`` (or that ``after`` lacks); ``upto`` where none does. Views of one lineage
    hold the same items in the rows they share; others are compared in pieces
    (:data:`PIECE`), between which requests go on."""
    n = min(upto, len(before), len(after))
    if before.lineage is after.lineage:
        return n
    for start in range(0, n, PIECE):
        end = min(start + PIECE, n)
        a, b = before.ids[start:end], after.ids[start:end]
        if a != b:
            return start + next(k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return n
