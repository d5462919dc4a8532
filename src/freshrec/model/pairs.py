"""Item-pair counts that grow with the stream.

Up to :data:`DENSE_MAX` items the counts are a dense torch matrix (64 MiB at
that size): reading a few thousand of its rows is one multithreaded sparse x
dense product. A larger catalog cannot hold ``n x n`` counts, and most pairs
never occur, so they move to a SciPy CSR matrix; there new pairs wait in a
small pending batch that is merged only once it has grown to an eighth of
the matrix (each merge is a pass over it, so merging every micro-batch would
make a long stream quadratic). Reads combine both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

DENSE_MAX = 4_096


class PairCounts:
    """Counts of ``(source, target)`` item pairs, read as row-normalised mixtures."""

    def __init__(self, n_items: int):
        self.n = n_items
        self.row_sums = np.zeros(n_items, dtype=np.float64)
        self.dense: torch.Tensor | None = torch.zeros(n_items, n_items) if n_items <= DENSE_MAX else None
        self.matrix = sp.csr_matrix((0 if self.dense is not None else n_items,) * 2, dtype=np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self._pending_csr: sp.csr_matrix | None = None
        """The pending pairs as a matrix, made at the first read after a change (a server
        reads many times between two additions)."""

    def grow(self, n: int) -> None:
        self.matrix = self._csr()
        self.n += n
        self.row_sums = np.concatenate([self.row_sums, np.zeros(n)])
        if self.dense is not None and self.n <= DENSE_MAX:
            self.dense = torch.nn.functional.pad(self.dense, (0, n, 0, n))
            return
        self.dense = None
        self.matrix.resize((self.n, self.n))

    def add(self, src: np.ndarray, dst: np.ndarray) -> None:
        """One count for each pair ``(src[j], dst[j])``."""
        if not len(src):
            return
        self.row_sums += np.bincount(src, minlength=self.n)
        if self.dense is not None:
            self.dense.view(-1).index_add_(
                0, torch.from_numpy(src.astype(np.int64) * self.n + dst), torch.ones(len(src))
            )
            return
        self._pending.append((src.astype(np.int32), dst.astype(np.int32)))
        self._pending_size += len(src)
        self._pending_csr = None
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
        vals = np.where(sums > 0, weight[ok] / np.maximum(sums, 1e-12), 0.0).astype(np.float32)
        if self.dense is not None:
            index = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
            select = torch.sparse_coo_tensor(index, torch.from_numpy(vals), (len(src), self.n), check_invariants=False)
            out: np.ndarray = torch.sparse.mm(select, self.dense).numpy()
            return out
        select_sp = sp.csr_matrix((vals, (rows, cols)), shape=(len(src), self.n))
        mixed: np.ndarray = (select_sp @ self.matrix).toarray()
        if self._pending:
            mixed += (select_sp @ self._pending_matrix()).toarray()
        return mixed

    def _pending_matrix(self) -> sp.csr_matrix:
        if self._pending_csr is None or self._pending_csr.shape != (self.n, self.n):
            src = np.concatenate([s for s, _ in self._pending])
            dst = np.concatenate([d for _, d in self._pending])
            self._pending_csr = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(self.n, self.n))
        return self._pending_csr

    def _merge(self) -> None:
        if self._pending:
            self.matrix = (self.matrix + self._pending_matrix()).tocsr()
            self._pending, self._pending_size, self._pending_csr = [], 0, None

    def _csr(self) -> sp.csr_matrix:
        """The counts as a CSR matrix (the dense ones converted, pending ones merged)."""
        if self.dense is not None:
            return sp.csr_matrix(self.dense.numpy())
        self._merge()
        return self.matrix

    @property
    def nnz(self) -> int:
        return int(self._csr().nnz)

    def state(self) -> dict[str, Any]:
        """The counts as CSR arrays, whatever the backend."""
        m = self._csr()
        return {"n": self.n, "indptr": m.indptr.copy(), "indices": m.indices.copy(), "data": m.data.copy()}

    def restore(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        matrix = sp.csr_matrix((state["data"], state["indices"], state["indptr"]), shape=(self.n, self.n))
        self.row_sums = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        self._pending, self._pending_size, self._pending_csr = [], 0, None
        if self.n <= DENSE_MAX:
            self.dense = torch.from_numpy(matrix.toarray().astype(np.float32))
            self.matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        else:
            self.dense, self.matrix = None, matrix
