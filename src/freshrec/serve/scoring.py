"""The scoring state of serving: one model snapshot applied to one catalog view.

A :class:`Scoring` pairs one model snapshot with one catalog view and holds
everything derived from them (an inference copy of the network, the item
table, its rows' lengths for similarity). The publisher thread builds a new
one on every publish and swaps it in with one assignment; request threads
read ``ranker.scoring`` once and use that object to the end, so a request
never mixes two model versions and never waits for a publish.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from freshrec.domain import Event
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.model.deltas import ITEM_TOWER, ROW_STATE
from freshrec.model.histories import HistoryTensors, left_padded
from freshrec.model.rows import Room, put, take
from freshrec.model.sequence import Pair, SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import CatalogView, starts_with
from freshrec.serve.network import moved_rows, padded, pair_made, refilled, text_part_made

if TYPE_CHECKING:
    from freshrec.serve.spare import Spare

MOVED_CHUNK = 1 << 15
"""Rows :func:`moved` compares at a time. Why: after a whole snapshot with a newer item tower
it compares every row, less the towers' parts; on a million items, in one piece, 1.1 to 1.7 s
of a core (temporaries of 256 MB each), in these pieces 0.1 s."""


@dataclass(frozen=True)
class Scoring:
    view: CatalogView
    snapshot: Snapshot | None
    net: SequenceNet | None
    vectors: torch.Tensor | None
    bias: torch.Tensor | None
    norms: npt.NDArray[np.float32]
    """The length of each item's row of :meth:`rows` (at least ``1e-12``). Why lengths rather
    than a unit-length copy of the table: on a million items that copy was 256 MB more per
    table (three are kept), and every delta's build wrote and copied its rows: a quarter of
    the build's processor time (``benchmarks/publish_lag.py``)."""
    user_rows: dict[str, int] = field(default_factory=dict)
    """Row of each user in the model's user table (only with ``use_user_ids``)."""
    aligned: bool = False
    """Whether the view's first rows are the snapshot's items, in its order (then the
    blend's counts, numbered like the learner's items, read the view's rows)."""
    text_part: Pair | None = None
    """What the items' text adds to each row's vector and bias
    (:meth:`~freshrec.model.sequence.SequenceNet.text_part`), kept for the deltas that
    follow: on a million items, recomputing it took 43% of a delta's build (its rows' text
    gathered, 384 numbers each, and projected), for 260 MB kept."""
    tower: tuple[torch.Tensor, ...] = ()
    """The item tower's tensors that made :attr:`text_part` (:func:`tower_of`): the
    snapshot's own, or an earlier one's that serving kept (:func:`build_scoring`)."""
    written: torch.Tensor | None = None
    """The rows of the item table its build computed anew, where it started from the scoring
    before's table or one brought level with it (a delta's): every row in which the two may
    differ (:func:`moved`). ``None``: the table was built whole."""
    grown_from: tuple[weakref.ref[Scoring], ...] = ()
    """The earlier scorings whose item tables are the first rows of this one's, in the same
    memory (extended into spare rows, :class:`~freshrec.model.rows.Room`): the table is
    written over (:class:`~freshrec.serve.spare.Behind`) only once they are gone too."""

    @property
    def version(self) -> str | None:
        return self.snapshot.version if self.snapshot is not None else None

    def rows(self) -> npt.NDArray[np.float32]:
        """The items' vectors that similarity compares: the model's when there is one, else
        the text embeddings."""
        return self.vectors.numpy() if self.vectors is not None else self.view.text

    def unit(self, codes: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The rows ``codes`` of :meth:`rows` at unit length."""
        at = np.asarray(codes, dtype=np.int64)
        return np.asarray(self.rows()[at] / self.norms[at, None], dtype=np.float32)

    def cosines(self, direction: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Every item's cosine with ``direction``, a vector of unit length."""
        return np.asarray((self.rows() @ direction) / self.norms, dtype=np.float32)


def lengths(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Each row's Euclidean length, at least ``1e-12`` (what a zero row divides by), into
    ``out`` if given. By PyTorch, without NumPy's temporary of the squares: a million rows of
    64 numbers took 14 ms against 90 ms."""
    rows = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    norms = torch.linalg.vector_norm(rows, dim=1, out=None if out is None else torch.from_numpy(out))
    return np.asarray(norms.clamp_min_(1e-12).numpy(), dtype=np.float32)


def tower_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The item tower's entries of a snapshot's ``state`` (:data:`~freshrec.model.deltas.ITEM_TOWER`)."""
    return {name: tensor for name, tensor in sorted(state.items()) if name.startswith(ITEM_TOWER)}


def same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two towers are the very same tensors (snapshots share those they did not change)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@torch.no_grad()
def build_scoring(
    snapshot: Snapshot | None,
    view: CatalogView,
    spare: SequenceNet | None = None,
    previous: Scoring | None = None,
    tables: Callable[[], Spare | None] | None = None,
    tower: dict[str, torch.Tensor] | None = None,
    room: Room | None = None,
) -> Scoring:
    """The scoring of ``snapshot`` on ``view``; ``spare``, a network no request uses any
    more, is refilled with the snapshot's tensors if it has the same shapes.

    On a view that starts with the snapshot's items (:meth:`Catalog.align`), the
    snapshot's per-item tensors are used as they are, padded only for the items the
    learner has not taken in yet; on any other view they are moved to its rows by id.

    When ``snapshot`` came as a delta on ``previous``'s snapshot, on the same view,
    only the rows it changed are recomputed in a copy of ``previous``'s item table: on a
    200,000-item catalog a whole table took about a quarter of a second on one thread.
    With ``tables`` (a call that gives the table before ``previous``'s once no request reads it
    any more, or ``None``; made only for such a delta's build, since it may wait) the copy is
    saved too: the rows ``previous`` changed are copied over it from ``previous``'s
    table, and this delta's computed (on a million items, the copies were half a gigabyte per
    delta). Why copy those rows rather than compute them again: copied, the new table differs
    from ``previous``'s in this delta's rows alone, which :func:`moved` then compares; each
    changed row was computed twice, once into each table, and compared twice (on a million
    items under load, deltas of 4,000-25,000 rows, one build 10-85 ms of the processor).

    ``tower`` (:func:`tower_of`, of the same shapes): serve the items with this item tower
    instead of the snapshot's (:class:`~freshrec.serve.ranker.Ranker` keeps a tower for its
    candidate index). Where it is ``previous``'s, on the same view, what it makes of the
    items' text is ``previous``'s too: on a million items, recomputing it is most of a
    whole snapshot's build.

    On a view grown from ``previous``'s (items added, :attr:`CatalogView.lineage`), the added
    rows alone are computed and written into ``room``'s spare rows past ``previous``'s tables
    (:class:`~freshrec.model.rows.Room`; the caller keeps it from build to build), which then
    share their first rows with this scoring's (:attr:`Scoring.grown_from`).

    Why a whole snapshot's table is built whole, even with the tower kept: the served
    snapshot's per-item tables are patched in place by the deltas that arrive after it
    (:func:`~freshrec.model.deltas.apply`), so comparing a whole snapshot with it misses
    the rows of a delta it replaced before that delta's build, and those rows kept their
    older vectors."""
    if snapshot is None or not len(view):
        return Scoring(view, None, None, None, None, lengths(view.text))
    s = snapshot.settings
    text = torch.from_numpy(view.text) if s.use_text else None
    state = dict(snapshot.state)
    if tower is not None:
        state.update(tower)
    served = tuple(tower_of(state).values())
    n = len(snapshot.item_ids)
    aligned = starts_with(view, snapshot.item_ids)
    rows = _changed(snapshot, view, previous, served) if aligned else None
    grown = aligned and rows is None and _grown(view, snapshot, previous, served, text is not None)
    room = room or Room()
    before = previous.net if (rows is not None or grown) and previous is not None else None  # its per-item tables
    tables_before = before.state_dict(keep_vars=True) if before is not None else {}
    for name in ROW_STATE:  # items the learner lacks stay untouched
        learned = state[name]
        if aligned and len(view) > n:
            state[name] = padded(name, learned, len(view), tables_before.get(name), rows, room)
        elif not aligned:
            state[name] = moved_rows(name, learned, snapshot.item_ids, view)
    net = refilled(spare, state, text, s, snapshot.rating_scale)
    if net is None:
        net = SequenceNet.from_state(state, text, s, rating_scale=snapshot.rating_scale)
    net.eval()
    grown_from: tuple[weakref.ref[Scoring], ...] = ()
    kept = None  # what the served tower made of the items' text, on the same view
    if previous is not None and previous.view is view and same(previous.tower, served):
        kept = previous.text_part
    if rows is not None:
        assert previous is not None and previous.vectors is not None and previous.bias is not None
        over = tables() if tables is not None else None  # the table no request reads any more
        if over is not None and len(over.vectors) == len(previous.vectors):
            vectors, bias, norms = over.vectors, over.bias, over.norms
            _level(over, previous, rows)
        else:
            vectors, bias, norms = previous.vectors.clone(), previous.bias.clone(), previous.norms.copy()
        part = previous.text_part
        if len(rows):
            changed, changed_bias = net.item_table(rows, text_part=None if part is None else _rows(part, rows))
            put(vectors, rows, changed)
            put(bias, rows, changed_bias)
            norms[rows.numpy()] = lengths(changed.numpy())
    elif grown:
        assert previous is not None and previous.vectors is not None and previous.bias is not None
        rows = torch.arange(len(previous.vectors), len(view))
        added = net.text_part(rows) if net.use_text else None
        new_vectors, new_bias = net.item_table(rows, text_part=added)
        # into spare rows past previous's, which its requests never read; new tensors, even
        # with no row added (a later build may write over previous's table, see grown_from)
        vectors, bias = room.extended(previous.vectors, new_vectors), room.extended(previous.bias, new_bias)
        norms = room.extended(previous.norms, lengths(new_vectors.numpy()))
        was, part = previous.text_part, None
        if added is not None and was is not None:
            part = room.extended(was[0], added[0]), room.extended(was[1], added[1])
        if vectors.data_ptr() == previous.vectors.data_ptr():
            grown_from = (weakref.ref(previous), *previous.grown_from)
    else:  # into blocks with spare rows, which the first item added after it writes its rows into
        part = (kept if kept is not None else text_part_made(net, room)) if net.use_text else None
        vectors, bias = net.item_table(text_part=part, out=pair_made(net, room, len(view)))
        norms = lengths(vectors.numpy(), out=room.made(len(view), np.empty(0, dtype=np.float32)))
    user_rows = {u: n for n, u in enumerate(snapshot.user_ids) if u is not None}
    return Scoring(view, snapshot, net, vectors, bias, norms, user_rows, aligned, part, served, rows, grown_from)


@torch.no_grad()
def moved(previous: Scoring, current: Scoring) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The rows whose own part of ``[vector, bias]`` differs from ``previous``'s to
    ``current``'s, and how far it moved (Euclidean): the served rows, less what the item
    tower makes of the text where the tower changed (:attr:`Scoring.text_part`). The rows
    looked at are those ``current``'s build computed (:attr:`Scoring.written`), or all after a
    whole build (:data:`MOVED_CHUNK` at a time). Rows are compared by place: where the view
    was laid out anew (:meth:`~freshrec.serve.catalog.Catalog.align`), an index that holds a
    row that moved is gone, and the rows past an index's do not count for it.

    Why a delta's rows are enough: the rest of its table is ``previous``'s, copied where the
    table two builds old lacked it (:class:`~freshrec.serve.spare.Spare`), not computed again
    from the per-item tables that the deltas received meanwhile patched in place; a row such
    a later delta changed moves with that delta's own build, which computes it.

    Why without the tower: rows coded anew keep the tower's part the index was built with
    (:meth:`~freshrec.serve.retrieval.Retrieval._update`), so a newer tower is no move of
    theirs. It moves every row (on the million-item shop, by 0.516 on average in 150 s of
    learning, the rows' mean length 1.260), and an index coded before it found 0.989 of the
    exact top 10 with the lists its calibration chose; the ID rows the learner's sparse
    steps move are what the codes lose (0.462 without them; ``benchmarks/drift.py``)."""
    none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if previous.snapshot is None or current.snapshot is None or previous.vectors is None or previous.bias is None:
        return none
    assert current.vectors is not None and current.bias is not None
    now, before, towers = current.text_part, previous.text_part, same(previous.tower, current.tower)
    if not towers and (now is None or before is None):
        return none  # the model's settings changed: its check measures what is left of the index
    m = min(len(previous.vectors), len(current.vectors))
    written = None if current.written is None else current.written[current.written < m]
    rows, distances = [], []
    for start in range(0, m if written is None else len(written), MOVED_CHUNK):
        end = start + MOVED_CHUNK
        at = torch.arange(start, min(end, m)) if written is None else written[start:end]
        where = slice(start, min(end, m)) if written is None else at  # a slice reads the tables in place
        vector = _take(current.vectors, where)
        step = vector - _take(previous.vectors, where)
        bias_step = _take(current.bias, where) - _take(previous.bias, where)
        if not towers and now is not None and before is not None:
            step -= _take(now[0], where)
            step += _take(before[0], where)
            bias_step -= _take(now[1], where) - _take(before[1], where)
        distance = torch.hypot(torch.linalg.vector_norm(step, dim=1), bias_step)
        # what the subtraction of the text's parts leaves of an unmoved row: rounding
        far = distance > 1e-5 * torch.linalg.vector_norm(vector, dim=1)
        rows.append(at[far])
        distances.append(distance[far])
    if not rows:
        return none
    return torch.cat(rows).numpy().astype(np.int64), torch.cat(distances).numpy().astype(np.float32)


def _rows(part: Pair, rows: torch.Tensor) -> Pair:
    return take(part[0], rows), take(part[1], rows)


def _take(table: torch.Tensor, where: torch.Tensor | slice) -> torch.Tensor:
    return table[where] if isinstance(where, slice) else take(table, where)


def _level(spare: Spare, previous: Scoring, rows: torch.Tensor) -> None:
    """Bring ``spare`` level with ``previous``'s table, but for ``rows`` (which the build
    computes anew): copy the rows ``previous``'s build changed, which ``spare`` lacks."""
    assert previous.vectors is not None and previous.bias is not None
    behind = spare.stale[~torch.isin(spare.stale, rows, assume_unique=True)]  # both ascend, unique
    if len(behind):
        put(spare.vectors, behind, take(previous.vectors, behind))
        put(spare.bias, behind, take(previous.bias, behind))
        at = behind.numpy()
        spare.norms[at] = previous.norms[at]


def _changed(
    snapshot: Snapshot, view: CatalogView, previous: Scoring | None, tower: tuple[torch.Tensor, ...]
) -> torch.Tensor | None:
    """The rows in which ``snapshot``'s item table differs from ``previous``'s, where it is a
    delta on ``previous``'s snapshot with the same view and item tower (``None``: build it
    whole). Items the delta adds are the view's already (the caller checks that it starts with
    the snapshot's): ``previous``'s table has their rows, and the delta changes them all
    (:func:`~freshrec.model.deltas.apply`). Why: on a million items a whole build takes
    seconds of a core, and the learner takes a catalog's new items in every few minutes."""
    if previous is None or previous.snapshot is None or previous.vectors is None or previous.view is not view:
        return None
    if not same(previous.tower, tower) or snapshot.changed is None:
        return None
    return snapshot.changed if snapshot.parent == previous.snapshot.serial else None


def _grown(
    view: CatalogView, snapshot: Snapshot, previous: Scoring | None, tower: tuple[torch.Tensor, ...], text: bool
) -> bool:
    """Whether ``view`` is ``previous``'s with rows added (:attr:`CatalogView.lineage`), with its snapshot and item
    tower: its table holds all but the added rows (else one is built whole). Why: a shop adds items all day, and
    on a million items a whole table per write took 2-3 s of a core (``benchmarks/catalog_change.py``)."""
    if previous is None or previous.snapshot is not snapshot or previous.vectors is None or not previous.aligned:
        return False
    grown = view.lineage is previous.view.lineage and len(view) >= len(previous.view)
    return grown and same(previous.tower, tower) and (not text or previous.text_part is not None)


def top(scores: npt.NDArray[np.floating], allowed: npt.NDArray[np.bool_], k: int) -> list[int]:
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


def history_tensors(
    sc: Scoring, rows: Sequence[tuple[Sequence[Event], float, int]], length: int, wide: bool = False
) -> HistoryTensors:
    """Right-aligned, left-padded tensors of several ``(history, now, user row)`` rows
    (oldest event first), as wide as the longest history (the encoder reads a shorter
    history in fewer steps) or, ``wide``, ``length`` (:mod:`~freshrec.serve.traced`)."""
    length = length if wide else max(1, min(length, max(len(h) for h, _, _ in rows)))
    codes = sc.view.codes
    pasts = [
        [
            (codes[e.item_id], TYPE_CODES[e.type], np.nan if e.value is None else e.value, e.timestamp)
            for e in h[-length:]
        ]
        for h, _, _ in rows
    ]
    hist, htype, hvalue, htime = left_padded(pasts, length)
    now = [max(at, h[-1].timestamp) if h else at for h, at, _ in rows]
    return {
        "hist_item": torch.from_numpy(hist).long(),
        "hist_type": torch.from_numpy(htype).long(),
        "hist_value": torch.from_numpy(hvalue),
        "hist_time": torch.from_numpy(htime),
        "time": torch.tensor(now, dtype=torch.float64),
        "user": torch.tensor([u for _, _, u in rows], dtype=torch.long),
    }


@torch.inference_mode()
def user_vectors(sc: Scoring, histories: Sequence[Sequence[Event]], now: float) -> npt.NDArray[np.float32] | None:
    """The model's vectors for these histories (oldest event first) at time ``now``, as
    requests with them would get (the known items' last ``history_length`` events, each
    user's row); ``None`` without a model or a history of known items."""
    if sc.net is None or sc.vectors is None or sc.snapshot is None:
        return None
    length = sc.snapshot.settings.history_length
    rows = []
    for history in histories:
        if known := [e for e in history if e.item_id in sc.view.codes][-length:]:
            rows.append((known, now, sc.user_rows.get(known[-1].user_id, -1)))
    if not rows:
        return None
    return sc.net.users(sc.vectors, **history_tensors(sc, rows, length)).numpy()
