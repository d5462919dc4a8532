"""What the learner hands to serving after a micro-batch: a whole snapshot or, where its
sender takes them, a delta of the item rows changed since the one before, and only when
the sender is ready for one.

Why: a whole snapshot copies every row of the item tables. On a million items that copy,
and the comparison that found the changed rows for a delta, took half a second each
time, ten times the micro-batch's own step, and the learner made one per micro-batch
though its sender delivers at most one per interval. Now it makes one when its sender
can take it, as a delta built from the rows the model says it changed
(:class:`~freshrec.model.deltas.ChangedRows`), and whole when the sender asks (the first,
after a lost delivery, every ``[serve] snapshot_full_s``) or the model cannot say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from freshrec.model.deltas import SnapshotDelta, delta_of
from freshrec.model.freshrec import FreshRec
from freshrec.model.snapshot import Snapshot

Due = Literal["whole", "delta", "resync"] | None
"""What a sender wants next: a whole snapshot, a delta on the last one it got, a whole one
even with nothing new (it lost its place: a failed delivery), or nothing now."""


class Publishing:
    """Hands the learner's model to ``on_update``: whole snapshots only, unless ``due`` (the
    sender's :meth:`~freshrec.learn.sender.Sender.due`) says it takes deltas."""

    def __init__(self, on_update: Callable[[Snapshot | SnapshotDelta], None] | None):
        self.on_update = on_update
        self.due: Callable[[], Due] = lambda: "whole"
        self.counts_due: Callable[[], bool] = lambda: False
        """Whether the next snapshot carries the blend's counts whole (its sender says)."""
        self.counts_ride: Callable[[], bool] = lambda: False
        """Whether whole counts may go with a delta (its sender says: where whole snapshots
        are far apart); if not, they make the snapshot whole."""
        self.stale = False
        """Whether the model changed since it was last handed over (a micro-batch came while
        the sender was busy): the learner publishes again when it has time."""
        self._base: tuple[int, int] | None = None
        """The serial and the number of items of the last snapshot handed over."""

    def owed(self) -> bool:
        """Whether to publish now though no micro-batch asks: changes not handed over, or a
        sender that lost its place, with the sender ready."""
        due = self.due()
        return due == "resync" or (self.stale and due is not None)

    def publish(self, model: FreshRec, force: bool = False, **info: Any) -> None:
        """Hand the model over, if the sender is ready or ``force``; ``info``: ``item_ids``,
        ``user_ids``, ``checkpoint``, ``updates``, ``offset``."""
        if self.on_update is None:
            return
        due = self.due()
        if due is None and not force:
            self.stale = True
            return
        self.stale = False
        counts = self.counts_due()
        changed = model.trainer.changed.take()
        whole = due not in ("delta", None)  # what the sender asks; a delta may still not do
        if self.counts_ride():
            counts = counts or whole  # a start: what a receiver begins from
        else:
            whole = whole or counts
        loss = model.trainer.health.last_loss
        info = {**info, "loss": None if np.isnan(loss) else float(loss), "blend": model.blend_part(with_counts=counts)}
        out: Snapshot | SnapshotDelta
        if whole or changed is None or self._base is None:
            out = Snapshot.of(model.net, **info)
        else:
            out = delta_of(model.net, self._base, changed, **info)
        self._base = (out.serial, len(info["item_ids"]))
        self.on_update(out)
