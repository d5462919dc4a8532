"""FTRL-Proximal as a PyTorch optimizer.

McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013,
Algorithm 1. Per coordinate ``i`` it keeps ``z_i`` and ``n_i`` and, after a
gradient ``g_i``::

    sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
    z    += g - sigma * w
    n    += g^2
    w     = 0                                              if |z| <= l1
          = -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)   otherwise

so L1 gives exact zeros, which is why it suits large sparse tables (embedding
rows and biases). The weights are a function of ``z`` and ``n``: a parameter
starts from zero whatever its initial value, so use it for tables that start
at zero. A sparse gradient (an embedding looked up with ``sparse=True``) steps
the rows it holds alone, at a cost that does not grow with the table; the other
rows keep their weights. No well-kept PyTorch implementation exists, hence
this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class FTRL(Optimizer):
    """FTRL-Proximal with per-coordinate learning rates and L1/L2.

    Parameters
    ----------
    params
        Parameters or parameter groups.
    lr
        ``alpha`` of the paper: the per-coordinate learning-rate scale.
    beta
        Smoothing of the per-coordinate rate (1.0 in the paper).
    l1, l2
        Regularisation strengths; ``l1 > 0`` gives exact zeros.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0):
        if lr <= 0 or beta < 0 or l1 < 0 or l2 < 0:
            raise ValueError(f"invalid FTRL hyperparameters: lr={lr}, beta={beta}, l1={l1}, l2={l2}")
        super().__init__(params, {"lr": lr, "beta": beta, "l1": l1, "l2": l2})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, beta, l1, l2 = group["lr"], group["beta"], group["l1"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"] = torch.zeros_like(p)
                    state["n"] = torch.zeros_like(p)
                if p.grad.is_sparse:  # the rows it holds, the rest untouched
                    g = p.grad.coalesce()
                    rows = g.indices()[0]
                    z, n, w = state["z"][rows], state["n"][rows], p[rows]
                    _update(w, z, n, g.values(), alpha, beta, l1, l2)
                    state["z"][rows], state["n"][rows], p[rows] = z, n, w
                else:
                    _update(p, state["z"], state["n"], p.grad, alpha, beta, l1, l2)
        return loss


def _update(p: torch.Tensor, z: torch.Tensor, n: torch.Tensor, g: torch.Tensor, *hyper: float) -> None:
    """One step of the paper's algorithm on the weights ``p`` and their state, in place."""
    alpha, beta, l1, l2 = hyper
    touched = g != 0  # coordinates without gradient keep their state and weight
    n_new = n + g * g
    sigma = (n_new.sqrt() - n.sqrt()) / alpha
    z.add_(torch.where(touched, g - sigma * p, torch.zeros_like(p)))
    n.copy_(torch.where(touched, n_new, n))
    denom = (beta + n.sqrt()) / alpha + l2
    w = -(z - z.sign() * l1) / denom
    p.copy_(torch.where(z.abs() <= l1, torch.zeros_like(p), w))
