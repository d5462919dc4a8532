"""Ranking for requests: the published model applied to the serving catalog.

:class:`Ranker` keeps the current :class:`~freshrec.serve.scoring.Scoring` and
answers a request in three steps, so that concurrent requests share one model
pass: :meth:`Ranker.plan` (filters, the history the model reads, or a fallback
list), :func:`~freshrec.serve.request.encode` (the forward pass, batched over requests)
and :func:`~freshrec.serve.request.finish` (scores, the top ``k``, explanations).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from freshrec.domain import Event, ItemId
from freshrec.model.deltas import ROW_STATE
from freshrec.model.rows import Room
from freshrec.model.sequence import SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serve.blend import ServedBlend
from freshrec.serve.catalog import Catalog, CatalogView, first_moved
from freshrec.serve.explain import Ranked
from freshrec.serve.fallback import by_text, diversified
from freshrec.serve.request import Request, encode, finish
from freshrec.serve.retrieval import Retrieval, ServedTable
from freshrec.serve.rules import parse
from freshrec.serve.scoring import (
    Scoring,
    build_scoring,
    moved,
    top,
    user_vectors,
)
from freshrec.serve.spare import Behind
from freshrec.serve.tower import Tower
from freshrec.settings import RetrievalSettings


@dataclass(frozen=True, slots=True)
class Options:
    """What a recommendation request asks for."""

    k: int = 10
    exclude: tuple[ItemId, ...] = ()
    categories: tuple[str, ...] = ()
    exclude_seen: bool = True
    explain: bool = False
    rule: str = ""
    """A business rule (:mod:`freshrec.serve.rules`) every returned item satisfies ("": none)."""
    boost: tuple[str, float] | None = None
    """``(rule, share)``: ``round(share * k)`` places go to the best-scored items that
    satisfy the rule, each at its own rank (model-ranked lists)."""


SPARE_WAIT_S = 1.0
"""How long a build waits for the requests still reading the table it would write over (:meth:`Behind.spare_for`)."""


Popular = Callable[[], Sequence[tuple[ItemId, float]]]
"""Popular items, best first; called only for a user without history."""
Stored = Callable[[int, int], tuple[list[list[Event]], float]]
"""``(users, length)``: the last ``length`` events of up to ``users`` stored users, and now."""


class Ranker:
    """Recommendations and similar items from the current :class:`Scoring`."""

    def __init__(self, catalog: Catalog, retrieval: RetrievalSettings | None = None, stored: Stored | None = None):
        """``stored``: histories of stored users, which a candidate index built before
        requests came calibrates on (:meth:`Retrieval.refresh`)."""
        self.catalog = catalog
        self.retrieval = Retrieval(retrieval or RetrievalSettings())
        self.stored = stored
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._spares: list[tuple[weakref.ref[Scoring], SequenceNet]] = []
        self._behind: Behind | None = None
        self._room = Room()
        """Spare rows for the tables a build extends as the catalog gains items (:func:`build_scoring`)."""
        self._begun = 0
        """Builds begun (:meth:`refresh`)."""
        self._built = 0
        """The number (in :attr:`_begun`) of the last build that ended well."""
        self._masks: LRUCache[tuple[str, int], tuple[CatalogView, npt.NDArray[np.bool_]]] = LRUCache(64)
        self._masks_lock = threading.Lock()
        self.blend = ServedBlend()
        """The learner's blend, fed by :class:`~freshrec.serve.models.Models` as snapshots arrive."""
        self.tower = Tower()  # the item tower served, kept while a candidate index is
        self.scoring = build_scoring(None, catalog.view)

    def publish(self, snapshot: Snapshot | None) -> None:
        """Serve ``snapshot`` from now on (the publisher's thread); its blend, if it brings one,
        too (:class:`~freshrec.serve.models.Models` hands blends over as they arrive)."""
        if snapshot is not None and snapshot.blend is not None:
            self.blend.take(snapshot.blend, snapshot.settings)
        with self._lock:
            self._snapshot = snapshot
            self._build()

    def refresh(self) -> None:
        """Pick up catalog changes with the current model: returns once a build that began
        after the call has ended well (or raises its own build's error). Callers that come
        while a build runs share the next one.
        Why: on a million items a build takes about a second of a core, and items posted
        one by one, several at a time, had one build each, one after another."""
        asked = self._begun
        with self._lock:
            if self._built <= asked:  # else a build that began after the call, reading the catalog then, ended well
                self._build()

    def _build(self) -> None:
        self._begun += 1  # before the catalog's view is read (:meth:`refresh`)
        number = self._begun
        snapshot = self._snapshot
        if snapshot is not None and len(self.catalog.view):
            # the catalog follows the learner's numbering: re-laid out only when the
            # learner's item list changed, so a publish applies the tables as they are
            self.catalog.align(snapshot.item_ids)
        previous, behind, view = self.scoring, self._behind, self.catalog.view
        covered = self.retrieval.covered
        if covered and first_moved(previous.view, view, covered) < covered:
            # by this ranker's re-layout or another's (an experiment's arms share the catalog); one
            # that moved only rows added after the index's build (the learner took in items
            # the catalog added later than others) leaves its rows as they were
            self.retrieval.forget()
        # the table to write over, asked for only by a build that needs it: finding it may wait
        # for requests, and a build for items added to the catalog extends tables instead
        tables = functools.cache(lambda: behind.spare_for(previous, SPARE_WAIT_S) if behind is not None else None)
        tower = self.tower.pick(snapshot, self.retrieval.settings.tower_s if self.retrieval.tracking else 0.0)
        sc = build_scoring(snapshot, view, self._spare(), previous, tables, tower, self._room)
        if sc.snapshot is not None and sc.snapshot is previous.snapshot and sc.written is not None:
            # previous's table extended: the table kept for previous's first delta serves sc's
            self._behind = behind.grown(previous, sc, self._room) if behind is not None else None
        elif sc.snapshot is not None and sc.snapshot.changed is None:
            self._behind = Behind.copy_of(sc, into=tables(), room=self._room)
        else:
            self._behind = Behind.of(previous)
        self._room.keep(self._tables(sc))
        if sc.vectors is not None and sc.bias is not None:  # before the swap: a first index is building
            if self.retrieval.tracking:  # (not ready) from the moment its model is served
                self.retrieval.moved(*moved(previous, sc))  # previous's table is intact until the swap
            table = ServedTable(sc.vectors, sc.bias, sc.text_part, sc.tower)
            self.retrieval.refresh(table, len(sc.view), functools.partial(self._stored_users, weakref.ref(sc)))
        self.scoring = sc
        self.blend.prepare(sc.view)
        if self.scoring.net is not None:
            self._spares.append((weakref.ref(self.scoring), self.scoring.net))
            del self._spares[:-4]
        self._built = number

    def _tables(self, sc: Scoring) -> list[object]:
        """The tables a later build may extend: ``sc``'s, its network's per-item ones, the kept one's."""
        tables: list[object] = [sc.vectors, sc.bias, sc.norms, *(sc.text_part or ())]
        if sc.net is not None:
            tables += [t for name, t in sc.net.state_dict(keep_vars=True).items() if name in ROW_STATE]
        tables += self._behind.tables if self._behind is not None else ()
        return [t for t in tables if t is not None]

    def _stored_users(self, made: weakref.ref[Scoring]) -> npt.NDArray[np.float32] | None:
        """Stored users' vectors by the scoring ``made`` (or the one served, if it is gone), held
        weakly: held by a build, it kept its table from being written over (:meth:`Behind.spare_for`)."""
        snapshot = (made() or self.scoring).snapshot
        if self.stored is None or snapshot is None:
            return None
        histories, now = self.stored(self.retrieval.settings.calibration_requests, snapshot.settings.history_length)
        return user_vectors(made() or self.scoring, histories, now)

    def _spare(self) -> SequenceNet | None:
        """A network whose scoring is gone: no request can be using it."""
        for n, (owner, net) in enumerate(self._spares):
            if owner() is None:
                del self._spares[n]
                return net
        return None

    # -- recommendations -------------------------------------------------------
    def recommend(
        self,
        history: Sequence[Event],
        now: float,
        options: Options,
        popular: Popular = lambda: (),
        held: Sequence[Event] | None = None,
    ) -> list[Ranked]:
        """Top ``options.k`` items for a user with this history (oldest first). With ``held``,
        the blend weighs the features with the weights of that history's context instead (an
        explanation's leave-one-out: it measures what an event adds, not a switch of weights)."""
        request = self.plan(history, now, options, popular)
        if held is not None and request.past:
            request.held = [e for e in held if e.item_id in request.scoring.view.codes]
        encode([request])
        return finish(request)

    def plan(self, history: Sequence[Event], now: float, options: Options, popular: Popular = lambda: ()) -> Request:
        """Everything of :meth:`recommend` up to the model's pass (:func:`~freshrec.serve.request.encode`, batched).

        A user without a usable history gets ``popular()`` items, diversified;
        before any model is published, a user with history gets the items
        whose text is closest to what they interacted with.
        """
        k, explain = options.k, options.explain
        sc = self.scoring
        view = sc.view
        known = [e for e in history if e.item_id in view.codes]
        base = view.alive
        if options.categories:
            base = base & view.in_categories(options.categories)
        if options.rule:
            base = base & self.matching(options.rule, view)
        excluded = [n for item_id in options.exclude if (n := view.codes.get(item_id)) is not None]
        if options.exclude_seen:
            excluded += [view.codes[e.item_id] for e in known]
        request = Request(sc, base, np.unique(np.array(excluded, dtype=np.int64)), k, explain, now)
        if options.boost is not None:
            request.boost = (self.matching(options.boost[0], view), round(options.boost[1] * k))
        if not known:
            request.source, request.result = "popular", diversified(sc, popular(), request.allowed, k)
        elif sc.net is None:
            request.source, request.result = "text", by_text(sc, known, request.allowed, k, explain)
        else:
            assert sc.snapshot is not None
            request.past = list(known[-sc.snapshot.settings.history_length :])
            request.user = sc.user_rows.get(known[-1].user_id, -1)
            if sc.aligned and self.blend.ready:  # the blend reads every item: no candidates
                request.blend = self.blend
            else:
                request.index = self.retrieval.current(len(view))
            request.wanted = k + self.retrieval.settings.candidates
        return request

    def matching(self, rule: str, view: CatalogView) -> npt.NDArray[np.bool_]:
        """Mask of the view's live items that satisfy ``rule``, computed once per rule and
        catalog view (a Python test per item: 4-6 µs each on the reference machine)."""
        key = (rule, id(view))
        with self._masks_lock:  # cachetools' caches are not thread-safe
            cached = self._masks.get(key)
        if cached is None or cached[0] is not view:
            cached = (view, view.matching(parse(rule)))
            with self._masks_lock:
                self._masks[key] = cached
        return cached[1]

    def similar(self, item_id: ItemId, k: int, categories: Sequence[str] = (), rule: str = "") -> list[Ranked] | None:
        """The ``k`` items closest to ``item_id`` (cosine of item vectors); ``None`` if unknown."""
        sc = self.scoring
        n = sc.view.codes.get(item_id)
        if n is None or not sc.view.alive[n]:
            return None
        allowed = sc.view.alive.copy()
        if categories:
            allowed &= sc.view.in_categories(categories)
        if rule:
            allowed &= self.matching(rule, sc.view)
        allowed[n] = False
        scores = sc.cosines(sc.unit([n])[0])
        return [Ranked(sc.view.ids[c], float(scores[c]), sc.view.titles[c], None) for c in top(scores, allowed, k)]
