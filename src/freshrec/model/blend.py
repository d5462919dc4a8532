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
weights depend on a context ``c``, the length of the user's history, because
what predicts a newcomer's next choice (popularity) is not what predicts a
regular's (their own sequence).

It is a product of experts (Hinton 2002) whose weights are learned as in
online learning to rank; with one feature at weight 1 and the rest at 0 it
is that feature alone, which is where it starts: the network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from freshrec.model.base import FloatArray, Interactions
from freshrec.settings import BlendSettings

HISTORY_EDGES = (1, 2, 5, 10, 20)
"""Context buckets by the number of events in the user's (truncated) history:
0, 1, 2-4, 5-9, 10-19, 20 and more."""


class Gate:
    """The blend's weights, one row per context, learned by Adagrad."""

    def __init__(self, names: list[str], settings: BlendSettings):
        self.names = names
        self.settings = settings
        self.weight = torch.zeros(len(HISTORY_EDGES) + 1, len(names), requires_grad=True)
        with torch.no_grad():
            self.weight[:, 0] = 1.0  # the first feature alone: the network
        self.optimizer = torch.optim.Adagrad([self.weight], lr=settings.lr)

    @staticmethod
    def context(batch: Interactions) -> Tensor:
        length = (batch.hist_item >= 0).sum(axis=1)
        return torch.from_numpy(np.searchsorted(HISTORY_EDGES, length, side="right").astype(np.int64))

    def combine(self, features: Tensor, context: Tensor) -> Tensor:
        """``(B, n_items)`` blended scores from ``(B, n_items, F)`` features."""
        return torch.einsum("bnf,bf->bn", features, self.weight.detach()[context])

    def learn(self, features: Tensor, context: Tensor, target: Tensor, weight: Tensor, seen: Tensor) -> None:
        """Adagrad steps on minibatches of the positive examples; ``seen`` (bool,
        ``(B, n_items)``) marks the items each user touched before, which the
        ranking leaves out and so must the loss."""
        keep = torch.nonzero(weight > 0).squeeze(1)
        size = self.settings.minibatch
        for start in range(0, len(keep), size):
            rows = keep[start : start + size]
            logits = torch.einsum("bnf,bf->bn", features[rows], self.weight[context[rows]])
            logits = logits.masked_fill(seen[rows], float("-inf"))
            loss = (F.cross_entropy(logits, target[rows], reduction="none") * weight[rows]).sum() / weight[rows].sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()

    def report(self) -> dict[str, Any]:
        """The learned weights, by context and feature (for reports)."""
        labels = ["0", *(f"{lo}-{hi - 1}" for lo, hi in zip(HISTORY_EDGES, HISTORY_EDGES[1:], strict=False))]
        labels = [*labels, f"{HISTORY_EDGES[-1]}+"]
        w = self.weight.detach()
        return {label: dict(zip(self.names, map(float, row), strict=True)) for label, row in zip(labels, w, strict=True)}

    def state(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])


def seen_mask(batch: Interactions, n_items: int) -> Tensor:
    """``(B, n_items)``: the items in each row's history, the row's own item excepted."""
    mask = torch.zeros(len(batch), n_items, dtype=torch.bool)
    rows, cols = np.nonzero(batch.hist_item >= 0)
    mask[torch.from_numpy(rows), torch.from_numpy(batch.hist_item[rows, cols].astype(np.int64))] = True
    own = batch.item >= 0
    mask[torch.from_numpy(np.flatnonzero(own)), torch.from_numpy(batch.item[own].astype(np.int64))] = False
    return mask


def blended_scores(net_scores: FloatArray, signals: Tensor, gate: Gate, batch: Interactions) -> tuple[Tensor, Tensor]:
    """The features ``(B, n, F)`` (network scores first) and the blended scores ``(B, n)``."""
    features = torch.cat([torch.from_numpy(np.ascontiguousarray(net_scores))[:, :, None], signals], dim=2)
    return features, gate.combine(features, Gate.context(batch))
