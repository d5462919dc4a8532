"""The user encoder's pass for requests as one TorchScript graph (``torch.jit.trace``),
traced once per network shape and bound to the tensors of the network that serves.

Why: eager, a pass is about a hundred small tensor operations, each a Python call that
gives up the interpreter lock and takes it back: 0.85-0.94 ms for one user on the
reference machine (a 64-dimension, one-layer encoder over 20 events), nearly all of it
that overhead, and each take-back waits for whatever other thread holds the lock. The
traced graph runs the same operations in C++ in 0.31-0.34 ms, with the lock given up
once for the whole pass, and its outputs are the eager ones (compared in the tests).

Why a graph per shape, bound to a network at each call: a published snapshot's tensors
replace a network's (``load_state_dict(assign=True)``), and its item and user tables
grow; tracing takes 45-60 ms of Python (the interpreter lock) and 50-65 ms more for the
graph's first two runs, which the executor profiles and optimises. So the graph of a
shape is traced once (on the publisher's thread, :func:`prepare`), and bound anew, a few
hundred microseconds, at the first request of each scoring served (a few a second at
most).

Histories are padded to the network's full history length for the graph: the width of
its inputs is traced into it. Padded positions change nothing (the encoder masks them);
the few extra positions cost less than the overhead saved.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from freshrec.model.histories import HistoryTensors
from freshrec.model.sequence import SequenceNet
from freshrec.serve.scoring import Scoring

log = logging.getLogger(__name__)


class _Users(nn.Module):
    """The module traced: its ``forward`` is the network's :meth:`~SequenceNet.users`."""

    def __init__(self, net: SequenceNet):
        super().__init__()
        self.net = net

    def forward(
        self, table: Tensor, item: Tensor, kind: Tensor, value: Tensor, at: Tensor, now: Tensor, user: Tensor
    ) -> Tensor:
        out: Tensor = self.net.users(table, item, kind, value, at, now, user)
        return out


class _Graph:
    """One shape's traced pass, the scoring whose network it is bound to, and the lock
    that keeps a call and a re-binding apart."""

    def __init__(self, net: SequenceNet, table: Tensor):
        self.lock = threading.Lock()
        length = net.settings.history_length
        grouped, net.grouped = net.grouped, False  # the graph is one pass over every row
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on the constants it keeps
                example = (table, *_example(length))
                self.graph: Any = torch.jit.trace(_Users(net), example, check_trace=False)  # type: ignore[no-untyped-call]
                for rows in (1, 2):  # the executor's profiling and optimising runs
                    self.graph(table, *_example(length, rows))
        finally:
            net.grouped = grouped
        self.targets = [
            (self.graph.get_submodule(f"net.{path}") if path else self.graph.net, leaf)
            for path, _, leaf in (name.rpartition(".") for name, _ in _tensors(net))
        ]
        self.scoring: weakref.ref[Scoring] | None = None

    def bind(self, sc: Scoring) -> None:
        """Take the tensors of ``sc``'s network (another network of the shape, or the same
        one refilled for a newer snapshot: a scoring's network keeps its tensors while the
        scoring lives)."""
        if self.scoring is not None and self.scoring() is sc:
            return
        assert sc.net is not None
        for (module, leaf), (_, tensor) in zip(self.targets, _tensors(sc.net), strict=True):
            setattr(module, leaf, tensor)
        self.scoring = weakref.ref(sc)


_graphs: dict[tuple[Any, ...], _Graph | None] = {}
"""Each shape's graph (``None``: it could not be traced)."""
_keys: weakref.WeakKeyDictionary[SequenceNet, tuple[Any, ...]] = weakref.WeakKeyDictionary()
"""Each network's shape (refilled networks keep theirs: :func:`~freshrec.serve.scoring.build_scoring`)."""
_tracing = threading.Lock()


def _tensors(net: SequenceNet) -> list[tuple[str, Tensor]]:
    return [*net.named_parameters(), *net.named_buffers()]


def _key(net: SequenceNet) -> tuple[Any, ...]:
    """What the traced graph takes as constants: the settings, the rating scale, whether
    the user table is empty, the tensors' names, numbers of dimensions and types."""
    key = _keys.get(net)
    if key is None:
        users = 0 if net.user_id is None else min(1, net.user_id.weight.shape[0])
        shapes = tuple((name, t.dim(), t.dtype) for name, t in _tensors(net))
        key = _keys[net] = (type(net), net.settings.model_dump_json(), net.rating_scale, users, shapes)
    return key


def _example(length: int, rows: int = 1) -> list[Tensor]:
    """A batch of ``rows`` histories of ``length`` positions, the last few filled (item 0)."""
    item = torch.full((rows, length), -1, dtype=torch.long)
    item[:, -min(3, length) :] = 0
    kind = torch.where(item >= 0, 0, -1)
    value = torch.full((rows, length), float("nan"))
    at = torch.where(item >= 0, torch.arange(length, dtype=torch.float64), float("nan"))
    return [item, kind, value, at, torch.full((rows,), float(length), dtype=torch.float64), torch.full((rows,), -1)]


def prepare(sc: Scoring) -> _Graph | None:
    """The graph of the shape of ``sc``'s network, traced if there is none yet (the
    publisher's thread calls this with each scoring it serves, so that no request waits for
    a trace); ``None`` without a network or where tracing failed."""
    if sc.net is None or sc.vectors is None or not len(sc.vectors):
        return None
    key = _key(sc.net)
    if key not in _graphs:
        with _tracing, torch.inference_mode():
            if key not in _graphs:
                try:
                    _graphs[key] = _Graph(sc.net, sc.vectors)
                except Exception as exc:  # serve with the eager pass, as before
                    log.warning("the user encoder could not be traced (%s); requests use its eager pass", exc)
                    _graphs[key] = None
    return _graphs[key]


def users(sc: Scoring, t: HistoryTensors) -> Tensor:
    """User vectors of ``t`` by ``sc``'s network: by its shape's traced graph where there
    is one and ``t`` is as wide as the network's history length, else by the network (a
    network built outside a publisher, a script's ranker, is traced at its first pass)."""
    net, table = sc.net, sc.vectors
    assert net is not None and table is not None
    graph = prepare(sc)
    if graph is None or t["hist_item"].shape[1] != net.settings.history_length:
        return net.users(table, **t)
    with graph.lock:
        graph.bind(sc)
        out: Tensor = graph.graph(
            table, t["hist_item"], t["hist_type"], t["hist_value"], t["hist_time"], t["time"], t["user"]
        )
    return out
