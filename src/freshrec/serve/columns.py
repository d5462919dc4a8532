"""The columns of a catalog's views, shared from one view to the next.

A catalog's write makes a new view (:class:`~freshrec.serve.catalog.CatalogView`); views
never change, so that a request reads one catalog from start to end. On a million items,
copying the view's five lists and its dictionary of ids for each write took 45-136 ms, and
freeing the old ones 34 ms more, with the interpreter lock held throughout while requests
waited (``benchmarks/catalog_change.py``; a write now takes 2-8 ms). Here the views made one from another share their
lists: a later view appends its new items past an earlier one's end, which the earlier one
never reads past, and keeps its edits of earlier rows apart, in a small dictionary of its own.

Only the newest view is written from (the catalog's writers take its lock and start from its
current view); a column written from an older one copies its rows first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

T = TypeVar("T")

EDITS = 4096
"""Edited rows a column keeps apart before it copies its rows once with the edits in: each
write copies the edits, so they must stay few."""
PIECE = 1 << 16
"""Rows read or compared at a time by a pass over a whole column (iteration, and a new item
list compared with a view's ids): comparing a million ids at once is one step of the
interpreter that holds its lock throughout (42 ms), while the server's requests wait; between
pieces they get it back."""


class Column(Sequence[T]):
    """The first ``n`` entries of ``rows``, a list that later columns may extend, with
    ``edits`` (row to value) read in their place."""

    __slots__ = ("_edits", "_n", "_rows")

    def __init__(self, rows: list[T], n: int | None = None, edits: dict[int, T] | None = None):
        self._rows = rows
        self._n = len(rows) if n is None else n
        self._edits: dict[int, T] = edits or {}

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            out = self._rows[start:stop]
            for row, value in self._edits.items():
                if start <= row < stop:
                    out[row - start] = value
            return out[::step] if step != 1 else out
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError("column row out of range")
        edits = self._edits
        return edits[index] if edits and index in edits else self._rows[index]

    def __iter__(self) -> Iterator[T]:
        for start in range(0, self._n, PIECE):
            yield from self[start : start + PIECE]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Column, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(
            self[start : start + PIECE] == list(other[start : start + PIECE]) for start in range(0, self._n, PIECE)
        )

    __hash__ = None  # type: ignore[assignment]

    def written(self, edits: Mapping[int, T], added: Sequence[T]) -> Column[T]:
        """This column with ``edits`` of its rows and ``added`` rows after them."""
        if any(not 0 <= row < self._n for row in edits):
            raise IndexError("an edit of a row past the column's end")
        merged = {**self._edits, **edits} if edits else self._edits
        rows = self._rows
        if len(rows) != self._n or len(merged) > EDITS:  # another column extends these rows, or edits piled up
            rows, merged = self[:], {}
            for row, value in edits.items():
                rows[row] = value
        rows.extend(added)
        return Column(rows, self._n + len(added), merged)


class Codes(Mapping[str, int]):
    """The row of each of a view's ids: the entries of ``rows`` (a dictionary that later views
    may extend) below ``n``. Rows are never reused, so an id's row holds in every view that has it."""

    __slots__ = ("_n", "_rows")

    def __init__(self, rows: dict[str, int], n: int | None = None):
        self._rows = rows
        self._n = len(rows) if n is None else n

    def __getitem__(self, item_id: str) -> int:
        row = self._rows[item_id]
        if row >= self._n:
            raise KeyError(item_id)
        return row

    def get(self, item_id: str, default: Any = None) -> Any:
        row = self._rows.get(item_id)
        return row if row is not None and row < self._n else default

    def __contains__(self, item_id: object) -> bool:
        row = self._rows.get(item_id)  # type: ignore[call-overload]
        return row is not None and row < self._n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        return (item_id for item_id, row in list(self._rows.items()) if row < self._n)

    def rows_of(self, ids: Iterable[str], missing: int = -1) -> list[int]:
        """Each id's row, ``missing`` for the ids this view lacks: for long lists, without a
        call of Python's per id."""
        get, n = self._rows.get, self._n
        return [row if (row := get(item_id)) is not None and row < n else missing for item_id in ids]

    def added(self, ids: Sequence[str]) -> Codes:
        """These codes with ``ids`` (new ones) given the rows after them, in order."""
        rows = self._rows
        if len(rows) != self._n:  # another view extends these: copy what this one holds
            rows = {item_id: row for item_id, row in rows.items() if row < self._n}
        rows.update(zip(ids, range(self._n, self._n + len(ids)), strict=True))
        return Codes(rows, self._n + len(ids))
