"""Reading and writing a few thousand rows of a table of a million: the step every model
delta takes several times, on the learner's side and on serving's.

Why not ``table[rows]`` and ``table[rows] = values``: PyTorch's advanced indexing is the slow
path for it. On a million rows of 64 numbers, 15,000 of them took 1.3-1.8 ms to gather that
way against 0.23 ms with ``index_select``, and 1.1-5 ms to write against 0.4 ms through a
NumPy view of the same memory (0.8 ms with ``index_copy_``); a delta's build on serving did
nine such steps (``benchmarks/publish_lag.py``)."""

from __future__ import annotations

from torch import Tensor


def take(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` (``rows``: int64 row numbers), a new tensor."""
    return table.detach().index_select(0, rows)


def put(table: Tensor, rows: Tensor, values: Tensor) -> None:
    """``table[rows] = values`` in place, on the CPU (a table no autograd records)."""
    if table.dtype != values.dtype or values.shape != (len(rows), *table.shape[1:]):
        got, into = f"{tuple(values.shape)} {values.dtype}", f"{tuple(table.shape)} {table.dtype}"
        raise ValueError(f"cannot put rows of {got} into a table of {into}")
    table.detach().numpy()[rows.numpy()] = values.detach().numpy()
