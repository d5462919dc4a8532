"""Model snapshots as deltas: the rows that changed since the last one.

Why: a snapshot holds a row per item in several tables, and an online
micro-batch changes a few hundred of them. On a 200,000-item shop a whole
snapshot held 55 MB of item tables to copy, serialise, check and turn into vectors
several times a second; the learner and the request handlers share two cores.
A delta carries every tensor but the per-item ones in full, and of those only
the changed rows (and the items added since).

The item tower (the adapter and the text bias, which map each item's text to
its vector) is left out of deltas: changing it moves every row of the item
table, which is what a delta saves serving from recomputing. Serving keeps the
item tower of the last whole snapshot, which the learner sends at least every
``[serve] snapshot_full_s``, so it lags the learner's by at most that long
(a few hundred Adam steps at a small learning rate after the warm start).

A delta applies only to the snapshot it names (``parent``); one that names
another is skipped and the next whole snapshot puts serving back on track.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from freshrec import serialization
from freshrec.model.blend import check_part, raw_part
from freshrec.model.rows import Room, put, take
from freshrec.model.sequence import SequenceNet, untouched
from freshrec.model.snapshot import CHECKED_IDS, Snapshot, check_tensor, expected_state

ROW_STATE = ("item_id.weight", "item_bias.weight", "active", "interactions", "last_seen")
"""Per-item entries of the network's state."""
ITEM_TOWER = ("adapter.", "text_bias.")
"""Prefixes of the dense parameters that every item's vector depends on."""
KIND = "delta"


@dataclass(frozen=True)
class SnapshotDelta:
    parent: int
    """The serial of the snapshot this applies to."""
    checkpoint: int
    updates: int
    offset: int
    new_item_ids: list[str]
    """Items appended since the parent, in row order."""
    user_ids: list[str | None]
    rows: Tensor
    """Item rows whose per-item entries this carries, ascending (the new items' among them)."""
    state: dict[str, Tensor]
    """Every entry but the item tower's; the per-item ones for ``rows`` only."""
    loss: float | None = None
    created: float = field(default_factory=time.time)
    serial: int = field(default_factory=lambda: secrets.randbits(62))
    blend: dict[str, Any] | None = None
    """The blend's weights, what its counts took in since the parent and, now and then,
    the counts themselves (see :attr:`Snapshot.blend`)."""

    def to_bytes(self, key: bytes | None = None) -> bytes:
        return serialization.dumps({**self.__dict__, "blend": raw_part(self.blend), "kind": KIND}, key)


def delta_since(current: Snapshot, previous: Snapshot) -> SnapshotDelta | None:
    """``current`` as a delta on ``previous``; ``None`` where one cannot say it (other
    settings, an item list that does not extend the previous one)."""
    n0 = len(previous.item_ids)
    if (
        current.settings != previous.settings
        or current.rating_scale != previous.rating_scale
        or len(current.item_ids) < n0
        or current.item_ids[:n0] != previous.item_ids
        or set(current.state) != set(previous.state)
    ):
        return None
    rows = changed_rows(current, previous)
    state = {
        name: take(tensor, rows) if name in ROW_STATE else tensor
        for name, tensor in current.state.items()
        if not name.startswith(ITEM_TOWER)
    }
    return SnapshotDelta(
        parent=previous.serial,
        checkpoint=current.checkpoint,
        updates=current.updates,
        offset=current.offset,
        new_item_ids=current.item_ids[n0:],
        user_ids=list(current.user_ids),
        rows=rows,
        state=state,
        loss=current.loss,
        created=current.created,
        serial=current.serial,
        blend=current.blend,
    )


def changed_rows(current: Snapshot, previous: Snapshot) -> Tensor:
    """The item rows of ``current`` whose per-item state differs from ``previous``'s, and
    those ``previous`` lacks, ascending (the rows of both follow ``current``'s item list)."""
    n0 = min(len(previous.item_ids), len(current.item_ids))
    changed = torch.zeros(len(current.item_ids), dtype=torch.bool)
    changed[n0:] = True
    for name in ROW_STATE:
        if name in current.state and name in previous.state:
            new, old = current.state[name][:n0], previous.state[name][:n0]
            changed[:n0] |= (new != old).reshape(n0, -1).any(1)
    return torch.nonzero(changed).squeeze(1)


