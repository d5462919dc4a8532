"""Sparse item-pair counts that grow with the stream.

A catalog of a million items cannot hold a dense ``n x n`` table, and most
pairs never occur, so the counts live in a SciPy CSR matrix. New pairs are
appended to a small pending batch and merged into the matrix only when the
batch has grown to an eighth of it: each merge costs a pass over the
matrix, so merging every micro-batch would make a long stream quadratic.
Reads combine both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


class PairCounts:
    """Counts of ``(source, target)`` item pairs, read as row-normalised mixtures."""

    def __init__(self, n_items: int):
        self.n = n_items
        self.matrix = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.row_sums = np.zeros(n_items, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def grow(self, n: int) -> None:
        self._merge()
        self.n += n
        self.matrix.resize((self.n, self.n))
        self.row_sums = np.concatenate([self.row_sums, np.zeros(n)])

    def add(self, src: np.ndarray, dst: np.ndarray) -> None:
        """One count for each pair ``(src[j], dst[j])``."""
        if not len(src):
            return
        self._pending.append((src.astype(np.int32), dst.astype(np.int32)))
        self._pending_size += len(src)
        self.row_sums += np.bincount(src, minlength=self.n)
        if self._pending_size > max(self.matrix.nnz // 8, 65_536):
            self._merge()

    def mix(self, src: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """``(B, n)`` float32: row ``b`` is ``sum_j weight[b, j] * P(. | src[b, j])``, where
        ``P(. | s)`` is row ``s`` of the counts divided by its sum; ``src < 0`` is padding."""
        src = np.atleast_2d(src)
        weight = np.broadcast_to(np.atleast_2d(weight), src.shape)
        ok = (src >= 0) & (weight != 0)
        rows = np.nonzero(ok)[0]
        cols = src[ok]
        sums = self.row_sums[cols]
        vals = np.where(sums > 0, weight[ok] / np.maximum(sums, 1e-12), 0.0)
        select = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(len(src), self.n))
        out = (select @ self._pending_matrix()).toarray() if self._pending else np.zeros((len(src), self.n), np.float32)
        out += (select @ self.matrix).toarray()
        return out

    def _pending_matrix(self) -> sp.csr_matrix:
        src = np.concatenate([s for s, _ in self._pending])
        dst = np.concatenate([d for _, d in self._pending])
        return sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(self.n, self.n))

    def _merge(self) -> None:
        if self._pending:
            self.matrix = (self.matrix + self._pending_matrix()).tocsr()
            self._pending, self._pending_size = [], 0

    @property
    def nnz(self) -> int:
        self._merge()
        return int(self.matrix.nnz)

    def state(self) -> dict[str, Any]:
        self._merge()
        m = self.matrix
        return {"n": self.n, "indptr": m.indptr.copy(), "indices": m.indices.copy(), "data": m.data.copy()}

    def restore(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        self.matrix = sp.csr_matrix((state["data"], state["indices"], state["indptr"]), shape=(self.n, self.n))
        self.row_sums = np.asarray(self.matrix.sum(axis=1), dtype=np.float64).ravel()
        self._pending, self._pending_size = [], 0
