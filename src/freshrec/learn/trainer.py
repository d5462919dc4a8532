"""One optimisation step on a batch of events, with its safeguards.

Examples: each event is the next-item target after its history. Events with
a positive weight (views .. purchases, ratings) are trained with a softmax
over the whole catalog (or over in-batch plus sampled negatives when the
catalog is large); events with a negative weight (dislikes, impressions
without a click, and low ratings if so configured) push their own item's
score down. Weights come from :mod:`freshrec.ingest.feedback`.

Safeguards: a batch whose loss or gradients are not finite is skipped and
counted; a loss far above its running mean (a spike, e.g. from a burst of
junk events) restores the last good state and learns again the batches learned
since (all but the spiking one, which is dropped); the gradient norm is clipped.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from freshrec.domain import EventType
from freshrec.ingest.feedback import TYPE_CODES, FeedbackWeights
from freshrec.learn.optim import build_optimizer, build_schedule, clip_gradients, takes_sparse
from freshrec.model.base import Interactions
from freshrec.model.deltas import ChangedRows
from freshrec.model.histories import compact, tensors
from freshrec.model.sequence import SequenceNet, upgrade_state
from freshrec.settings import LearnSettings

RATING = TYPE_CODES[EventType.RATING]


@dataclass
class Health:
    steps: int = 0
    skipped_non_finite: int = 0
    reverted_spikes: int = 0
    last_loss: float = float("nan")
    mean_loss: float = float("nan")


def example_terms(cross_entropy: Tensor, target_logit: Tensor, weight: Tensor) -> Tensor:
    """Each example's loss: a positive weight trains its item as the next one (softmax
    cross-entropy), a negative one pushes the item's score down (softplus)."""
    return torch.where(weight > 0, cross_entropy * weight, F.softplus(target_logit) * (-weight))