class ChangedRows:
    """The item rows a learner changed since it last took them (the trainer's steps, new
    items' seeds, activity), or that it cannot say (a dense step or a restore moves any).

    Why: a micro-batch changes a few hundred rows of a large catalog, and a delta built
    from those costs that much; finding them by copying and comparing every row took
    half a second per snapshot on a million items, ten times the step itself.

    It also keeps the rows changed since a :meth:`mark` (the trainer marks where it keeps
    a state to go back to): going back to that state (:meth:`back_to_mark`, a reverted
    loss spike) changes exactly those rows again. Why: counted as any row, every revert
    made the next snapshot whole; on a million items under load the learner reverted 24
    spikes in five minutes and ten whole snapshots reached the server (one per
    ``snapshot_full_s`` at the most otherwise), each a second or two of a core to parse and
    three to five to build, and requests stalled behind them (up to 849 ms)."""

    def __init__(self) -> None:
        self._parts: list[Tensor] = []
        self._everything = True  # nothing taken yet: the first snapshot goes whole
        self._marked: list[Tensor] | None = None
        """The rows added since the mark; ``None``: no mark, or any row since."""

    def add(self, rows: Tensor) -> None:
        if not len(rows) or (self._everything and self._marked is None):
            return
        rows = rows.detach().reshape(-1).to(torch.int64).clone()
        if not self._everything:
            self._parts.append(rows)
        if self._marked is not None:
            self._marked.append(rows)

    def everything(self) -> None:
        self._everything, self._parts, self._marked = True, [], None

    def mark(self) -> None:
        """Keep the rows changed from now on, until the next mark."""
        self._marked = []

    def unmark(self) -> None:
        """The state of the mark is gone (nothing goes back to it)."""
        self._marked = None

    def back_to_mark(self) -> None:
        """The rows went back to what they were at the mark: those changed since change
        again (any row, without a mark). The mark stays, with no row changed since."""
        marked = self._marked
        if marked is None:
            self.everything()
            return
        if marked and not self._everything:
            self._parts.extend(marked)
        self._marked = []

    def take(self) -> Tensor | None:
        """The rows changed since the last call, ascending, or ``None`` when any may have."""
        everything, parts = self._everything, self._parts
        self._everything, self._parts = False, []
        if everything:
            return None
        return torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.int64)


def delta_of(net: SequenceNet, parent: tuple[int, int], changed: Tensor, **info: Any) -> SnapshotDelta:
    """The learner's network as a delta on the snapshot ``parent`` names (its serial and its
    number of items), ``changed`` being the rows changed since (:class:`ChangedRows`);
    ``info``: ``item_ids``, ``user_ids`` and the fields both kinds share."""
    serial, n0 = parent
    item_ids, user_ids = info.pop("item_ids"), info.pop("user_ids")
    rows = torch.unique(torch.cat([changed, torch.arange(n0, len(item_ids))]))
    state = {
        name: take(tensor, rows) if name in ROW_STATE else tensor.detach().clone()
        for name, tensor in net.state_dict().items()
        if name != "text" and not name.startswith(ITEM_TOWER)
    }
    users = list(user_ids) if net.user_id is not None else []
    return SnapshotDelta(parent=serial, new_item_ids=item_ids[n0:], user_ids=users, rows=rows, state=state, **info)


def merge(first: Snapshot | SnapshotDelta, second: SnapshotDelta) -> Snapshot | SnapshotDelta:
    """``first`` followed by ``second`` (which names it) as one: a snapshot waiting to be sent
    that a newer delta on it replaces. The blend's increments are the caller's to join."""
    if isinstance(first, Snapshot):
        return apply(first, second)
    rows = torch.unique(torch.cat([first.rows, second.rows]))
    state = dict(second.state)
    for name in ROW_STATE:
        if name in state:
            table = first.state[name].new_empty((len(rows), *first.state[name].shape[1:]))
            table[torch.searchsorted(rows, first.rows)] = first.state[name]
            table[torch.searchsorted(rows, second.rows)] = second.state[name]  # the newer wins
            state[name] = table
    new_item_ids = [*first.new_item_ids, *second.new_item_ids]
    return dataclasses.replace(second, parent=first.parent, new_item_ids=new_item_ids, rows=rows, state=state)


