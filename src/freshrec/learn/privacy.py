"""Differential privacy for the online updates: DP-SGD with an RDP accountant.

With ``[learn.privacy] enabled``, each online micro-batch is one step of DP-SGD
(Abadi et al., 2016):

1. the gradient of every example's loss is computed on its own (``torch.func``:
   ``vmap`` over ``grad``, in chunks of ``chunk`` examples to bound memory);
2. each is clipped to L2 norm ``max_grad_norm`` (C) over all trainable parameters;
3. their sum gets Gaussian noise of standard deviation ``noise_multiplier * C``
   (sigma * C) on every coordinate, and is divided by ``batch_size``, a public
   constant, not by the number of events that happened to arrive;
4. the configured optimizers (Adam, Adagrad, FTRL ...) take that gradient as
   they would any other: what they do with it is post-processing.

What is protected, and how much (Opacus's RDP accountant computes the figures):

* **An example**: one event as the target of its user's preceding history. The
  online learner uses each example in one step (the replay buffer is off in this
  mode), so its guarantee is that of one Gaussian mechanism with noise multiplier
  sigma, whatever the number of steps: epsilon 4.7 at sigma 1 and delta 1e-5.
  Steps use disjoint examples; privacy losses do not add up across them. A crash
  breaks that: the next run resumes from the last checkpoint and learns the events
  after it again, though the dead run may have learned them and served the result.
  So the accountant composes ``uses`` mechanisms, ``uses`` being 1 plus the number
  of resumes from a checkpoint that was not written at a clean stop (kept in the
  checkpoints), an upper bound on how often any example was used.
* **An event** also appears in the histories of its user's next
  ``history_length`` (L) examples. Adding or removing it changes its own
  example (at most C) and each of those (at most 2C), so its bound is the
  Gaussian mechanism with noise multiplier sigma / (2L + 1): far weaker, too
  weak to mean much (about 1,000 at sigma 1 with L = 20, 100 at sigma 4).
  :func:`epsilon` reports both.
* **Not covered**: the warm start (it trains on the stored log without
  noise: start from an empty log for a fully private model), the decision
  that an item's ID embedding switches on and the seeding of a new item's
  row (both skipped in this mode: online, items keep the state the warm start
  left them in), the training-loss figure in ``/metrics`` and ``/v1/status``,
  and user-level privacy (a user's many events add up without a bound).

The loss-spike safeguard is off in this mode (reverting on a loss computed
from the raw data would leak it); a step whose noisy gradient is not finite is
still skipped, which depends only on the private output.
"""

from __future__ import annotations

import secrets
import warnings
from typing import Any

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from freshrec.learn.trainer import Trainer, example_terms
from freshrec.model.base import Interactions
from freshrec.model.histories import tensors
from freshrec.model.sequence import SequenceNet
from freshrec.settings import PrivacySettings

ALPHAS = [1 + x / 100.0 for x in range(1, 10)] + [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
"""Rényi orders the accountant tries: Opacus's defaults and, for the large epsilons of the
per-event bound, orders closer to 1."""


def epsilon(settings: PrivacySettings, history_length: int, uses: int = 1) -> dict[str, float]:
    """The guarantees of online learning that used each example in at most ``uses``
    steps: per example and, by group privacy, per event."""

    def one_gaussian(sigma: float) -> float:
        if sigma <= 0:
            return float("inf")
        accountant = RDPAccountant()
        accountant.history = [(sigma, 1.0, uses)]  # composed over every use of the example
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": a loose bound, and said so
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(settings.delta, alphas=ALPHAS))

    sigma = settings.noise_multiplier
    return {
        "epsilon_example": one_gaussian(sigma),
        "epsilon_event": one_gaussian(sigma / (2 * history_length + 1)),
        "delta": settings.delta,
        "noise_multiplier": sigma,
        "max_grad_norm": settings.max_grad_norm,
        "uses": uses,
    }


