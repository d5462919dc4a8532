"""A recommendation request from its plan to its list: the model's pass, batched over
requests (:func:`encode`), and the ranked list (:func:`finish`); :meth:`Ranker.plan
<freshrec.serve.ranker.Ranker.plan>` makes it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import torch

from freshrec.domain import Event
from freshrec.model.histories import HistoryTensors
from freshrec.serve import traced
from freshrec.serve.blend import Blended, ServedBlend, contexts
from freshrec.serve.explain import Because, Ranked, because_of, ranked, reasons
from freshrec.serve.index import Index
from freshrec.serve.scoring import Scoring, history_tensors, top


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


def promoted(
    scores: npt.NDArray[np.floating],
    allowed: npt.NDArray[np.bool_],
    boosted: npt.NDArray[np.bool_],
    chosen: list[int],
    places: int,
) -> list[int]:
    """``chosen`` (the best allowed, best first) with at least ``places`` boosted items:
    the best boosted ones not in it take the places of its worst unboosted ones, and the
    list stays in score order (a boosted item shows at its own rank among them)."""
    lifted = [c for c in chosen if boosted[c]]
    missing = min(places, len(chosen)) - len(lifted)
    if missing <= 0:
        return chosen
    others = allowed & boosted
    others[lifted] = False
    extra = top(scores, others, missing)
    plain = [c for c in chosen if not boosted[c]][: len(chosen) - len(lifted) - len(extra)]
    return sorted([*lifted, *extra, *plain], key=lambda c: (-scores[c], c))
