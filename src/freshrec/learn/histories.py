"""The learner's users: a code for each user id (the row of the model's user
table; retired at an erasure, never reused) and each user's last events, kept
in memory and advanced event by event, from which micro-batches are built.

Memory is bounded by the model, not by the log: at most ``max_users`` users'
histories stay in memory (the least recently active leave first), and one who
comes back is read again from the store, their last events before the one
being learned (``reload``). Each history is one small packed array (17 bytes an
event: item code, type code, value, time), not a deque of Python tuples: a user
with 20 events costs about 1.3 kB in all, against 3.7 kB before (mostly the
per-object overhead that is left: the array, the cache entry, the id)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping

import numpy as np
from cachetools import LRUCache

from freshrec.domain import Event
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.model.base import Interactions
from freshrec.model.histories import STEP, left_padded


class Histories:
    def __init__(
        self,
        length: int,
        user_ids: list[str | None] | None = None,
        max_users: int | None = None,
        reload: Callable[[str, int], list[Event]] | None = None,
        reload_new: bool = False,
    ):
        self.length = length
        self.ids: list[str | None] = list(user_ids or [])
        """User id of each user code (``None``: deleted)."""
        self.codes = {u: n for n, u in enumerate(self.ids) if u is not None}
        self.recent: MutableMapping[str, np.ndarray] = LRUCache(maxsize=max_users) if max_users else {}
        """Each user's last ``length`` events (:data:`STEP` rows, oldest first)."""
        self.reload = reload
        """A user's last events before an offset, oldest first, from the store."""
        self.reload_new = reload_new
        """Read the stored history of users without a code too (learning started mid-log)."""

    def batch(self, events: Iterable[Event], items: Mapping[str, int]) -> tuple[Interactions, int]:
        """``events`` with their users' histories before each of them, and how many
        were left out for naming an item outside ``items`` (item codes); the
        histories advance past the events."""
        past, rows, skipped = [], [], 0
        for e in events:
            code = items.get(e.item_id)
            if code is None:
                skipped += 1
                continue
            history = self.recent.get(e.user_id)
            if history is None:
                history = self._stored(e, items)
            user = self.codes.get(e.user_id)
            if user is None:
                user = self.codes[e.user_id] = len(self.ids)
                self.ids.append(e.user_id)
            step = (code, TYPE_CODES[e.type], np.nan if e.value is None else e.value, e.timestamp)
            past.append(history)
            rows.append((user, e.offset or 0, *step))
            if self.length:
                kept = history[max(len(history) - self.length + 1, 0) :]
                advanced = np.empty(len(kept) + 1, dtype=STEP)
                advanced[:-1], advanced[-1] = kept, step
                self.recent[e.user_id] = advanced
        hist, htype, hvalue, htime = left_padded(past, self.length)
        columns = list(zip(*rows, strict=True)) if rows else [()] * 6
        return Interactions(
            user=np.array(columns[0], dtype=np.int32),
            item=np.array(columns[2], dtype=np.int32),
            type=np.array(columns[3], dtype=np.int8),
            value=np.array(columns[4], dtype=np.float32),
            time=np.array(columns[5], dtype=np.float64),
            hist_item=hist,
            hist_type=htype,
            hist_value=hvalue,
            hist_time=htime,
            position=np.array(columns[1], dtype=np.int64),
        ), skipped

    def _stored(self, e: Event, items: Mapping[str, int]) -> np.ndarray:
        """The history of a known user who left memory, from the store (none for a new
        one, unless learning started mid-log)."""
        if self.reload is None or not self.length or (e.user_id not in self.codes and not self.reload_new):
            return _steps([])
        past = [p for p in self.reload(e.user_id, e.offset or 0) if p.item_id in items][-self.length :]
        return _steps(
            [(items[p.item_id], TYPE_CODES[p.type], np.nan if p.value is None else p.value, p.timestamp) for p in past]
        )

    def forget(self, user_id: str) -> int | None:
        """Drop the user's history and retire their code, which is returned."""
        self.recent.pop(user_id, None)
        code = self.codes.pop(user_id, None)
        if code is not None:
            self.ids[code] = None
        return code


def _steps(steps: list[tuple[int, int, float, float]]) -> np.ndarray:
    return np.array(steps, dtype=STEP)
