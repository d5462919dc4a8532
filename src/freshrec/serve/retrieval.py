"""Candidate retrieval on large catalogs: the candidate index (:mod:`freshrec.serve.index`)
kept in the background.

The index is built from the served vectors of one snapshot and used until the next
build: the vectors drift little between two builds, and the candidates it finds are
scored exactly with the current snapshot (bias, filters, exclusions and explanations
as before), so a stale index costs recall, never a wrong score. Items added since the
build are always candidates, and so are the calibration's hits
(:func:`~freshrec.serve.exact.hits`). Each build measures its own recall on the latest
requests (``/metrics``: ``freshrec_candidate_index_recall``) and probes as few lists as
reach ``target_recall``; every ``rebuild_s`` the index is checked on the latest requests
(the rows that moved since the last step coded anew first) and rebuilt only where it no
longer finds as much, even probing half as many lists again
(:meth:`~freshrec.serve.index.Index.holds`). Between builds, the rows the learner moved
further than the codes' typical error since they were coded are coded anew every
:data:`UPDATE_S` (:meth:`~freshrec.serve.index.Index.update`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt
import torch

from freshrec.model.sequence import Pair
from freshrec.runtime import in_background
from freshrec.serve.index import Index
from freshrec.serve.scoring import same
from freshrec.settings import RetrievalSettings

log = logging.getLogger(__name__)

MIN_CALIBRATION = 32
"""Recent requests needed to calibrate a build (fewer: ``probes`` lists are probed)."""
UPDATE_S = 5.0
"""How often, at most, the rows that moved are coded anew in the index: on the million-item
shop under 200 requests/s and 500 events/s, each step coded 3,700-29,000 rows in 0.28-0.80 s
of the (niced) build thread, against 34 s for a build."""
UPDATE_SHARE = 0.05
"""The most rows one such step codes anew, as a share of the index (the rows that moved
most first; the others wait for the next step): on a million items, 50,000 rows, one to
two seconds."""


@dataclass(frozen=True)
class ServedTable:
    """A scoring's item table, as the candidate index reads it."""

    vectors: torch.Tensor
    bias: torch.Tensor
    tower: Pair | None = None
    """What the item tower makes of each row's text (:attr:`Scoring.text_part
    <freshrec.serve.scoring.Scoring.text_part>`; ``None``: no text)."""
    made_by: tuple[torch.Tensor, ...] = ()
    """The item tower's tensors that made :attr:`tower` (:attr:`Scoring.tower
    <freshrec.serve.scoring.Scoring.tower>`): a catalog change makes :attr:`tower` anew
    with the same tower."""

    def rows(
        self, which: npt.NDArray[np.int64] | None = None, tower: Pair | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Copies of the rows ``which`` (all: ``None``); with ``tower``, another table's
        :attr:`tower`, as that tower would make them: their ID parts as they are now, their
        text's part as it was there (:meth:`Retrieval._update`)."""
        if which is None:
            return self.vectors.numpy().copy(), self.bias.numpy().copy()
        vectors, bias = self.vectors.numpy()[which], self.bias.numpy()[which]
        if tower is not None and self.tower is not None and tower is not self.tower:
            vectors += tower[0].numpy()[which] - self.tower[0].numpy()[which]
            bias += tower[1].numpy()[which] - self.tower[1].numpy()[which]
        return vectors, bias


class Retrieval:
    """Keeps an :class:`Index` of the served vectors for catalogs of at least ``min_items``,
    checked in a background thread every ``rebuild_s`` and rebuilt there where it no longer
    holds; in between, the rows that moved are coded anew there (:meth:`moved`)."""

    def __init__(self, settings: RetrievalSettings):
        self.settings = settings
        self.index: Index | None = None
        self.recent: deque[npt.NDArray[np.float32]] = deque(maxlen=settings.calibration_requests)
        """User vectors of the latest searches: the next build calibrates on them."""
        self._building = threading.Lock()
        self._layout = 0
        """Counts the catalog's re-layouts: an index built from an older one is thrown away."""
        self._drift: npt.NDArray[np.float32] | None = None
        """How far each row of the index moved since it was coded, at most (the sum of its moves)."""
        self._pending: npt.NDArray[np.float32] | None = None
        """The same for the index being built, since the publish whose vectors it takes."""
        self._tower: Pair | None = None
        """The item tower's part of the rows the index was built on (:attr:`ServedTable.tower`):
        rows coded anew keep it, whatever tower serves now (:meth:`_update`)."""
        self._made_by: tuple[torch.Tensor, ...] = ()
        """The item tower that made :attr:`_tower` (:attr:`ServedTable.made_by`)."""
        self._drift_lock = threading.Lock()
        self._updated_at = 0.0
        self.builds = 0
        """Indexes built since the start."""
        self.updated = 0
        """Rows coded anew since the start, in all indexes (:meth:`Index.update`)."""

    def wanted(self, n_items: int) -> bool:
        return n_items >= self.settings.min_items

    def current(self, n_items: int) -> Index | None:
        """The index to take candidates from for a catalog of ``n_items``, if any."""
        return self.index if self.wanted(n_items) else None

    @property
    def tracking(self) -> bool:
        """Whether an index is there or building, whose rows' moves are worth measuring (:meth:`moved`)."""
        return self._drift is not None or self._pending is not None

    def moved(self, rows: npt.NDArray[np.int64], distances: npt.NDArray[np.float32]) -> None:
        """Served ``rows`` (distinct) moved by ``distances`` with the snapshot about to be
        served: counted against the index's codes (and the building one's), so that the
        rows that moved further than the codes' error are coded anew."""
        with self._drift_lock:
            for drift in (self._drift, self._pending):
                if drift is not None:
                    inside = rows < len(drift)  # rows it lacks are candidates anyway
                    drift[rows[inside]] += distances[inside]

    def refresh(
        self,
        table: ServedTable,
        n: int,
        stored: Callable[[], npt.NDArray[np.float32] | None] = lambda: None,
    ) -> None:
        """Build a new index from ``table``'s rows in the background when the catalog is
        large, the index is missing, older than ``rebuild_s`` or not calibrated while
        ``calibration_requests`` requests are there to calibrate on, and no build is running;
        an index older than ``rebuild_s`` that still holds (:meth:`Index.holds`, on the
        latest requests, once the rows that moved are coded anew as a step would) is kept
        instead. A younger one has the rows that moved coded anew
        (:meth:`_update`), every :data:`UPDATE_S` at most.

        A build calibrates on the latest requests' user vectors or, with fewer than
        :data:`MIN_CALIBRATION` of them (a server's first build, a quiet replica's), on
        ``stored()``: stored users' vectors. Why: a first index calibrated on nothing
        probes ``probes`` lists, whatever they find, and was built again once requests
        came, under their load (on the million-item shop, the first 30 s round of 200
        requests/s took p99 69.0 ms against 14.6-36.7 in the next three)."""
        if not self.wanted(n):
            return
        index = self.index
        if index is not None and n > index.n * 1.1:  # rows it lacks are candidates, but not too many
            index = None
        if index is not None:
            # a build may take at most a quarter of a core: a million items' takes tens of seconds
            young = time.monotonic() - index.built_at < max(self.settings.rebuild_s, 4 * index.build_s)
            # one calibrated on nothing (no stored users either) probes `probes` lists, whatever
            # they find: built again as soon as there are requests to calibrate on; one calibrated
            # on stored users is checked on them then, and calibrated again (Index.holds)
            enough = len(self.recent) >= max(self.settings.calibration_requests, MIN_CALIBRATION)
            waiting = (np.isnan(index.calibrated) or index.stand_in) and enough
            if young and not waiting:
                if time.monotonic() - self._updated_at >= UPDATE_S and self._building.acquire(blocking=False):
                    rows = self._far(index)  # now: the moves of the publishes after this one are not in table
                    threading.Thread(
                        target=self._update, args=(index, table, rows), name="freshrec-index", daemon=True
                    ).start()
                return
        if not self._building.acquire(blocking=False):
            return
        with self._drift_lock:  # moves of the publishes from now on are not in the table's rows
            self._pending = np.zeros(n, dtype=np.float32)
        # one that grew old, but holds the catalog and was calibrated, is checked first (Index.holds),
        # its rows that moved coded anew before, as a step would
        check = index if index is not None and not np.isnan(index.calibrated) else None
        far = self._far(check) if check is not None else np.zeros(0, dtype=np.int64)
        args = (table, stored, self._layout, check, far)
        threading.Thread(target=self._build, args=args, name="freshrec-index", daemon=True).start()

    @property
    def warming(self) -> bool:
        """Whether the first index is being built: until it is there, requests are scored
        against every item (a million items: 15 ms each), and ``/health/ready`` says so."""
        return self.index is None and self._building.locked()

    def _far(self, index: Index) -> npt.NDArray[np.int64]:
        """The rows of ``index`` that moved further than its codes' typical error since they
        were coded, the furthest first and :data:`UPDATE_SHARE` of the index at most; their
        moves are counted as coded from now on. Taken at the publish whose table codes them
        (:meth:`refresh`): taken later, in the thread, they would count the moves of the
        publishes in between as coded, though that table lacks them."""
        with self._drift_lock:
            drift = self._drift
            if drift is None or self.index is not index:
                return np.zeros(0, dtype=np.int64)
            rows = np.flatnonzero(drift > index.error)
            most = max(1, int(UPDATE_SHARE * index.n))
            if len(rows) > most:
                rows = rows[np.argpartition(-drift[rows], most - 1)[:most]]
            drift[rows] = 0.0
            return rows

    def _update(self, index: Index, table: ServedTable, rows: npt.NDArray[np.int64]) -> None:
        """A step: :meth:`_code`, in the build's thread."""
        try:
            _in_background()
            self._code(index, table, rows)
        finally:
            self._updated_at = time.monotonic()
            self._building.release()

    def _code(self, index: Index, table: ServedTable, rows: npt.NDArray[np.int64]) -> None:
        """Code ``rows`` (:meth:`_far`) anew in ``index`` from ``table``, with the item tower's
        part of the rows the index was built on, whatever tower serves now.

        Why that tower: after a whole snapshot, the rows not coded anew keep the older tower's
        part, and rows coded with the newer one beside them were misplaced against them. On
        the million-item shop, an index built 150 s before a newer model (its tower among
        what changed) with the 120,161 rows that moved further than the codes' error (0.104)
        coded anew found 0.960 of the newer model's top 10 with the lists its build probed,
        0.976 with half as many again; with the index's own tower, 0.972 and 0.984, as much
        as with every changed row (341,637) coded so, or those that moved half or a quarter
        as far (``benchmarks/drift.py``)."""
        try:
            started = time.perf_counter()
            if len(rows) and self.index is index:
                index.update(rows, *table.rows(rows, self._tower))
                self.updated += len(rows)
                log.debug(
                    "coded %d rows of the candidate index anew in %.2f s (%d since its build)", len(rows),
                    time.perf_counter() - started, index.updated,
                )  # fmt: skip
        except Exception:
            log.exception("could not update the candidate index")
            self.moved(rows, np.full(len(rows), 2 * index.error, dtype=np.float32))  # they wait for the next step

    def _current(self, index: Index, table: ServedTable) -> bool:
        """Whether a build now would make ``index`` again (then a check that falls short
        probes more lists instead, :meth:`Index.holds`): its rows are coded as ``table``
        serves them (no more moved further than its codes' error than a step codes anew),
        with the item tower it was built with (the same tensors: what they make of the text
        is made anew when the catalog changes), and a build would reuse its clustering."""
        drift = self._drift
        if drift is None or not same(self._made_by, table.made_by):
            return False
        pending = int(np.count_nonzero(drift > index.error))
        return pending <= UPDATE_SHARE * index.n and index.trained.fits(index.dims, index.index.nlist)

    def _build(
        self,
        table: ServedTable,
        stored: Callable[[], npt.NDArray[np.float32] | None],
        layout: int,
        check: Index | None,
        far: npt.NDArray[np.int64],
    ) -> None:
        try:
            started = time.perf_counter()
            _in_background()
            if check is not None:
                self._code(check, table, far)
            latest = self.recent.copy()  # one C call: searches append meanwhile, and iterating would fail
            requests = np.array(latest, dtype=np.float32) if len(latest) >= MIN_CALIBRATION else None
            queries = requests if requests is not None else stored()
            if queries is not None and len(queries) < MIN_CALIBRATION:
                queries = None
            source = "requests" if requests is not None else "stored users"
            rows, bias = table.rows()
            stand_in = check is not None and check.stand_in
            built = check.calibrated_probes if check is not None else 0
            if check is not None and requests is not None:
                current = self._current(check, table)
                if check.holds(rows, bias, requests, current):
                    log.info(
                        "the candidate index %s %.3f of the exact top 10 of %d requests (%d of %d lists probed, "
                        "%d at its build; %d rows a candidate; %d rows coded anew since): kept (checked in %.1f s)",
                        "was calibrated on requests: finds" if stand_in else "still finds", check.recall,
                        len(requests), check.probes, check.index.nlist, built, check.factor, check.updated,
                        time.perf_counter() - started,
                    )  # fmt: skip
                    return
                log.info(
                    "the candidate index finds %.3f of the exact top 10 of %d requests with %d of %d lists probed "
                    "(%.3f with %d at its build; %d rows coded anew since): building it again", check.checked[0],
                    len(requests), check.checked[1], check.index.nlist, check.calibrated, built, check.updated,
                )  # fmt: skip
            before = self.index
            trained = before.trained if before else None
            index = Index(rows, bias, self.settings, queries, self.recent, trained, stand_in=requests is None)
            with self._drift_lock:
                if layout == self._layout:
                    self.index, self._drift, self._tower = index, self._pending, table.tower
                    self._made_by = table.made_by
                self.builds += 1
            log.info(
                "built the candidate index of %d items in %.1f s (%d of %d lists probed, %d rows a candidate; "
                "recall@10 %.3f on %d %s; clustering %s)", index.n, time.perf_counter() - started, index.probes,
                index.index.nlist, index.factor, index.recall,
                0 if queries is None else len(queries), source,
                "reused" if before and index.trained is before.trained else "new",
            )  # fmt: skip
        except Exception:  # the catalog is scored exactly meanwhile
            log.exception("could not build the candidate index")
        finally:
            with self._drift_lock:
                self._pending = None
            self._building.release()

    @property
    def covered(self) -> int:
        """The catalog rows the index, or the one being built, holds (0: none)."""
        with self._drift_lock:
            return max((len(d) for d in (self._drift, self._pending) if d is not None), default=0)

    def forget(self) -> None:
        """The catalog's rows were laid out anew: the index's row numbers mean nothing now."""
        with self._drift_lock:
            self._layout += 1
            self.index = self._drift = self._pending = self._tower = None
            self._made_by = ()

    def wait(self) -> None:
        """Return once no index is being built (a batch run ranks with the index only when it is there)."""
        with self._building:
            pass

    def build_now(
        self,
        vectors: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        queries: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Build the index in this thread (benchmarks and tests), calibrated on ``queries``."""
        index = Index(vectors, bias, self.settings, queries, self.recent)
        with self._drift_lock:
            self.index, self._drift, self._tower = index, np.zeros(index.n, dtype=np.float32), None
            self._made_by = ()


def _in_background() -> None:
    """The calling thread (the index's) runs nicer (:func:`~freshrec.runtime.in_background`),
    and its faiss calls on one thread: requests keep the other core. A million items' build
    keeps a core busy for 20-55 s, at most a quarter of the time; at the requests' priority it
    competed with them for the processor as the learner process did before it was niced (p99
    263 to 367 ms against 30 to 82 ms then, under 200 requests/s and 500 events/s)."""
    in_background()
    faiss.omp_set_num_threads(1)
