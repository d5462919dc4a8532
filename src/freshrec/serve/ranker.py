"""Ranking for requests: the published model applied to the serving catalog.

A :class:`Scoring` pairs one model snapshot with one catalog view and holds
everything derived from them (an inference copy of the network, the item
table, unit item vectors for similarity). The learner's thread builds a new
one on every publish and swaps it in with one assignment; request threads
read ``ranker.scoring`` once and use that object to the end, so a request
never mixes two model versions and never waits for a publish.

Explanations are leave-one-out attributions: the user vector is recomputed
for the history without each of its events (one batched forward pass), and
the event whose absence lowers an item's score most is the one named in
"because you rated X", with that drop as its weight. They say what the
model actually used, not a similarity guessed after the fact.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from freshrec.domain import Event, EventType, ItemId
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.model.sequence import HistoryTensors, SequenceNet, untouched
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog, CatalogView
from freshrec.settings import ModelSettings

ROW_STATE = ("item_id.weight", "item_bias.weight", "active", "interactions", "last_seen")
"""Per-item entries of the network's state, mapped from the learner's rows to the catalog's."""

POPULAR = "popular right now"
"""The explanation of the fallback's picks."""

DIVERSITY = 0.5
"""Weight of the redundancy penalty in the fallback's maximal-marginal-relevance picking."""


@dataclass(frozen=True, slots=True)
class Because:
    item_id: ItemId
    title: str
    type: EventType
    value: float | None
    weight: float
    """How much the item's score drops without this history event."""

    def sentence(self) -> str:
        title = self.title or self.item_id
        if self.type is EventType.RATING and self.value is not None:
            return f"because you rated {title} {self.value:g}"
        return f"because you {_VERBS[self.type]} {title}"


_VERBS = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "clicked",
    EventType.FAVORITE: "saved",
    EventType.CART: "put in your cart",
    EventType.PURCHASE: "bought",
    EventType.RATING: "rated",
    EventType.DISLIKE: "disliked",
    EventType.IMPRESSION: "were shown",
}


@dataclass(frozen=True, slots=True)
class Ranked:
    item_id: ItemId
    score: float
    title: str
    explanation: str | None
    because: tuple[Because, ...] = ()


@dataclass(frozen=True, slots=True)
class Options:
    """What a recommendation request asks for."""

    k: int = 10
    exclude: tuple[ItemId, ...] = ()
    categories: tuple[str, ...] = ()
    exclude_seen: bool = True
    explain: bool = False


Popular = Callable[[], Sequence[tuple[ItemId, float]]]
"""Popular items, best first; called only for a user without history."""


@dataclass(frozen=True)
class Scoring:
    view: CatalogView
    snapshot: Snapshot | None
    net: SequenceNet | None
    vectors: torch.Tensor | None
    bias: torch.Tensor | None
    unit: npt.NDArray[np.float32]
    """Unit item vectors: the model's when there is one, else the text embeddings."""
    user_rows: dict[str, int] = field(default_factory=dict)
    """Row of each user in the model's user table (only with ``use_user_ids``)."""

    @property
    def version(self) -> str | None:
        return self.snapshot.version if self.snapshot is not None else None


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


RowMap = tuple[torch.Tensor, torch.Tensor]
"""Learner rows and the catalog rows they go to."""


def row_map(item_ids: list[str], view: CatalogView) -> RowMap:
    pairs = [(k, view.codes[i]) for k, i in enumerate(item_ids) if i in view.codes]
    return (
        torch.tensor([k for k, _ in pairs], dtype=torch.long),
        torch.tensor([n for _, n in pairs], dtype=torch.long),
    )