class _ExampleLoss(nn.Module):
    """One example's loss, as the trainer weighs it, for ``torch.func`` to differentiate."""

    def __init__(self, net: SequenceNet):
        super().__init__()
        self.net = net
        net.grouped = False  # vmap maps over one example at a time: nothing to group

    def forward(self, history: dict[str, Tensor], target: Tensor, weight: Tensor) -> Tensor:
        net = self.net
        table, bias = net.item_table()
        one: dict[str, Any] = {k: v.unsqueeze(0) for k, v in history.items()}
        state = net.users(table, **one)
        logits = net.scores(state, table, bias)[0]
        target_logit = logits.gather(0, target.unsqueeze(0)).squeeze(0)
        cross_entropy = torch.logsumexp(logits, 0) - target_logit
        return example_terms(cross_entropy, target_logit, weight)


class PrivateSteps:
    """DP-SGD steps on a :class:`~freshrec.learn.trainer.Trainer`'s network and optimizers."""

    def __init__(self, trainer: Trainer, settings: PrivacySettings, batch_size: int):
        self.trainer = trainer
        self.settings = settings
        self.batch_size = batch_size
        # Fresh entropy, never the model's seed: a resumed learner that drew the same noise
        # again would let the difference of two updates cancel it. (Runs in this mode are
        # not reproducible, by design.)
        self.generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.loss = _ExampleLoss(trainer.net)
        self.uses = 1
        """The most steps any example may have been used in: 1, plus one for each resume
        after a run that did not stop cleanly (it may have learned, and served, the
        events after its last checkpoint, which the next run learns again)."""

    def step(self, batch: Interactions) -> float | None:
        """One private update; returns the batch's mean loss (not private: a figure
        for operators), or ``None`` when the noisy gradient was not finite."""
        if not len(batch):
            return None
        trainer = self.trainer
        noisy, loss = self.gradient(batch)
        if not all(torch.isfinite(g).all() for g in noisy.values()):
            trainer.health.skipped_non_finite += 1
            return None
        for name, p in trainer.net.named_parameters():
            if p.requires_grad:
                p.grad = noisy[name]
        trainer.advance(loss)
        return loss

    def gradient(self, batch: Interactions) -> tuple[dict[str, Tensor], float]:
        """The privatised gradient of every trainable parameter (by name) and the mean loss."""
        trainer, net, s = self.trainer, self.trainer.net, self.settings
        net.eval()  # no dropout: per-example functions must be deterministic
        params = {f"net.{n}": p.detach() for n, p in net.named_parameters() if p.requires_grad}
        buffers = {f"net.{n}": b for n, b in net.named_buffers()}
        history: dict[str, Any] = dict(tensors(batch))
        target = torch.from_numpy(batch.item.astype(np.int64))
        weight = torch.from_numpy(trainer.weights(batch))

        def example_loss(p: dict[str, Tensor], h: dict[str, Tensor], t: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
            out: Tensor = functional_call(self.loss, {**p, **buffers}, (h, t, w))
            return out, out.detach()  # the value rides along: no second forward pass for it

        per_example = vmap(grad(example_loss, has_aux=True), in_dims=(None, 0, 0, 0))
        summed = {n: torch.zeros_like(p) for n, p in params.items()}
        losses = []
        with warnings.catch_warnings():  # attention has no batching rule yet: vmap loops over it, and says so
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for start in range(0, len(batch), s.chunk):
                part = slice(start, start + s.chunk)
                h: dict[str, Any] = {k: v[part] for k, v in history.items()}
                grads: dict[str, Tensor]
                grads, values = per_example(params, h, target[part], weight[part])
                losses.append(values)
                norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))  # type: ignore[arg-type]
                factor = (s.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                for n, g in grads.items():
                    summed[n] += torch.einsum("b,b...->...", factor, g)
        sd = s.noise_multiplier * s.max_grad_norm
        noisy = {
            n.removeprefix("net."): (g + torch.normal(0.0, sd, g.shape, generator=self.generator)) / self.batch_size
            for n, g in summed.items()
        }
        return noisy, float(torch.cat(losses).mean())

    def report(self, history_length: int) -> dict[str, Any]:
        return epsilon(self.settings, history_length, self.uses)
