"""The network serving builds an item table with: a snapshot's state on a catalog view.

A snapshot numbers items as the learner does; serving's view may hold more items (those the
learner has not taken in yet) or, before :meth:`~freshrec.serve.catalog.Catalog.align`, other
rows. These make the snapshot's per-item tables fit the view, and a network of them.
"""

from __future__ import annotations

import torch
from torch import nn

from freshrec.model.deltas import ROW_STATE
from freshrec.model.rows import Room, put, take
from freshrec.model.sequence import SequenceNet, untouched
from freshrec.serve.catalog import CatalogView
from freshrec.settings import ModelSettings


def padded(
    name: str, learned: torch.Tensor, size: int, before: torch.Tensor | None, rows: torch.Tensor | None, room: Room
) -> torch.Tensor:
    """``learned`` with untouched rows up to ``size`` (the view's items the learner lacks):
    ``before`` (the previous scoring's) with the ``rows`` this delta changed copied in, or,
    on a view grown from the previous one (``rows`` is ``None``), with untouched rows added.
    Why: else each delta's build padded a copy of every per-item table; on a million items,
    with one item the model lacked, a build took 383 ms instead of 16 (``publish_lag.py
    --added 1``), and each item a shop added copied them all. The networks share these tables
    as they share a snapshot's (the deltas patch those in place): they only make item rows in
    a build, and requests read the built item table."""
    fits = before is not None and before.shape[1:] == learned.shape[1:] and before.dtype == learned.dtype
    if before is not None and fits and rows is not None and len(before) == size:
        table, at = before.detach(), rows[rows < len(learned)]
        put(table, at, take(learned, at))
        return table
    if before is not None and fits and rows is None and len(learned) <= len(before) <= size:
        return room.extended(before.detach(), untouched(name, learned, size - len(before)))
    return room.extended(learned, untouched(name, learned, size - len(learned)))  # a copy, with spare rows


def moved_rows(name: str, learned: torch.Tensor, item_ids: list[str], view: CatalogView) -> torch.Tensor:
    """``learned``'s rows (in the order of ``item_ids``) at the view's rows of those ids."""
    pairs = [(k, row) for k, row in enumerate(view.codes.rows_of(item_ids)) if row >= 0]
    values = untouched(name, learned, len(view))
    if pairs:
        model_rows, view_rows = map(list, zip(*pairs, strict=True))
        values[torch.tensor(view_rows)] = learned[torch.tensor(model_rows)]
    return values


def refilled(
    net: SequenceNet | None, state: dict[str, torch.Tensor], text: torch.Tensor | None, s: ModelSettings, scale: float
) -> SequenceNet | None:
    """``net`` made of ``state``'s tensors, or ``None`` if it has other shapes; the number of
    items may differ (the per-item tables are swapped in whole). Half a millisecond, against
    4 to 75 ms for building a network (Python work that holds the interpreter lock while
    requests wait; the more the process's other threads want it, the longer)."""
    if net is None or net.settings != s or net.rating_scale != scale:
        return None
    current = net.state_dict(keep_vars=True)
    if any(name not in current or not _fits(name, current[name], value) for name, value in state.items()):
        return None
    if text is not None and (not net.use_text or net.text.shape[1:] != text.shape[1:]):
        return None
    for name in ROW_STATE:  # load_state_dict takes tensors of the current shapes alone
        if name in state and current[name].shape != state[name].shape:
            path, _, leaf = name.rpartition(".")
            module = net.get_submodule(path)
            value, was = state[name], current[name]
            setattr(module, leaf, nn.Parameter(value, was.requires_grad) if isinstance(was, nn.Parameter) else value)
    for table in (net.item_id, net.item_bias):
        table.num_embeddings = len(table.weight)
    net.load_state_dict(state, strict=False, assign=True)
    if text is not None:
        net.text = text.float()
    return net


def _fits(name: str, now: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether ``value`` may replace ``now``: the same shape, or a per-item table's rows of it."""
    return now.shape == value.shape or (name in ROW_STATE and now.shape[1:] == value.shape[1:])


def text_part_made(net: SequenceNet, room: Room) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`SequenceNet.text_part` of every item, written into tables made in ``room``
    (:meth:`Room.made`), with the same numbers: the adapter's last layer and the text bias
    as the ``addmm`` that :func:`torch.nn.functional.linear` makes of them, into those tables.
    Why: a whole model's was new memory, and the first item added after it copied it whole
    into a block with spare rows (a quarter of a gigabyte on a million items, about 70 ms)."""
    last, hidden = net.adapter, net.text
    if isinstance(last, nn.Sequential):
        hidden, last = last[:-1](hidden), last[-1]
    assert isinstance(last, nn.Linear) and last.bias is not None and net.text_bias.bias is not None
    vectors, bias = pair_made(net, room, len(net.text))
    torch.addmm(last.bias, hidden, last.weight.t(), out=vectors)
    torch.addmm(net.text_bias.bias, net.text, net.text_bias.weight.t(), out=bias.unsqueeze(1))
    return vectors, bias


def pair_made(net: SequenceNet, room: Room, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unset vectors ``(n, d)`` and biases ``(n,)`` made in ``room`` (:meth:`Room.made`),
    shaped as ``net``'s ID table and its bias table's column: an item table to write into."""
    return room.made(n, net.item_id.weight), room.made(n, net.item_bias.weight[:, 0])