@torch.no_grad()
def build_scoring(
    snapshot: Snapshot | None, view: CatalogView, rows: RowMap | None = None, spare: SequenceNet | None = None
) -> Scoring:
    """The scoring of ``snapshot`` on ``view``; ``spare``, a network no request uses any
    more, is refilled with the snapshot's tensors if it has the same shapes."""
    if snapshot is None or not len(view):
        return Scoring(view, None, None, None, None, _unit(view.text))
    s = snapshot.settings
    text = torch.from_numpy(view.text) if s.use_text else None
    state = dict(snapshot.state)
    model_rows, view_rows = rows if rows is not None else row_map(snapshot.item_ids, view)
    for name in ROW_STATE:  # the learner's rows, moved to the catalog's; items it lacks stay untouched
        learned = state[name]
        values = untouched(name, learned, len(view))
        values[view_rows] = learned[model_rows]
        state[name] = values
    net = _refill(spare, state, text, s, snapshot.rating_scale)
    if net is None:
        net = SequenceNet.from_state(state, text, s, rating_scale=snapshot.rating_scale)
    net.eval()
    vectors, bias = net.item_table()
    user_rows = {u: n for n, u in enumerate(snapshot.user_ids) if u is not None}
    return Scoring(view, snapshot, net, vectors, bias, _unit(vectors.numpy()), user_rows)


def _refill(
    net: SequenceNet | None, state: dict[str, torch.Tensor], text: torch.Tensor | None, s: ModelSettings, scale: float
) -> SequenceNet | None:
    """``net`` made of ``state``'s tensors, or ``None`` if it has other shapes. Half a
    millisecond, against twelve for building a network (Python work that holds the
    interpreter lock while requests wait)."""
    if net is None or net.settings != s or net.rating_scale != scale:
        return None
    current = net.state_dict(keep_vars=True)
    if any(name not in current or current[name].shape != value.shape for name, value in state.items()):
        return None
    if text is not None and (not net.use_text or net.text.shape != text.shape):
        return None
    net.load_state_dict(state, strict=False, assign=True)
    if text is not None:
        net.text = text.float()
    return net