class Trainer:
    def __init__(self, net: SequenceNet, settings: LearnSettings, feedback: FeedbackWeights, seed: int = 0):
        self.net = net
        self.settings = settings
        self.feedback = feedback
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        tables = [net.item_id.weight, net.item_bias.weight]
        if net.user_id is not None:
            tables.append(net.user_id.weight)
        ids = {id(p) for p in tables}
        dense = [p for p in net.parameters() if id(p) not in ids]
        self.optimizers = [build_optimizer(dense, settings.dense), build_optimizer(tables, settings.embeddings)]
        self.schedules = [build_schedule(o, settings.schedule, settings.warmup_steps) for o in self.optimizers]
        self._sparse = [takes_sparse(o) for o in self.optimizers]
        self.changed = ChangedRows()
        """The item rows changed since a snapshot last took them (the model adds those it
        writes itself)."""
        self.health = Health()
        self._good: dict[str, Any] | None = None
        self._since_good: list[tuple[Interactions, bool, bool]] = []
        """The batches learned since ``_good`` was taken (with their ``every_position`` and
        ``dropout``): learned again after a restore, so that only the spike is undone."""

    # -- examples ----------------------------------------------------------
    def weights(self, batch: Interactions) -> np.ndarray:
        """Signed example weights: positive trains the item as the next one, negative pushes it down."""
        return self._weights(batch.type, batch.value)

    def _weights(self, types: np.ndarray, values: np.ndarray) -> np.ndarray:
        pref = self.feedback.weights(types.astype(np.int64), values)
        if self.settings.low_ratings == "positive":
            pref = np.where(types == RATING, 0.5 + 0.5 * np.clip(pref, 0.0, 1.0), pref)
        return pref.astype(np.float32)

    def loss(self, batch: Interactions, every_position: bool = False) -> Tensor:
        """Weighted next-item loss of the batch's events; with ``every_position``
        each history token also predicts the token after it (SASRec-style), which
        multiplies the training signal of a warm start."""
        net = self.net
        t = tensors(batch)
        rows = sampled = None
        target = torch.from_numpy(batch.item.astype(np.int64))
        if net.item_id.num_embeddings > self.settings.full_softmax_max:
            # sampled softmax: only the histories', targets' and sampled items' rows are
            # computed, and the tables' gradients hold those rows alone
            n_items = net.item_id.num_embeddings
            sampled = torch.randint(0, n_items, (self.settings.negatives,), generator=self.generator)
            rows = compact(t, torch.cat([target, sampled]))
        sparse = rows is not None
        table, bias = net.item_table(rows, sparse=sparse)
        states = net.users(table, **t, every_position=every_position, sparse=sparse)
        w = torch.from_numpy(self.weights(batch))
        if every_position:
            nxt = np.concatenate([batch.hist_item[:, 1:], batch.item[:, None]], axis=1)
            nxt_w = self._weights(
                np.concatenate([batch.hist_type[:, 1:], batch.type[:, None]], axis=1),
                np.concatenate([batch.hist_value[:, 1:], batch.value[:, None]], axis=1),
            )
            valid = (batch.hist_item >= 0) & (nxt >= 0)
            valid[:, -1] = False  # the last history token's next item is the target, predicted by the query
            per_row = self.settings.positions_per_row
            if per_row < valid.shape[1]:
                # a random subset of positions per row: the softmax over the catalog
                # for every position costs more than it teaches
                noise = np.where(valid, self.rng.random(valid.shape), -1.0)
                cut = -np.partition(-noise, per_row - 1, axis=1)[:, per_row - 1 : per_row]
                valid &= noise >= cut
            users = torch.cat([states[:, :-1][torch.from_numpy(valid)], states[:, -1]])
            target = torch.cat([torch.from_numpy(nxt[valid].astype(np.int64)), target])
            w = torch.cat([torch.from_numpy(nxt_w[valid]), w])
        else:
            users = states
        candidates, column = None, target
        if rows is not None and sampled is not None:
            chosen, where = torch.unique(torch.cat([target, sampled]), return_inverse=True)
            candidates, column = torch.searchsorted(rows, chosen), where[: len(target)]
        logits = net.scores(users, table, bias, items=candidates)
        target_logit = logits.gather(1, column.unsqueeze(1)).squeeze(1)
        cross_entropy = F.cross_entropy(logits, column, reduction="none")  # fused: a fifth faster than by hand
        return example_terms(cross_entropy, target_logit, w).sum() / w.abs().sum().clamp(min=1e-6)

    # -- one step ------------------------------------------------------------
    def step(self, batch: Interactions, every_position: bool = False, dropout: bool = True) -> float | None:
        """One update; returns the loss, or ``None`` when the batch was skipped.

        ``dropout=False`` trains without dropout: a regulariser for the epochs of
        a warm start, it only adds noise (and a third of the cost) to single-pass
        online updates."""
        if not len(batch):
            return None
        value = self._gradients(batch, every_position, dropout)
        if value is None:
            return None
        if self._spike(value):
            return None
        self.advance(value)
        if self._good is not None:
            self._since_good.append((batch, every_position, dropout))
        return value

    def _gradients(self, batch: Interactions, every_position: bool, dropout: bool) -> float | None:
        """Compute and clip the batch's gradients into the parameters; returns the loss, or
        ``None`` (counted, gradients cleared) if it or the gradients are not finite."""
        self.net.train(dropout)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        with self._dropout_randomness(dropout):
            loss = self.loss(batch, every_position)
            value = float(loss.detach())
            if not np.isfinite(value):
                self.health.skipped_non_finite += 1
                return None
            loss.backward()  # type: ignore[no-untyped-call]
        norm = clip_gradients(list(self.net.parameters()), self.settings.clip_norm)
        if not torch.isfinite(norm):
            self.health.skipped_non_finite += 1
            for o in self.optimizers:
                o.zero_grad(set_to_none=True)
            return None
        return value

    @contextmanager
    def _dropout_randomness(self, dropout: bool) -> Iterator[None]:
        """Dropout draws from torch's global generator: seeded here from the trainer's own
        (which checkpoints carry), inside a fork of the global state, so that training is
        reproducible and leaves the caller's randomness alone."""
        if not dropout:
            yield
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def advance(self, loss: float, count: bool = True) -> None:
        """Apply the gradients the parameters hold: every optimizer and schedule steps
        (one that takes no sparse gradients gets them dense)."""
        for table in (self.net.item_id.weight, self.net.item_bias.weight):
            if table.grad is not None and table.grad.is_sparse and self._sparse[1]:
                self.changed.add(table.grad.coalesce().indices()[0])
            elif table.grad is not None:
                self.changed.everything()  # a dense step (or Adam's momentum) moves any row
        for o, s, sparse in zip(self.optimizers, self.schedules, self._sparse, strict=True):
            if not sparse:
                _densify(o)
            with torch.sparse.check_sparse_tensor_invariants(enable=False):  # type: ignore[no-untyped-call]  # autograd's: valid
                o.step()
            s.step()
        if count:
            self.health.steps += 1
            self.health.last_loss = loss

    def _spike(self, value: float) -> bool:
        h = self.health
        if h.steps >= 20 and value > self.settings.spike_factor * h.mean_loss and self._good is not None:
            self._load(_copied(self._good))  # a copy: the optimizers take the state's tensors as theirs
            self.changed.back_to_mark()  # the rows changed since the good state was taken
            h.reverted_spikes += 1
            for batch, every_position, dropout in self._since_good:  # all but the spike: learned again
                again = self._gradients(batch, every_position, dropout)
                if again is not None:
                    self.advance(again, count=False)  # the steps were counted the first time
            return True
        h.mean_loss = value if np.isnan(h.mean_loss) else 0.95 * h.mean_loss + 0.05 * value
        if h.steps % 50 == 0:
            self._good = _copied(self._live(), into=self._good)
            self._since_good = []
            self.changed.mark()
        return False

    def _no_restore(self) -> None:
        """The good state can no longer be restored (the network changed shape, a row was
        erased): until the next one is taken, within 50 steps, a spike is not caught."""
        self._good = None
        self._since_good = []
        self.changed.unmark()

    @torch.no_grad()
    def forget_rows(self, rows: Tensor) -> None:
        """Reset the optimizer state of expired item rows, so they start afresh."""
        for table in (self.net.item_id.weight, self.net.item_bias.weight):
            self._reset_state(table, rows)

    @torch.no_grad()
    def forget_user(self, row: int) -> None:
        """Zero a user's ID embedding and its optimizer state (the user was deleted)."""
        table = self.net.user_id
        if table is not None and row < table.num_embeddings:
            table.weight[row] = 0
            self._reset_state(table.weight, torch.tensor([row]))
        self._no_restore()  # the good state still holds the row, and so do the batches since

    def _reset_state(self, table: Tensor, rows: Tensor) -> None:
        for optimizer in self.optimizers:
            for value in optimizer.state.get(table, {}).values():
                if isinstance(value, Tensor) and value.shape == table.shape:
                    value[rows] = 0

    @torch.no_grad()
    def grow(self, text: Tensor) -> None:
        """Append items to the network and zero rows to the tables' optimizer state."""
        before = self.net.item_id.num_embeddings
        self.net.grow(text)
        for table in (self.net.item_id.weight, self.net.item_bias.weight):
            self._grow_state(table, before)
        self._no_restore()  # a smaller network's state

    @torch.no_grad()
    def grow_users(self, n_users: int) -> None:
        """Room for user codes below ``n_users`` in the user table and its optimizer state."""
        before = self.net.grow_users(n_users)
        if self.net.user_id is not None and self.net.user_id.num_embeddings > before:
            self._grow_state(self.net.user_id.weight, before)
            self._no_restore()

    def _grow_state(self, table: Tensor, before: int) -> None:
        for optimizer in self.optimizers:
            state = optimizer.state.get(table, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() and value.shape[0] == before:
                    state[key] = torch.cat([value, value.new_zeros(table.shape[0] - before, *value.shape[1:])])

    # -- state -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A copy of what training changes: the network less its frozen text table (which
        the store holds; on a million items it was a gigabyte to copy every 50 steps), the
        optimizers' and the schedules' state."""
        state: dict[str, Any] = _copied(self._live())
        return state

    def _live(self) -> dict[str, Any]:
        """The state :meth:`snapshot` copies, its tensors the live ones."""
        return {
            "net": {k: v for k, v in self.net.state_dict().items() if k != "text"},
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedules": [s.state_dict() for s in self.schedules],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Back to ``state``; the text table stays the network's own (one that an older
        checkpoint carries is ignored: the store's is the truth)."""
        self._load(state)
        self.changed.everything()

    def _load(self, state: dict[str, Any]) -> None:
        users = state["net"].get("user_id.weight")
        if users is not None:
            self.grow_users(users.shape[0])
        net = {**state["net"], "text": self.net.text}
        self.net.load_state_dict(upgrade_state(self.net, net))
        for o, saved in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(_appended(o, saved))
        for s, saved in zip(self.schedules, state["schedules"], strict=True):
            s.load_state_dict(saved)


