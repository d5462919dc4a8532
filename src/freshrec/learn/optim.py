"""Optimizers and learning-rate schedules, chosen by settings per parameter group."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from freshrec.learn.ftrl import FTRL
from freshrec.settings import OptimizerSettings


def build_optimizer(params: Iterable[torch.Tensor], s: OptimizerSettings) -> Optimizer:
    params = list(params)
    if s.name == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "adagrad":
        return torch.optim.Adagrad(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "sgd":
        return torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay)
    return FTRL(params, lr=s.lr, l1=s.l1, l2=s.l2 + s.weight_decay)


def takes_sparse(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` steps from sparse gradients, walking only the rows they hold,
    to the result of the dense step: Adagrad and SGD without weight decay (which moves
    every row) and FTRL (its L2 is part of its formula). Adam moves every row by its
    momentum and is given dense gradients."""
    if isinstance(optimizer, FTRL):
        return True
    plain = all(group["weight_decay"] == 0 for group in optimizer.param_groups)
    return plain and isinstance(optimizer, torch.optim.Adagrad | torch.optim.SGD)


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm), also over sparse gradients, which it
    does not take; these are coalesced first (a row looked up twice holds one sum)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad for p in params if p.grad is not None]
    norms = [torch.linalg.vector_norm(g.values() if g.is_sparse else g) for g in grads]
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms))
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor)
    return total


def build_schedule(optimizer: Optimizer, kind: str, warmup_steps: int) -> LambdaLR:
    """``constant``; ``warmup``: linear from 0 over ``warmup_steps``, then constant;
    ``inverse_sqrt``: the warm-up, then decay as ``sqrt(warmup_steps / step)``
    (Vaswani et al. 2017), which suits a stream that never ends."""

    def factor(step: int) -> float:
        step = step + 1
        if kind == "constant":
            return 1.0
        if step < warmup_steps:
            return step / warmup_steps
        return 1.0 if kind == "warmup" else math.sqrt(warmup_steps / step)

    return LambdaLR(optimizer, factor)