class Ranker:
    """Recommendations and similar items from the current :class:`Scoring`."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._rows: tuple[CatalogView, int, RowMap] | None = None
        self._spares: list[tuple[weakref.ref[Scoring], SequenceNet]] = []
        self.scoring = build_scoring(None, catalog.view)

    def publish(self, snapshot: Snapshot | None) -> None:
        """Serve ``snapshot`` from now on (called from the publisher thread)."""
        with self._lock:
            self._snapshot = snapshot
            self._build()

    def refresh(self) -> None:
        """Pick up catalog changes with the current model."""
        with self._lock:
            self._build()

    def _build(self) -> None:
        snapshot, view = self._snapshot, self.catalog.view
        rows = None
        if snapshot is not None:
            # The map from learner rows to catalog rows is kept while the catalog
            # view and the learner's ids stay the same: at a publish every few
            # hundred milliseconds, rebuilding it was half the cost of a publish;
            # hashing the ids is a fiftieth of it.
            key = hash(tuple(snapshot.item_ids))
            if self._rows is None or self._rows[0] is not view or self._rows[1] != key:
                self._rows = (view, key, row_map(snapshot.item_ids, view))
            rows = self._rows[2]
        self.scoring = build_scoring(snapshot, view, rows, self._spare())
        if self.scoring.net is not None:
            self._spares.append((weakref.ref(self.scoring), self.scoring.net))
            del self._spares[:-4]

    def _spare(self) -> SequenceNet | None:
        """A network whose scoring is gone: no request can be using it."""
        for n, (owner, net) in enumerate(self._spares):
            if owner() is None:
                del self._spares[n]
                return net
        return None

    # -- recommendations -------------------------------------------------------
    def recommend(
        self, history: Sequence[Event], now: float, options: Options, popular: Popular = lambda: ()
    ) -> list[Ranked]:
        """Top ``options.k`` items for a user with this history (oldest first)."""
        request = self.plan(history, now, options, popular)
        encode([request])
        return finish(request)

    def plan(self, history: Sequence[Event], now: float, options: Options, popular: Popular = lambda: ()) -> Request:
        """Everything of :meth:`recommend` up to the model's forward pass, which
        :func:`encode` then runs for many requests at once.

        A user without a usable history gets ``popular()`` items, diversified;
        before any model is published, a user with history gets the items
        whose text is closest to what they interacted with.
        """
        k, explain = options.k, options.explain
        sc = self.scoring
        view = sc.view
        known = [e for e in history if e.item_id in view.codes]
        allowed = view.alive.copy()
        if options.categories:
            allowed &= view.in_categories(options.categories)
        for item_id in options.exclude:
            if (n := view.codes.get(item_id)) is not None:
                allowed[n] = False
        if options.exclude_seen:
            allowed[[view.codes[e.item_id] for e in known]] = False
        request = Request(sc, allowed, k, explain, now)
        if not known:
            request.source, request.result = "popular", _diversified(sc, popular(), allowed, k)
        elif sc.net is None:
            request.source, request.result = "text", _by_text(sc, known, allowed, k, explain)
        else:
            assert sc.snapshot is not None
            request.past = list(known[-sc.snapshot.settings.history_length :])
            request.user = sc.user_rows.get(known[-1].user_id, -1)
        return request

    def similar(self, item_id: ItemId, k: int, categories: Sequence[str] = ()) -> list[Ranked] | None:
        """The ``k`` items closest to ``item_id`` (cosine of item vectors); ``None`` if unknown."""
        sc = self.scoring
        n = sc.view.codes.get(item_id)
        if n is None or not sc.view.alive[n]:
            return None
        allowed = sc.view.alive.copy()
        if categories:
            allowed &= sc.view.in_categories(categories)
        allowed[n] = False
        scores = sc.unit @ sc.unit[n]
        return [Ranked(sc.view.ids[c], float(scores[c]), sc.view.titles[c], None) for c in _top(scores, allowed, k)]


def _top(scores: npt.NDArray[np.floating], allowed: npt.NDArray[np.bool_], k: int) -> list[int]:
    """Codes of the ``k`` best allowed scores, best first (ties: lower code first)."""
    candidates = np.flatnonzero(allowed)
    if not len(candidates) or k < 1:
        return []
    values = scores[candidates]
    if len(candidates) > k:
        keep = np.argpartition(-values, k - 1)[:k]
        candidates, values = candidates[keep], values[keep]
    order = np.lexsort((candidates, -values))
    return [int(c) for c in candidates[order]]


def _history_tensors(sc: Scoring, rows: Sequence[tuple[Sequence[Event], float, int]], length: int) -> HistoryTensors:
    """Right-aligned, left-padded tensors of several ``(history, now, user row)``
    rows (oldest event first), as wide as the longest history: the encoder reads
    a shorter history in fewer steps."""
    n = len(rows)
    length = max(1, min(length, max(len(h) for h, _, _ in rows)))
    hist = torch.full((n, length), -1, dtype=torch.long)
    htype = torch.full((n, length), -1, dtype=torch.long)
    hvalue = torch.full((n, length), float("nan"))
    htime = torch.full((n, length), float("nan"), dtype=torch.float64)
    now = torch.empty(n, dtype=torch.float64)
    user = torch.tensor([u for _, _, u in rows], dtype=torch.long)
    for r, (events, at, _) in enumerate(rows):
        past = events[-length:]
        now[r] = max(at, past[-1].timestamp) if past else at
        if not past:
            continue
        m = len(past)
        hist[r, -m:] = torch.tensor([sc.view.codes[e.item_id] for e in past])
        htype[r, -m:] = torch.tensor([TYPE_CODES[e.type] for e in past])
        hvalue[r, -m:] = torch.tensor([np.nan if e.value is None else e.value for e in past], dtype=torch.float32)
        htime[r, -m:] = torch.tensor([e.timestamp for e in past], dtype=torch.float64)
    return {"hist_item": hist, "hist_type": htype, "hist_value": hvalue, "hist_time": htime, "time": now, "user": user}


@dataclass
class Request:
    """One recommendation request between :meth:`Ranker.plan` and :func:`finish`."""

    scoring: Scoring
    allowed: npt.NDArray[np.bool_]
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

    def histories(self) -> list[list[Event]]:
        past = self.past
        if not self.explain:
            return [past]
        return [past] + [past[:j] + past[j + 1 :] for j in range(len(past))]


@torch.inference_mode()
def encode(requests: Sequence[Request]) -> None:
    """User vectors of every request that needs the model, one forward pass per
    model version: the per-operation overhead of a pass is paid once for all
    of them, which is what keeps a busy server's latency flat."""
    groups: dict[int, list[Request]] = {}
    for r in requests:
        if r.result is None and r.users is None:
            groups.setdefault(id(r.scoring), []).append(r)
    for group in groups.values():
        sc = group[0].scoring
        assert sc.net is not None and sc.vectors is not None and sc.snapshot is not None
        histories = [r.histories() for r in group]
        rows = [(h, r.now, r.user) for r, hs in zip(group, histories, strict=True) for h in hs]
        t = _history_tensors(sc, rows, sc.snapshot.settings.history_length)
        users = sc.net.users(sc.vectors, **t)
        start = 0
        for r, hs in zip(group, histories, strict=True):
            r.users, start = users[start : start + len(hs)], start + len(hs)


