"""Reading and writing a few thousand rows of a table of a million: the step every model
delta takes several times, on the learner's side and on serving's.

Why not ``table[rows]`` and ``table[rows] = values``: PyTorch's advanced indexing is the slow
path for it. On a million rows of 64 numbers, 15,000 of them took 1.3-1.8 ms to gather that
way against 0.23 ms with ``index_select``, and 1.1-5 ms to write against 0.4 ms through a
NumPy view of the same memory (0.8 ms with ``index_copy_``); a delta's build on serving did
nine such steps (``benchmarks/publish_lag.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
from torch import Tensor

Table = TypeVar("Table", Tensor, np.ndarray[Any, Any])

HEADROOM = 1 << 16
"""The most spare rows a table with room (:class:`Room`, and the catalog's text table) keeps
beyond its rows; an eighth of its rows on a smaller table."""


def spare_rows(n: int) -> int:
    """The spare rows a table of ``n`` rows gets when it is made anew to grow."""
    return min(HEADROOM, max(n // 8, 16))


def take(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` (``rows``: int64 row numbers), a new tensor."""
    return table.detach().index_select(0, rows)


def put(table: Tensor, rows: Tensor, values: Tensor) -> None:
    """``table[rows] = values`` in place, on the CPU (a table no autograd records)."""
    if table.dtype != values.dtype or values.shape != (len(rows), *table.shape[1:]):
        got, into = f"{tuple(values.shape)} {values.dtype}", f"{tuple(table.shape)} {table.dtype}"
        raise ValueError(f"cannot put rows of {got} into a table of {into}")
    table.detach().numpy()[rows.numpy()] = values.detach().numpy()


class Room:
    """Tables that grow at their end into spare rows, not by a copy of every row.

    :meth:`extended` returns a table with rows added after ``table``'s. Where ``table`` is
    the longest one it handed out of a block with room left, the rows are written into the
    block's spare rows and the result is a longer view of the same memory: ``table``'s
    readers never read past its end, so they see no change. Else a new block is made, with
    :func:`spare_rows` to spare. Why: on a million items a per-item table is up to a quarter
    of a gigabyte, and a catalog that gained an item, or a snapshot that took it in, copied
    each of them whole (``benchmarks/catalog_change.py``).

    A table is known by its memory (its first row's address and its length), not by the
    object: a network that takes a table as a parameter wraps it in another. Not
    thread-safe: one owner calls it (a ranker under its build lock, the snapshot intake on
    its thread)."""

    def __init__(self) -> None:
        self._blocks: dict[int, tuple[int, Any]] = {}
        """By the address of each block's first row: the rows handed out, and the block."""

    def extended(self, table: Table, more: Table) -> Table:
        """``table`` followed by the rows ``more`` (same row shape and type)."""
        n, k = len(table), len(more)
        if tuple(more.shape[1:]) != tuple(table.shape[1:]) or more.dtype != table.dtype:
            got, into = f"{tuple(more.shape)} {more.dtype}", f"{tuple(table.shape)} {table.dtype}"
            raise ValueError(f"cannot add rows of {got} to a table of {into}")
        known = self._blocks.get(_address(table))
        if known is not None and known[0] == n and n + k <= len(known[1]) and _whole_rows(table):
            block = known[1]
        else:
            block = self._block(table, n + k)
            block[:n] = table.detach() if isinstance(table, Tensor) else table
        block[n : n + k] = more.detach() if isinstance(more, Tensor) else more
        self._blocks[_address(block)] = (n + k, block)
        grown: Table = block[: n + k]
        return grown

    def made(self, n: int, like: Table) -> Table:
        """A new table of ``n`` rows shaped and typed as ``like``'s (its values unset), in a
        block with spare rows, for the caller to fill: a table a later :meth:`extended` grows
        in place. Why: a whole model's serving tables were made in new memory, so the first
        item added after it copied each of them (0.3-1.0 s on a million items)."""
        block = self._block(like, n)
        self._blocks[_address(block)] = (n, block)
        table: Table = block[:n]
        return table

    def copied(self, table: Table) -> Table:
        """A copy of ``table`` in a block with spare rows (:meth:`made`)."""
        out = self.made(len(table), table)
        out[:] = table.detach() if isinstance(table, Tensor) else table
        return out

    @staticmethod
    def _block(like: Table, n: int) -> Any:
        """A new block for ``n`` rows shaped and typed as ``like``'s, and :func:`spare_rows` more."""
        shape = (n + spare_rows(n), *like.shape[1:])
        return like.detach().new_empty(shape) if isinstance(like, Tensor) else np.empty(shape, dtype=like.dtype)

    def keep(self, tables: Iterable[Any]) -> None:
        """Forget the blocks that none of ``tables`` starts (they grow by a copy, if ever): the
        blocks of tables no one holds any more are given back."""
        live = {_address(t) for t in tables}
        self._blocks = {at: known for at, known in self._blocks.items() if at in live}


def _address(table: Tensor | np.ndarray[Any, Any]) -> int:
    return int(table.data_ptr()) if isinstance(table, Tensor) else int(table.__array_interface__["data"][0])


def _whole_rows(table: Tensor | np.ndarray[Any, Any]) -> bool:
    """Whether ``table`` is laid out as its block is: contiguous rows (a block's first rows are)."""
    return table.is_contiguous() if isinstance(table, Tensor) else bool(table.flags.c_contiguous)
