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
