"""Ranking for requests: the published model applied to the serving catalog.

:class:`Ranker` keeps the current :class:`~freshrec.serve.scoring.Scoring` and
answers a request in three steps, so that concurrent requests share one model
pass: :meth:`Ranker.plan` (filters, the history the model reads, or a fallback
list), :func:`encode` (the forward pass, batched over requests) and
:func:`finish` (scores, the top ``k``, explanations).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import torch
from cachetools import LRUCache

from freshrec.domain import Event, ItemId
from freshrec.model.sequence import HistoryTensors, SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serve import traced
from freshrec.serve.blend import Blended, ServedBlend, contexts
from freshrec.serve.catalog import Catalog, CatalogView
from freshrec.serve.explain import Because, Ranked, because_of, ranked, reasons
from freshrec.serve.fallback import by_text, diversified
from freshrec.serve.index import Index
from freshrec.serve.retrieval import Retrieval, ServedTable
from freshrec.serve.rules import parse
from freshrec.serve.scoring import (
    Scoring,
    build_scoring,
    history_tensors,
    moved,
    promoted,
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
        self._builds = 0
        """Builds begun (:meth:`refresh`)."""
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
        after the call has ended. Callers that come while a build runs share the next one.
        Why: on a million items a build takes about a second of a core, and items posted
        one by one, several at a time, had one build each, one after another."""
        started = self._builds
        with self._lock:
            if self._builds == started:  # else a build began after the call, and read the catalog then
                self._build()

    def _build(self) -> None:
        self._builds += 1  # before the catalog's view is read (:meth:`refresh`)
        snapshot = self._snapshot
        if snapshot is not None and len(self.catalog.view) and self.catalog.align(snapshot.item_ids):
            # the catalog follows the learner's numbering: re-laid out only when the
            # learner's item list changed, so a publish applies the tables as they are
            self.retrieval.forget()
        previous, behind = self.scoring, self._behind
        tables = behind.spare_for(previous, SPARE_WAIT_S) if behind is not None else None
        tower = self.tower.pick(snapshot, self.retrieval.settings.tower_s if self.retrieval.tracking else 0.0)
        sc = build_scoring(snapshot, self.catalog.view, self._spare(), previous, tables, tower)
        whole = sc.snapshot is not None and sc.snapshot.changed is None
        self._behind = Behind.copy_of(sc, into=tables) if whole else Behind.of(previous)
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
        """Everything of :meth:`recommend` up to the model's pass (:func:`encode`, batched).

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


@dataclass
class Request:
    """One recommendation request between :meth:`Ranker.plan` and :func:`finish`."""

    scoring: Scoring
    base: npt.NDArray[np.bool_]
    """The items its filters allow (the catalog's own mask when it has none: never written)."""
    excluded: npt.NDArray[np.int64]
    """The codes it excludes besides (its exclusions and history), ascending."""
    k: int
    explain: bool
    now: float
    past: list[Event] = field(default_factory=list)
    """The history the model reads (empty when no model pass is needed)."""
    result: list[Ranked] | None = None
    user: int = -1
    """The user's row in the model's user table (``-1``: none)."""
    source: str = "model"
    """What ranked it: ``model``, ``text`` (no model yet) or ``popular`` (no history)."""
    users: torch.Tensor | None = None
    """User vectors: the history's, then (with ``explain``) the history's without each event."""
    index: Index | None = None
    """Where candidates come from on a large catalog (``None``: every item is scored)."""
    wanted: int = 0
    """How many candidates to ask the index for (and as many more as it excludes)."""
    candidates: npt.NDArray[np.int64] | None = None
    """The catalog rows to score, ascending (``None``: all)."""
    boost: tuple[npt.NDArray[np.bool_], int] | None = None
    """The boosted items' mask and the places they get at least."""
    blend: ServedBlend | None = None
    """The blend that ranks it (``None``: the network alone)."""
    blended: tuple[Blended, int] | None = None
    """Its rows' blended scores: the batch's and where its rows start."""
    held: list[Event] | None = None
    """The history whose context's weights the blend uses (``None``: its own)."""
    arrived: float = field(default_factory=time.monotonic)
    """When it reached the server: a request that waited too long is refused (:mod:`~freshrec.serve.batching`)."""

    @cached_property
    def allowed(self) -> npt.NDArray[np.bool_]:
        """Mask of the items it may return, made on first use: a request ranked from the
        index's candidates needs only theirs (:meth:`allowed_at`), and a million items'
        copy cost 0.1 ms."""
        allowed = self.base.copy()
        allowed[self.excluded] = False
        return allowed

    def allowed_at(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether it may return each of ``rows``."""
        ok = self.base[rows]
        if len(self.excluded):
            at = np.searchsorted(self.excluded, rows).clip(max=len(self.excluded) - 1)
            ok &= self.excluded[at] != rows
        return ok

    def histories(self) -> list[list[Event]]:
        past = self.past
        if not self.explain:
            return [past]
        return [past] + [past[:j] + past[j + 1 :] for j in range(len(past))]


@torch.inference_mode()
def encode(requests: Sequence[Request]) -> None:
    """User vectors of every request that needs the model, one (traced) pass per model
    version: its fixed cost is paid once for all of them (:mod:`~freshrec.serve.traced`)."""
    groups: dict[int, list[Request]] = {}
    for r in requests:
        if r.result is None and r.users is None:
            groups.setdefault(id(r.scoring), []).append(r)
    for group in groups.values():
        sc = group[0].scoring
        assert sc.net is not None and sc.vectors is not None and sc.snapshot is not None
        histories = [r.histories() for r in group]
        rows = [(h, r.now, r.user) for r, hs in zip(group, histories, strict=True) for h in hs]
        t = history_tensors(sc, rows, sc.snapshot.settings.history_length, wide=True)
        users = traced.users(sc, t)
        mixed = None
        if group[0].blend is not None:  # one ranker per scoring: all or none of the group
            assert sc.bias is not None
            context = _contexts(sc, group, histories, t)
            mixed = group[0].blend.score(users @ sc.vectors.T + sc.bias, t, sc.vectors, sc.view, context)
        start = 0
        for r, hs in zip(group, histories, strict=True):
            r.users = users[start : start + len(hs)]
            r.blended = None if mixed is None else (mixed, start)
            start += len(hs)
        _retrieve([r for r in group if r.index is not None])


def _contexts(sc: Scoring, group: list[Request], histories: list[list[list[Event]]], t: HistoryTensors) -> torch.Tensor:
    """Each row's blend context: its own, but an explanation's leave-one-out rows take
    their request's (so that an event's drop is what it adds to the features, not the
    difference between the weights of two history lengths), and a request with a
    ``held`` history takes that one's."""
    context = contexts(t)
    start = 0
    for r, hs in zip(group, histories, strict=True):
        if r.held is not None:
            assert sc.snapshot is not None
            held = history_tensors(sc, [(r.held, r.now, r.user)], sc.snapshot.settings.history_length)
            context[start : start + len(hs)] = contexts(held)[0]
        elif len(hs) > 1:
            context[start + 1 : start + len(hs)] = context[start]
        start += len(hs)
    return context


def _retrieve(requests: Sequence[Request]) -> None:
    """Candidates for each request from its index, one search per index; rows added to
    the catalog after the index was built are candidates too."""
    by_index: dict[int, list[Request]] = {}
    for r in requests:
        by_index.setdefault(id(r.index), []).append(r)
    for group in by_index.values():
        index = group[0].index
        assert index is not None
        users = np.stack([r.users[0].numpy() for r in group if r.users is not None])
        found = index.search(users, max(r.wanted for r in group), max(len(r.excluded) for r in group))
        for r, rows in zip(group, found, strict=True):
            newer = np.arange(index.n, len(r.base), dtype=np.int64)
            mine = rows[: index.shortlist(r.wanted, len(r.excluded))]
            # distinct already (a row is in one list), below the newer ones
            r.candidates = np.concatenate([index.with_head(mine[mine >= 0]), newer])


@torch.inference_mode()
def finish(request: Request) -> list[Ranked]:
    """The ranked list of an encoded request."""
    if request.result is not None:
        return request.result
    sc, users = request.scoring, request.users
    assert sc.vectors is not None and sc.bias is not None and users is not None
    rows = request.candidates
    if rows is not None:
        rows = rows[request.allowed_at(rows)]
        if len(rows) < request.k:  # a narrow filter: the candidates hold too few of its items
            rows = None
    # NumPy views of the same memory: the final dot products cost less there than in torch
    vectors, bias = sc.vectors.numpy(), sc.bias.numpy()
    if request.blended is not None:
        mixed, start = request.blended
        scores = mixed.scores[start : start + len(users)].numpy()
        rows = None
    elif rows is None:
        scores = users.numpy() @ vectors.T + bias
    else:  # rows ascend, so ties still go to the lower code
        scores = users.numpy() @ vectors[rows].T + bias[rows]
    if rows is None:
        allowed, boosted = request.allowed, request.boost[0] if request.boost else None
    else:
        allowed, boosted = np.ones(len(rows), dtype=bool), request.boost[0][rows] if request.boost else None
    columns = top(scores[0], allowed, request.k)
    if request.boost is not None and boosted is not None:
        columns = promoted(scores[0], allowed, boosted, columns, request.boost[1])
    codes = columns if rows is None else [int(rows[j]) for j in columns]
    why: list[tuple[str, float] | None] = [None] * len(codes)
    if request.explain and request.blended is not None:
        why = reasons(request.blended, request.allowed, codes)
    out = []
    for j, c, placed_by in zip(columns, codes, why, strict=True):
        because: tuple[Because, ...] = ()
        if request.explain:
            drops = scores[0, j] - scores[1:, j]
            strongest = [e for e in np.argsort(-drops, kind="stable")[:3] if drops[e] > 0]
            because = tuple(because_of(sc, request.past[e], float(drops[e])) for e in strongest)
        out.append(ranked(sc, c, float(scores[0, j]), because, request.explain, placed_by))
    return out
