"""The learner's item numbering: the row of each item in the model's tables.

A checkpoint fixes it (its ``item_ids``); items added to the catalog later join
at the end as soon as an event names them, or at the latest within
:data:`CATALOG_S`, with their text embeddings read from the store. Serving lays
its catalog out in this numbering (:meth:`freshrec.serve.catalog.Catalog.align`),
so that a model snapshot's tables apply to it as they are."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from cachetools import TTLCache

from freshrec.domain import Event
from freshrec.pacing import Paced
from freshrec.storage.base import Store

CATALOG_S = 60.0
"""How often the learner takes in the catalog's new items that no event named yet, at
most: where reading the catalog's ids takes longer than a fiftieth of that, the reads are
spaced by fifty times what the last one took (a million items' ids took 3-6 s to read:
2.5-5 minutes apart). A check of the catalog's version that finds it unchanged costs
nothing to speak of and counts as a read."""
CATALOG_SHARE = 0.02
"""The share of the learner's time the catalog reads may take (:class:`Paced`)."""
CATALOG_ANYWAY_S = 600.0
"""How long the learner trusts an unchanged :meth:`~freshrec.storage.base.Store.catalog_version`
at most: a catalog written by a freshrec that did not count its writes yet (an API replica
not yet upgraded) is still read within this time."""
ABSENT_S = 10.0
"""How long ids found missing from the store are not looked up again."""


class NoCatalog(RuntimeError):
    """There is nothing to learn about: no item has an embedding yet."""


class ItemCodes:
    def __init__(self, store: Store, encoder: str):
        self.store = store
        self.encoder = encoder
        self.ids: list[str] = []
        self.codes: dict[str, int] = {}
        self._absent: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=ABSENT_S, timer=time.monotonic)
        self._catalog = Paced(CATALOG_S, CATALOG_SHARE, due_now=False)
        self._version: int | None = None
        """The catalog's version at the last read of its ids (``None``: none yet)."""
        self._read_at = time.monotonic()
        self._later: tuple[list[str], np.ndarray | None] = ([], None)
        """Embedded items a checkpoint's list lacked, with their vectors, read by :meth:`load`."""

    def load(self, item_ids: list[str] | None = None) -> np.ndarray:
        """Number the catalog's embedded items (in the order of ``item_ids``, a
        checkpoint's, when given) and return their text vectors, row by row. The embedded
        items a checkpoint's list lacks are kept for :meth:`add_catalog` (they were read
        here: a catalog unchanged since is not read again)."""
        version = self.store.catalog_version()
        ids, vectors = self.store.item_vectors(self.encoder)
        if not ids:
            raise NoCatalog("no item has a text embedding yet: import items first (freshrec import items ...)")
        if item_ids is not None:  # a checkpoint fixes the meaning of each table row
            index = {item_id: n for n, item_id in enumerate(ids)}
            coded = set(item_ids)
            later = [n for n, item_id in enumerate(ids) if item_id not in coded]
            self._later = ([ids[n] for n in later], vectors[later].astype(np.float32))
            vectors = np.stack([vectors[index[i]] if i in index else np.zeros(vectors.shape[1]) for i in item_ids])
            ids = item_ids
        self._version, self._read_at = version, time.monotonic()
        self.ids = list(ids)
        self.codes = {item_id: n for n, item_id in enumerate(self.ids)}
        return vectors.astype(np.float32)

    def add_catalog(self) -> np.ndarray | None:
        """Number every embedded catalog item that has no code yet (in id order), so that
        serving, which follows this numbering, finds its whole catalog in the model's
        tables; returns their text vectors, or ``None`` if there are none or the catalog
        is not due to be read yet (:data:`CATALOG_S`). Only the new items' vectors are
        read (all of a million items' took the learner minutes), and the ids only where
        the catalog's version says it changed since they were last read (or
        :data:`CATALOG_ANYWAY_S` ago): reading a million ids took the learner 3-6 s."""
        if not self._catalog.due():
            return None
        started = time.monotonic()
        version = self.store.catalog_version()
        if version == self._version and started - self._read_at < CATALOG_ANYWAY_S:
            self._catalog.ran(time.monotonic() - started)
            (ids, vectors), self._later = self._later, ([], None)
            kept = [n for n, item_id in enumerate(ids) if item_id not in self.codes]
            return self._coded([ids[n] for n in kept], None if vectors is None else vectors[kept])
        embedded = self.store.embedded_ids(self.encoder)
        self._version, self._read_at, self._later = version, started, ([], None)
        self._catalog.ran(time.monotonic() - started)
        new = sorted(item_id for item_id in embedded if item_id not in self.codes)
        return self._coded(*self.store.item_vectors(self.encoder, new)) if new else None

    def _coded(self, ids: list[str], vectors: np.ndarray | None) -> np.ndarray | None:
        """Give ``ids`` the next codes; their ``vectors``, or ``None`` if there are none."""
        for item_id in ids:
            self.codes[item_id] = len(self.ids)
            self.ids.append(item_id)
        return vectors if ids else None

    def add(self, events: Iterable[Event]) -> np.ndarray | None:
        """Number the catalog items these events name that have no code yet; returns
        their text vectors (the new rows, in order), or ``None`` if there are none.

        Ids found missing from the store are remembered for a while, so a stream of
        events for items that were never imported does not reread the catalog on
        every micro-batch."""
        unknown = {e.item_id for e in events if e.item_id not in self.codes and e.item_id not in self._absent}
        if not unknown:
            return None
        ids, vectors = self.store.item_vectors(self.encoder, sorted(unknown))
        added = self._coded(ids, vectors)
        self._absent.update((i, True) for i in unknown if i not in self.codes)
        return added
