"""Each request's exact top 10 over every item, which the candidate index
(:mod:`freshrec.serve.index`) is calibrated and checked against, and the rows in many of
them (:func:`hits`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch


def hits(best: npt.NDArray[np.int64], most: int) -> npt.NDArray[np.int64]:
    """The rows in the exact top 10 of at least two of the requests ``best`` holds (one row
    of ten per request), at most ``most`` of them (the most frequent), ascending.

    Why: a model that learned what is popular puts its hits in most users' top 10, whatever
    their vectors point at; an inverted file finds them only by probing the lists of each.
    Scored with every request's candidates, a few hundred rows cost microseconds. On the
    million-item shop's model after minutes of online learning under load, the calibration
    then probed 1,268 of 4,000 lists instead of 1,634 (recall 0.991 against 0.989; 12.2
    against 15.2 ms a request, p50, one thread; every item scored: 20 ms); on the untrained
    one, one list (352 in the run before them; ``benchmarks/retrieval.py``)."""
    rows, counts = np.unique(best, return_counts=True)
    shared = counts >= 2
    rows, counts = rows[shared], counts[shared]
    keep = np.argsort(-counts, kind="stable")[:most]
    return np.sort(rows[keep]).astype(np.int64)


def top_rows(
    vectors: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], users: npt.NDArray[np.float32]
) -> npt.NDArray[np.int64]:
    """Each user's exact top 10 rows (in no order), 32 users at a time into one buffer.

    Why torch's ``topk``: every check (:meth:`~freshrec.serve.index.Index.holds`) and calibration pays this, and
    256 users against a million items took 6.5-8.4 s of a core with NumPy's
    ``argpartition``, 1.7-1.8 s with it, 1.25 s over one buffer (not 256 MB of fresh pages
    for each 64 users)."""
    table = torch.from_numpy(np.require(vectors, np.float32, "W"))
    offsets = torch.from_numpy(np.require(bias, np.float32, "W"))
    k = min(10, len(table))
    scores = torch.empty((min(32, len(users)), len(table)))
    top = []
    for start in range(0, len(users), 32):
        chunk = torch.from_numpy(np.require(users[start : start + 32], np.float32, ["C", "W"]))
        out = scores[: len(chunk)]
        torch.matmul(chunk, table.T, out=out)
        out += offsets
        top.append(torch.topk(out, k, dim=1, sorted=False).indices)
    return torch.cat(top).numpy() if top else np.zeros((0, k), dtype=np.int64)
