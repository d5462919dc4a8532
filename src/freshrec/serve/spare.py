"""Item tables no request reads any more, written over by the next build instead of
copying a table: on a million items a table is a quarter of a gigabyte (:class:`Behind`)."""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from freshrec.model.rows import Room
from freshrec.serve.scoring import Scoring, same

SPARE_POLL_S = 0.002


@dataclass(frozen=True)
class Spare:
    """The item table of a scoring no request uses any more, to be written over: the one
    before ``previous``, with the rows that changed from it to ``previous``."""

    vectors: torch.Tensor
    bias: torch.Tensor
    norms: npt.NDArray[np.float32]
    stale: torch.Tensor


class Behind:
    """The item table of the scoring before the current one, kept to be written over (see
    :func:`~freshrec.serve.scoring.build_scoring`) once no request holds that scoring (it is held weakly); or, after
    a whole snapshot's build, a copy of the current one's (:meth:`copy_of`)."""

    def __init__(self, scoring: Scoring, copy: bool = False, into: Spare | None = None, room: Room | None = None):
        assert scoring.snapshot is not None and scoring.vectors is not None and scoring.bias is not None
        self.copy = copy
        """Whether the table is a copy of ``scoring``'s, which no scoring holds."""
        self.owners: tuple[Callable[[], Scoring | None], ...] = ()
        if not copy:
            self.owners = (weakref.ref(scoring), *scoring.grown_from)
        """The scorings that read the table's rows: ``scoring``, and those whose tables it extended."""
        vectors, bias, norms = scoring.vectors, scoring.bias, scoring.norms
        self.tables = (vectors, bias, norms)
        if copy and into is not None and fits(into, vectors, bias, norms):
            into.vectors.copy_(vectors)
            into.bias.copy_(bias)
            np.copyto(into.norms, norms)
            self.tables = (into.vectors, into.bias, into.norms)
        elif copy:  # with spare rows (``room``), which the first item added after it writes its rows into
            room = room or Room()
            self.tables = (room.copied(vectors), room.copied(bias), room.copied(norms))
        self.serial, self.view, self.tower = scoring.snapshot.serial, scoring.view, scoring.tower

    @classmethod
    def of(cls, scoring: Scoring) -> Behind | None:
        return cls(scoring) if scoring.snapshot is not None and scoring.vectors is not None else None

    @classmethod
    def copy_of(cls, scoring: Scoring, into: Spare | None = None, room: Room | None = None) -> Behind | None:
        """A copy of ``scoring``'s table, made now for the first delta on its snapshot to
        write its rows over. Why: that delta has no older table to take (the one before a
        whole snapshot differs from it everywhere), and its build, copying then, took 0.25
        to 0.64 s on a million items under load, with requests waiting behind it; made right
        after the whole snapshot's build, the copy counts in that build's cost, which the
        learner spaces whole snapshots by.

        Made in ``into`` (a table no request reads any more) where it has the same shapes,
        not in new memory: on a million items the copy is a quarter of a gigabyte, and new memory,
        touched for the first time page by page while the table it replaces is given back,
        slowed the process's other threads (``benchmarks/fresh_memory.py``: a thread asking
        for the interpreter lock beside one copying a table of that size into new memory in a
        loop waited up to 10.6-16.9 ms, beside copies into a kept table up to 6.8 ms). Else in
        ``room``, with spare rows (:meth:`grown` then extends it in place)."""
        if scoring.snapshot is None or scoring.vectors is None:
            return None
        return cls(scoring, copy=True, into=into, room=room)

    def spare_for(self, current: Scoring, wait_s: float = 0.0) -> Spare | None:
        """The table, if ``current`` differs from it in the rows ``current``'s delta changed
        alone (same view and item tower) and no request holds its scoring, waiting up to
        ``wait_s`` for the requests that do to end. Why wait: the alternative is a copy of
        the whole table, which on a million items took half a second of a core the
        requests need, and under load requests held it more often, so copies made them
        slower still."""
        snapshot = current.snapshot
        if self.copy:  # of ``current``'s own table: no row differs
            if snapshot is None or snapshot.serial != self.serial or current.view is not self.view:
                return None
            return Spare(*self.tables, torch.empty(0, dtype=torch.long))
        if snapshot is None or snapshot.changed is None:
            return None
        if snapshot.parent != self.serial or current.view is not self.view:
            return None
        if not same(self.tower, current.tower):
            return None
        deadline = time.monotonic() + wait_s
        while any(owner() is not None for owner in self.owners):
            if time.monotonic() >= deadline:
                return None
            time.sleep(SPARE_POLL_S)
        return Spare(*self.tables, snapshot.changed)

    def grown(self, previous: Scoring, current: Scoring, room: Room) -> Behind | None:
        """This table, kept for ``previous``, made one for ``current``, a scoring that extended
        ``previous``'s table (same snapshot, rows added to the view): ``current``'s added rows
        are copied in, into spare rows where there are some (``None`` where it was of no use to
        ``previous``). Why: ``current``'s first delta needs such a table as ``previous``'s would
        have; a new copy of the whole table per item a shop added took a third of a second of
        a core on a million items (``benchmarks/catalog_change.py``)."""
        vectors, bias, norms = self.tables
        if self.view is not previous.view or current.vectors is None or current.bias is None:
            return None
        if len(vectors) != len(previous.norms) or len(current.norms) < len(vectors):
            return None
        more = slice(len(vectors), len(current.norms))
        kept = copy.copy(self)
        kept.tables = (
            room.extended(vectors, current.vectors[more]),
            room.extended(bias, current.bias[more]),
            room.extended(norms, current.norms[more]),
        )
        kept.view = current.view
        return kept


def fits(spare: Spare, vectors: torch.Tensor, bias: torch.Tensor, norms: npt.NDArray[np.float32]) -> bool:
    """Whether ``spare``'s tables have the shapes and types of these."""
    pairs = ((spare.vectors, vectors), (spare.bias, bias))
    return all(a.shape == b.shape and a.dtype == b.dtype for a, b in pairs) and (
        spare.norms.shape == norms.shape and spare.norms.dtype == norms.dtype and spare.norms.flags.writeable
    )