def apply(base: Snapshot, delta: SnapshotDelta, in_place: bool = False, room: Room | None = None) -> Snapshot:
    """The whole snapshot ``delta`` describes, on ``base`` (which it must name); its
    tensors checked against ``base``'s settings first. ``base`` is left as it was, unless
    ``in_place``: then its per-item tables are patched and become the new snapshot's,
    extended into ``room``'s spare rows where the delta adds items (copied without a room).
    Why: a copy of a million items' tables per delta was a quarter of a gigabyte, several
    times a second, on the cores requests need; serving reads them only to rebuild its item
    table's changed rows (requests read that table), so nothing needs them as they were.
    A delta that adds items comes each time the learner takes in a catalog's new items: its
    copies were the longest wait of serving behind the learner (``publish_lag.py --added``)."""
    bad = serialization.Malformed
    if delta.parent != base.serial:
        raise bad("the delta applies to another snapshot")
    # the parent's list itself where no item is new: serving then knows its rows as they
    # are (:func:`freshrec.serve.catalog.starts_with`) without comparing a million ids
    item_ids = [*base.item_ids, *delta.new_item_ids] if delta.new_item_ids else base.item_ids
    n, n0 = len(item_ids), len(base.item_ids)
    if delta.new_item_ids and CHECKED_IDS.problem(item_ids) is not None:  # the base's ids were checked
        raise bad("the delta's new item ids repeat an id")
    rows = delta.rows
    if rows.dtype != torch.int64 or rows.dim() != 1:
        raise bad("the delta's rows must be a 1-D int64 tensor")
    if len(rows) and (int(rows[0]) < 0 or int(rows[-1]) >= n or not bool((rows[1:] > rows[:-1]).all())):
        raise bad("the delta's rows must ascend within the item table")
    if n > n0 and (len(rows) < n - n0 or not torch.equal(rows[len(rows) - (n - n0) :], torch.arange(n0, n))):
        raise bad("the delta must carry every new item's rows")
    _check_tensors(base, delta, n)
    if delta.blend is not None:
        try:
            check_part(delta.blend, base.settings)
        except ValueError as exc:
            raise bad(f"delta {exc}") from exc
    state = dict(base.state)  # the item tower stays the base's
    for name, tensor in delta.state.items():
        if name in ROW_STATE:
            table = base.state[name]
            if n > n0 and in_place and room is not None:
                table = room.extended(table, untouched(name, table, n - n0))
            elif n > n0:
                table = torch.cat([table, untouched(name, table, n - n0)])
            elif not in_place:
                table = table.clone()
            put(table, rows, tensor)
            state[name] = table
        else:
            state[name] = tensor
    return Snapshot(
        checkpoint=delta.checkpoint,
        updates=delta.updates,
        offset=delta.offset,
        item_ids=item_ids,
        user_ids=delta.user_ids,
        state=state,
        settings=base.settings,
        rating_scale=base.rating_scale,
        loss=delta.loss,
        created=delta.created,
        serial=delta.serial,
        parent=base.serial,
        changed=rows,
        blend=delta.blend,
    )


def _check_tensors(base: Snapshot, delta: SnapshotDelta, n: int) -> None:
    bad = serialization.Malformed
    n_users = len(delta.user_ids) if "user_id.weight" in base.state else 0
    expected = expected_state(base.state, n, n_users, base.settings)
    wanted = {name for name in base.state if not name.startswith(ITEM_TOWER)}
    if set(delta.state) != wanted:
        raise bad(f"the delta's tensors are {sorted(delta.state)}, expected {sorted(wanted)}")
    for name, tensor in delta.state.items():
        want = expected[name]
        shape = (len(delta.rows), *want.shape[1:]) if name in ROW_STATE else tuple(want.shape)
        check_tensor("delta", name, tensor, shape, want.dtype)


def read(
    data: bytes | memoryview,
    key: bytes | None = None,
    max_bytes: int = serialization.MAX_BYTES,
    reuse: serialization.StringLists | None = None,
) -> Snapshot | SnapshotDelta:
    """A whole snapshot or a delta from its bytes; the delta's tensors are checked when
    it is applied (:func:`apply`), against the snapshot it names. ``reuse``: the item ids
    of the snapshots read before, handed back where they are the same
    (:class:`~freshrec.serialization.StringLists`)."""
    raw = serialization.loads(data, key, max_bytes, reuse)
    if isinstance(raw, dict) and raw.get("kind") == KIND:
        return _delta(raw)
    return Snapshot.from_raw(raw)


def _delta(raw: dict[str, Any]) -> SnapshotDelta:
    bad = serialization.Malformed
    fields = set(SnapshotDelta.__dataclass_fields__)
    raw = {"blend": None, **{k: v for k, v in raw.items() if k != "kind"}}
    if set(raw) != fields:
        raise bad("not a model snapshot delta: unexpected fields")
    for name in ("parent", "checkpoint", "updates", "offset", "serial"):
        if not isinstance(raw[name], int) or raw[name] < 0:
            raise bad(f"delta {name} must be a non-negative integer")
    if not (raw["loss"] is None or isinstance(raw["loss"], (int, float))) or not isinstance(
        raw["created"], (int, float)
    ):
        raise bad("delta loss and created must be numbers")
    for name, kinds in (("new_item_ids", (str,)), ("user_ids", (str, type(None)))):
        if not isinstance(raw[name], list) or not all(isinstance(x, kinds) for x in raw[name]):
            raise bad(f"delta {name} must be a list of ids")
    if not isinstance(raw["rows"], Tensor):
        raise bad("delta rows must be a tensor")
    state = raw["state"]
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise bad("delta state must map names to tensors")
    return SnapshotDelta(**raw)
