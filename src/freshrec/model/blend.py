"""An online log-linear blend of the network with counting signals.

Why: on a log it was not tuned on, the network alone tied the best counting
baseline (popularity on a sparse games log, transitions on a small shop's
first days). Each of them knows something the others miss: the network
reads text and taste, transitions catch a new item's first followers within
a few events, decayed popularity catches a hit. Instead of choosing one per
data set, the blend scores ``sum_f w[c, f] * feature_f(user, item)`` and
learns the weights ``w`` online, from the outcome of every scored event
(softmax cross-entropy of the item the user actually chose, items they had
already touched left out, as the ranking leaves them out), with Adagrad. The
weights depend on a context ``c``: the length of the user's history, because
what predicts a newcomer's next choice (popularity) is not what predicts a
regular's (their own sequence), plus the time since their previous event
(in a session or back after weeks).

It is a product of experts (Hinton 2002) whose weights are learned as in
online learning to rank; with one feature at weight 1 and the rest at 0 it
is that feature alone, which is where it starts: the network.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from freshrec.model.base import Interactions
from freshrec.model.counted import Counted
from freshrec.model.signals import CountSignals
from freshrec.settings import BlendSettings, ModelSettings

HISTORY_EDGES = (1, 2, 5, 10, 20)
"""Context buckets by the number of events in the user's (truncated) history:
0, 1, 2-4, 5-9, 10-19, 20 and more."""


@dataclass(frozen=True)
class Features:
    """What the blend weighs for a batch of queries: the network's scores
    ``(B, n)``, per-query signals ``(B, Q, n)``, per-item signals ``(n, S)``
    (the same for every query, so never repeated per row) and each query's
    contexts ``(B, 2)`` (rows of the gate's weights, see :meth:`Gate.context`)."""

    network: Tensor
    per_query: Tensor
    per_item: Tensor
    context: Tensor


LEARNED_NEAREST = "learned-nearest"
"""The blend's one feature from the network's own item vectors: nearest in the
network's item space (IDs and text as learned so far), as text-nearest is in the
frozen text space."""


def feature_names(signals: CountSignals) -> list[str]:
    """The blend's features, in the order of its weights' columns."""
    q, names = signals.n_per_query, signals.names
    return ["network", *names[:q], LEARNED_NEAREST, *names[q:]]


def new_signals(n_items: int, settings: ModelSettings, text: np.ndarray | None) -> CountSignals:
    """The count signals the blend of ``settings`` reads (text features only with text)."""
    b = settings.blend
    return CountSignals(n_items, b.window, b.half_lives, text if settings.use_text else None, b.time_half_lives)


def raw_part(part: dict[str, Any] | None) -> dict[str, Any] | None:
    """``part`` as :mod:`freshrec.serialization` writes it (increments as dicts)."""
    if part is None:
        return None
    return {**part, "counted": [c.to_raw() if isinstance(c, Counted) else c for c in part["counted"]]}


def check_part(part: object, settings: ModelSettings) -> None:
    """:class:`ValueError` unless ``part`` is what a learner sends serving of its blend
    (see :meth:`freshrec.model.freshrec.FreshRec.blend_part`): the weights, what was
    counted since the last snapshot and, in a whole one, the counts themselves."""
    if not isinstance(part, dict) or set(part) != {"weight", "counted", "signals"}:
        raise ValueError("blend: unexpected fields")
    if not settings.blend.enabled:
        raise ValueError("blend sent for settings without one")
    probe = new_signals(0, settings, np.zeros((0, 1), np.float32))
    weight = part["weight"]
    shape = (sum(N_CONTEXTS), len(feature_names(probe)))
    if not isinstance(weight, Tensor) or tuple(weight.shape) != shape or weight.dtype != torch.float32:
        raise ValueError(f"blend weight must be a float32 tensor of shape {shape}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("blend weight holds values that are not finite")
    counted = part["counted"]
    if not isinstance(counted, list):
        raise ValueError("blend counted must be a list")
    width = max(settings.blend.window, 3)
    part["counted"] = [c if isinstance(c, Counted) else Counted.from_raw(c, width) for c in counted]
    seqs = [c.seq for c in part["counted"]]
    if any(b != a + 1 for a, b in itertools.pairwise(seqs)):
        raise ValueError("blend counted increments out of order")
    if part["signals"] is not None:
        probe.check(part["signals"])


GAP_EDGES = (60.0, 3_600.0, 86_400.0, 7 * 86_400.0)
"""Second context: seconds since the user's previous event (under a minute, an hour, a
day, a week, longer; and no previous event). A user in the middle of a session follows
their last items; one back after a month less so."""
N_CONTEXTS = (len(HISTORY_EDGES) + 1, len(GAP_EDGES) + 2)


class Gate:
    """The blend's weights: a row per history length plus a row per time since the
    previous event, added (so each context learns from every event), by Adagrad."""

    def __init__(self, names: list[str], n_per_query: int, settings: BlendSettings):
        self.names = names
        self.n_per_query = n_per_query
        self.settings = settings
        self.weight = torch.zeros(sum(N_CONTEXTS), len(names), requires_grad=True)
        with torch.no_grad():  # the network alone
            self.weight[: N_CONTEXTS[0], 0] = 0.0 if names[0] in settings.exclude else 1.0
        # eps: a feature constant over the catalog (transitions for an empty history)
        # has a gradient of rounding noise, which Adagrad must not blow up into full steps
        self.optimizer = torch.optim.Adagrad([self.weight], lr=settings.lr, eps=1e-6)
        unknown = set(settings.exclude) - set(names)
        if unknown:
            raise ValueError(f"blend.exclude names unknown features {sorted(unknown)}; the features are {names}")
        self._excluded = torch.tensor([name in settings.exclude for name in names])

    @staticmethod
    def context(batch: Interactions) -> Tensor:
        """``(B, 2)``: each row's weight rows, by history length and by time since the previous event."""
        length = (batch.hist_item >= 0).sum(axis=1)
        by_length = np.searchsorted(HISTORY_EDGES, length, side="right")
        gap = batch.time - batch.hist_time[:, -1]
        by_gap = np.where(np.isnan(gap), len(GAP_EDGES) + 1, np.searchsorted(GAP_EDGES, np.nan_to_num(gap)))
        return torch.from_numpy(np.stack([by_length, N_CONTEXTS[0] + by_gap], axis=1).astype(np.int64))

    def _logits(self, f: Features, rows: slice | None, weight: Tensor) -> Tensor:
        return blended(weight, self.n_per_query, f, rows)

    def combine(self, features: Features) -> Tensor:
        """``(B, n_items)`` blended scores."""
        return self._logits(features, None, self.weight.detach())

    def learn(self, features: Features, target: Tensor, weight: Tensor, seen: Tensor) -> None:
        """Adagrad steps on minibatches of the positive examples; ``seen`` (bool,
        ``(B, n_items)``) marks the items each user touched before, which the
        ranking leaves out and so must the loss."""
        keep = torch.nonzero(weight > 0).squeeze(1)
        if len(keep) < len(weight):  # gathered once, so that minibatches are slices
            features = Features(
                features.network[keep], features.per_query[keep], features.per_item, features.context[keep]
            )
            target, weight, seen = target[keep], weight[keep], seen[keep]
        size = self.settings.minibatch
        for start in range(0, len(weight), size):
            rows = slice(start, start + size)
            logits = self._logits(features, rows, self.weight).masked_fill(seen[rows], float("-inf"))
            loss = (F.cross_entropy(logits, target[rows], reduction="none") * weight[rows]).sum() / weight[rows].sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            assert self.weight.grad is not None
            self.weight.grad[:, self._excluded] = 0
            self.optimizer.step()

    def report(self) -> dict[str, Any]:
        """The learned weights, by context and feature (for reports)."""
        lows = (0, *HISTORY_EDGES)
        labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(lows, HISTORY_EDGES, strict=False)]
        labels = [*labels, f"{HISTORY_EDGES[-1]}+"]
        gaps = ("<1m", "<1h", "<1d", "<1w", ">=1w", "none")
        labels = [*(f"history {x}" for x in labels), *(f"gap {x}" for x in gaps)]
        w = self.weight.detach()
        return {
            label: dict(zip(self.names, map(float, row), strict=True)) for label, row in zip(labels, w, strict=True)
        }

    def state(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])