def _copied(value: Any, into: Any = None) -> Any:
    """A deep copy of ``value`` (dicts, lists and tuples of tensors and plain values), written
    into the tensors of ``into``, an earlier copy, where they match: refreshing the copy of
    a million-row table in place took a sixth of the time of a new one (no allocation)."""
    if isinstance(value, Tensor):
        if isinstance(into, Tensor) and into.shape == value.shape and into.dtype == value.dtype:
            return into.copy_(value)
        return value.clone()
    if isinstance(value, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _copied(v, old.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        earlier = into if isinstance(into, list | tuple) and len(into) == len(value) else [None] * len(value)
        return type(value)(_copied(v, e) for v, e in zip(value, earlier, strict=True))
    return copy.deepcopy(value)


def _densify(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = p.grad.to_dense()


def _appended(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the parameters added since at the end of its last group, as
    yet without state (a checkpoint from before ``upgrade_state``'s parameters)."""
    groups = saved["param_groups"]
    missing = sum(len(g["params"]) for g in optimizer.param_groups) - sum(len(g["params"]) for g in groups)
    if missing <= 0:
        return saved
    start = 1 + max((i for g in groups for i in g["params"]), default=-1)
    last = {**groups[-1], "params": [*groups[-1]["params"], *range(start, start + missing)]}
    return {**saved, "param_groups": [*groups[:-1], last]}