@torch.inference_mode()
def finish(request: Request) -> list[Ranked]:
    """The ranked list of an encoded request."""
    if request.result is not None:
        return request.result
    sc, users = request.scoring, request.users
    assert sc.vectors is not None and sc.bias is not None and users is not None
    # NumPy views of the same memory: the final dot products cost less there than in torch
    scores = users.numpy() @ sc.vectors.numpy().T + sc.bias.numpy()
    out = []
    for c in _top(scores[0], request.allowed, request.k):
        because: tuple[Because, ...] = ()
        if request.explain:
            drops = scores[0, c] - scores[1:, c]
            ranked = [j for j in np.argsort(-drops, kind="stable")[:3] if drops[j] > 0]
            because = tuple(_because(sc, request.past[j], float(drops[j])) for j in ranked)
        out.append(_ranked(sc, c, float(scores[0, c]), because, request.explain))
    return out


def _by_text(
    sc: Scoring, known: Sequence[Event], allowed: npt.NDArray[np.bool_], k: int, explain: bool
) -> list[Ranked]:
    """Before a model exists: closeness of each item's text to the recent history's."""
    past = [e for e in known[-20:] if e.type not in (EventType.DISLIKE, EventType.IMPRESSION)] or list(known[-20:])
    rows = [sc.view.codes[e.item_id] for e in past]
    weights = np.linspace(0.5, 1.0, len(rows), dtype=np.float32)  # recent events count more
    user = (sc.unit[rows] * weights[:, None]).sum(0)
    scores = sc.unit @ (user / max(float(np.linalg.norm(user)), 1e-12))
    out = []
    for c in _top(scores, allowed, k):
        because: tuple[Because, ...] = ()
        if explain:
            sims = sc.unit[rows] @ sc.unit[c]
            j = int(np.argmax(sims))
            because = (_because(sc, past[j], float(sims[j])),)
        out.append(_ranked(sc, c, float(scores[c]), because, explain))
    return out


def _diversified(
    sc: Scoring, popular: Sequence[tuple[ItemId, float]], allowed: npt.NDArray[np.bool_], k: int
) -> list[Ranked]:
    """Popular items, picked by maximal marginal relevance (Carbonell and Goldstein,
    1998) so that the list does not fill up with near-duplicates of the top seller."""
    view = sc.view
    codes, counts = [], []
    for item_id, count in popular:
        n = view.codes.get(item_id)
        if n is not None and allowed[n]:
            codes.append(n)
            counts.append(count)
    if len(codes) < k:  # a new shop: top up with the newest items
        taken = set(codes)
        extra = [int(c) for c in np.flatnonzero(allowed)[::-1] if c not in taken][: k - len(codes)]
        codes += extra
        counts += [0.0] * len(extra)
    if not codes:
        return []
    relevance = np.asarray(counts, dtype=np.float64)
    relevance = relevance / relevance.max() if relevance.max() > 0 else relevance
    vectors = sc.unit[codes]
    chosen: list[int] = []
    redundancy = np.full(len(codes), -np.inf)
    for _ in range(min(k, len(codes))):
        gain = relevance - DIVERSITY * np.maximum(redundancy, 0.0)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return [Ranked(view.ids[codes[i]], float(relevance[i]), view.titles[codes[i]], POPULAR) for i in chosen]


def _because(sc: Scoring, event: Event, weight: float) -> Because:
    n = sc.view.codes[event.item_id]
    return Because(event.item_id, sc.view.titles[n], event.type, event.value, weight)


def _ranked(sc: Scoring, code: int, score: float, because: tuple[Because, ...], explain: bool) -> Ranked:
    explanation = None
    if explain:
        explanation = because[0].sentence() if because else "matches your recent activity"
    return Ranked(sc.view.ids[code], score, sc.view.titles[code], explanation, because)
