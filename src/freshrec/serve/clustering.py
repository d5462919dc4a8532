"""The candidate index's clustering (:class:`Trained`: its lists' centres and its codes'
tables), reused by the builds that follow it, and the rows it codes (:func:`padded_rows`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

RETRAIN_S = 600.0
"""How long one clustering (the lists' centres and the codes' tables) serves the builds that
follow it. Training is two fifths of a build's time (a million items: 12.9 s of k-means and
tables, 8.9 s to add the rows, then the calibration), and a build runs every minute or two;
vectors that drifted from the centres cost more probes, which each build's calibration
measures and pays, so the clustering is redone every ten minutes instead of every build."""


@dataclass(frozen=True)
class Trained:
    """An empty, trained index (a copy: each build adds its rows to its own clone of it)
    and when it was trained (``time.monotonic``)."""

    index: faiss.IndexIVFPQFastScan
    at: float

    @classmethod
    def on(cls, rows: npt.NDArray[np.float32], lists: int) -> Trained:
        """Trained on a sample of ``rows`` (64 a list: what faiss's k-means asks at most)."""
        dims = rows.shape[1]
        empty = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dims), dims, lists, dims, 4, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        empty.train(rows[rng.choice(len(rows), min(len(rows), lists * 64), replace=False)])
        return cls(empty, time.monotonic())

    def fits(self, dims: int, lists: int) -> bool:
        """Whether rows of ``dims`` dimensions that want about ``lists`` lists may reuse it."""
        young = time.monotonic() - self.at < RETRAIN_S
        return young and self.index.d == dims and abs(self.index.nlist - lists) <= lists // 4


def padded_rows(vectors: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[vector, bias]`` rows, padded by a zero to an even width: fast scan packs two 4-bit
    codes a byte."""
    pad = np.zeros((len(vectors), (vectors.shape[1] + 1) % 2), dtype=np.float32)
    return np.ascontiguousarray(np.hstack([vectors, bias.reshape(-1, 1), pad]), dtype=np.float32)


def recode(index: faiss.IndexIVFPQFastScan, ids: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> None:
    """Replace the codes of ``ids`` in ``index`` by those of ``rows`` (:func:`padded_rows`):
    their older codes removed, the lists' last blocks cleaned, the new codes added.

    Why clean: in faiss 1.15 a fast-scan list keeps the 4-bit codes of the entries a removal
    moved out of its last block; the codes added next are written over them by a bitwise or,
    so they read wrong (28 of 100 rows added after a removal from 6,000, scores off by up to
    17, against the same rows in a fresh index). The codes left past each list's end are
    unpacked, zeroed and packed again: one block of 32 entries a list, about 10 µs each."""
    index.remove_ids(faiss.IDSelectorBatch(ids))
    ivf = faiss.extract_index_ivf(index)
    assert ivf.invlists is not None
    lists: Any = faiss.downcast_InvertedLists(ivf.invlists)  # BlockInvertedLists: untyped there
    packer = ivf.get_CodePacker()
    per, size = lists.n_per_block, lists.block_size
    flat = np.zeros((per, packer.code_size), np.uint8)
    for number in range(lists.nlist):
        n = lists.list_size(number)
        if n % per:
            codes = faiss.rev_swig_ptr(lists.get_codes(number), -(-n // per) * size)
            block = codes[(n // per) * size :]
            packer.unpack_all(faiss.swig_ptr(block), faiss.swig_ptr(flat))
            flat[n % per :] = 0
            packer.pack_all(faiss.swig_ptr(flat), faiss.swig_ptr(block))
    index.add_with_ids(rows, ids)