def blended(weight: Tensor, n_per_query: int, f: Features, rows: slice | None = None) -> Tensor:
    """``(B, n_items)``: the scores of the blend with these weights (rows of contexts by
    features, as :class:`Gate` learns them); also what a server computes with the
    weights it was sent."""
    network, per_query, context = f.network, f.per_query, f.context
    if rows is not None:
        network, per_query, context = network[rows], per_query[rows], context[rows]
    w = weight[context].sum(1)
    q = 1 + n_per_query
    per_item = (weight[:, q:] @ f.per_item.T)[context].sum(1)  # one row per context, then picked
    return torch.baddbmm((per_item + w[:, :1] * network).unsqueeze(1), w[:, None, 1:q], per_query).squeeze(1)


def contributions(weight: Tensor, n_per_query: int, f: Features, row: int, items: Tensor) -> Tensor:
    """``(len(items), n_features)``: what each feature adds to query ``row``'s blended
    score of each of ``items`` (they sum to :func:`blended`'s scores)."""
    w = weight[f.context[row]].sum(0)
    q = 1 + n_per_query
    parts = torch.cat([f.network[row, items, None], f.per_query[row][:, items].T, f.per_item[items]], 1)
    return parts * torch.cat([w[:1], w[1:q], w[q:]])


def seen_mask(batch: Interactions, n_items: int) -> Tensor:
    """``(B, n_items)``: the items in each row's history, the row's own item excepted."""
    mask = torch.zeros(len(batch), n_items, dtype=torch.bool)
    rows, cols = np.nonzero(batch.hist_item >= 0)
    mask[torch.from_numpy(rows), torch.from_numpy(batch.hist_item[rows, cols].astype(np.int64))] = True
    own = batch.item >= 0
    mask[torch.from_numpy(np.flatnonzero(own)), torch.from_numpy(batch.item[own].astype(np.int64))] = False
    return mask
