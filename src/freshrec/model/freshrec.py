"""The freshrec model behind the evaluator's and the learner's interface.

``fit`` warm-starts on a time-ordered log (epochs, early stopping on the most
recent slice), ``learn`` makes one optimizer step per micro-batch (mixing in
older examples from a replay buffer if ``replay_share`` asks for it), and
``score`` ranks the whole catalog: with the blend (``[model.blend]``, see
:mod:`freshrec.model.blend`), the network's scores weighed against counting
signals by weights learned from every scored event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from freshrec.model.base import FloatArray, Interactions
from freshrec.model.blend import Features, Gate, feature_names, new_signals, seen_mask
from freshrec.model.deltas import ChangedRows
from freshrec.model.histories import compact, tensors
from freshrec.model.sequence import SequenceNet
from freshrec.model.signals import CountSignals
from freshrec.model.similarity import nearest
from freshrec.settings import LearnSettings, ModelSettings

log = logging.getLogger(__name__)


class Training(Protocol):
    """What the model needs of its trainer (``freshrec.learn.trainer.Trainer``)."""

    health: Any
    rng: np.random.Generator
    generator: torch.Generator

    def weights(self, batch: Interactions) -> np.ndarray: ...
    def loss(self, batch: Interactions, every_position: bool = False) -> Tensor: ...
    def step(self, batch: Interactions, every_position: bool = False, dropout: bool = True) -> float | None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def grow(self, text: Tensor) -> None: ...
    def grow_users(self, n_users: int) -> None: ...
    def forget_user(self, row: int) -> None: ...
    def forget_rows(self, rows: Tensor) -> None: ...
    @property
    def changed(self) -> ChangedRows: ...


class Replay(Protocol):
    """Older examples mixed into online steps (``freshrec.learn.buffer.ReplayBuffer``)."""

    def add(self, batch: Interactions) -> None: ...
    def sample(self, n: int) -> Interactions | None: ...
    def forget_user(self, user: int) -> None: ...
    def state(self) -> dict[str, object]: ...
    def restore(self, state: dict[str, object]) -> None: ...


class PrivateTraining(Protocol):
    """Differentially private online steps (``freshrec.learn.privacy.PrivateSteps``)."""

    uses: int

    def step(self, batch: Interactions) -> float | None: ...
    def report(self, history_length: int) -> dict[str, Any]: ...


GATE_FEATURES = 64 * 4_096
"""The blend's weights learn from at most this many (event, item) pairs of features per
micro-batch that was not scored first (the online learner's; the evaluator's were scored,
and it learns from all of them): 155 events of a batch on 1,682 items, 64 on 4,096. The
features of a micro-batch grow with the catalog (256 events took 380 ms on 10,000 items,
against 45 ms for the network's step), and a couple of hundred weights need not see every
event; the counts take every event in."""


class FreshRec:
    """Text-aware sequence recommender, learned online.

    Its collaborators are passed in: the network, the trainer that steps it, the
    replay buffer and, with privacy on, the private steps
    (:func:`freshrec.learn.recommender.build_freshrec` wires them from settings).
    ``text`` holds the catalog's frozen text vectors for the blend's text features.
    """

    name = "freshrec"

    def __init__(
        self,
        net: SequenceNet,
        trainer: Training,
        buffer: Replay,
        model: ModelSettings,
        learn: LearnSettings,
        text: np.ndarray | None = None,
        private: PrivateTraining | None = None,
        progress: bool = False,
    ):
        self.model_settings = model
        self.learn_settings = learn
        self.history_length = model.history_length
        self.net = net
        self.trainer = trainer
        self.buffer = buffer
        self.private = private
        self.rng = np.random.default_rng(model.seed)
        self.progress = progress
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None
        blend = model.blend
        self.signals: CountSignals | None = None
        self.gate: Gate | None = None
        # counts remember single users' transitions exactly: no place in the private mode
        if blend.enabled and private is None:
            self.signals = new_signals(self.n_items, model, text)
            self.gate = Gate(feature_names(self.signals), self.signals.n_per_query + 1, blend)
        self._features: tuple[np.ndarray, Features] | None = None
        """The features of the last scored batch, by stream position: the blend learns from them."""

    # -- the Recommender interface ------------------------------------------
    def fit(self, events: Interactions, on_step: Callable[[], None] | None = None) -> None:
        """Warm start: the network's epochs on the log, then, with the blend, the
        most recent ``calibration_share`` of it learned in order as a stream,
        scored first, so that the blend's weights start from real outcomes.
        ``on_step`` is called after every optimizer step (the online learner
        publishes the model as it goes, so serving need not wait for the end)."""
        if self.signals is None:
            self._fit_network(events, on_step)
            return
        cut = len(events) - int(len(events) * self.model_settings.blend.calibration_share)
        first = events.take(np.arange(cut))
        self._fit_network(first, on_step)
        self.signals.learn(first, self.trainer.weights(first) > 0)
        size = self.learn_settings.batch_size
        for start in tqdm(range(cut, len(events), size), desc="calibrate", unit="batch", disable=not self.progress):
            chunk = events.take(np.arange(start, min(start + size, len(events))))
            self.score(chunk)
            self._learn(chunk)
            if on_step is not None:
                on_step()

    def _fit_network(self, events: Interactions, on_step: Callable[[], None] | None = None) -> None:
        """Shuffled epochs on all but the most recent slice, early stopping on
        that slice, then one in-order pass over it."""
        s = self.learn_settings
        self._activate(events)
        self._add_users(events)
        n_val = int(len(events) * s.validation_share)
        train, val = np.arange(len(events) - n_val), np.arange(len(events) - n_val, len(events))
        best, best_state, patience = float("inf"), None, s.patience
        for _ in tqdm(range(s.epochs), desc="warm start", unit="epoch", disable=not self.progress):
            order = self.rng.permutation(train)
            for i in range(0, len(order), s.batch_size):
                self.trainer.step(events.take(order[i : i + s.batch_size]), every_position=True)
                if on_step is not None:
                    on_step()
            if not n_val or s.epochs == 1:  # one epoch: kept whatever its validation loss
                continue
            loss = self._evaluate(events.take(val))
            if loss < best - 1e-4:
                best, best_state, patience = loss, self.trainer.snapshot(), s.patience
            elif patience == 0:
                break
            else:
                patience -= 1
        if best_state is not None:
            self.trainer.restore(best_state)
        for i in range(0, n_val, s.batch_size):
            self.trainer.step(events.take(val[i : i + s.batch_size]))
            if on_step is not None:
                on_step()
        self.buffer.add(events)
        self._table = None

    def learn(self, events: Interactions) -> None:
        if self.learn_settings.online and len(events):
            self._learn(events)

    def _learn(self, events: Interactions) -> None:
        self._learn_blend(events)
        self._add_users(events)
        if self.private is not None:  # no replay, seeding or activation: see freshrec.learn.privacy
            self.private.step(events)
            self._table = None
            return
        self._seed_new_items(events)
        self._activate(events)
        extra = round(len(events) * self.learn_settings.replay_share)
        batch = events.concat(self.buffer.sample(extra))
        self.trainer.step(batch, dropout=False)
        self.buffer.add(events)
        self._table = None

    @torch.no_grad()
    def score(self, queries: Interactions) -> FloatArray:
        if self.gate is None:
            return self._network_scores(queries)
        features = self._blend_features(queries)
        self._features = (queries.position.copy(), features)
        return self.gate.combine(features).numpy()

    def _blend_features(self, queries: Interactions) -> Features:
        assert self.signals is not None
        network = torch.from_numpy(self._network_scores(queries))
        per_query, per_item = self.signals.features(queries)
        assert self._table is not None
        # nearest in the network's item space (IDs and text as learned so far), as
        # text-nearest is in the frozen text space
        learned = nearest(torch.nn.functional.normalize(self._table[0], dim=1), queries)
        per_query = torch.cat([per_query, learned[:, None]], 1)
        return Features(network, per_query, per_item, Gate.context(queries))

    @torch.no_grad()
    def _network_scores(self, queries: Interactions) -> FloatArray:
        self.net.eval()
        if self._table is None:
            self._table = self.net.item_table()
        table, bias = self._table
        users = self.net.users(table, **tensors(queries))
        return self.net.scores(users, table, bias).numpy().astype(np.float32, copy=False)

    def _learn_blend(self, events: Interactions) -> None:
        """The blend learns from how its features ranked each event's item (those
        of the scoring just before, when it scored these very events), then the
        counts take the events in."""
        if self.signals is None or self.gate is None:
            return
        cached = self._features
        weights = self.trainer.weights(events)
        rows, weight = events, weights
        if cached is not None and np.array_equal(cached[0], events.position):
            features = cached[1]
        else:  # not scored first (the online learner): on a large catalog, from a share of them
            most = max(16, GATE_FEATURES // max(self.n_items, 1))
            if len(events) > most:
                keep = np.sort(self.rng.permutation(len(events))[:most])
                rows, weight = events.take(keep), weights[keep]
            with torch.no_grad():
                features = self._blend_features(rows)
        self._features = None
        target = torch.from_numpy(rows.item.astype(np.int64))
        self.gate.learn(features, target, torch.from_numpy(weight), seen_mask(rows, self.n_items))
        self.signals.learn(events, weights > 0)

    def params(self) -> dict[str, Any]:
        return {
            **({"blend": self.gate.report()} if self.gate is not None else {}),
            "model": self.model_settings.model_dump(),
            "learn": self.learn_settings.model_dump(),
            "health": vars(self.trainer.health).copy(),
            **({"privacy": self.private.report(self.history_length)} if self.private is not None else {}),
        }

    def add_items(self, text: np.ndarray) -> None:
        """Grow the catalog by ``len(text)`` items (codes continue from ``n_items``)."""
        if len(text):
            self.trainer.grow(torch.from_numpy(np.asarray(text, dtype=np.float32)))
            if self.signals is not None:
                self.signals.grow(np.asarray(text, dtype=np.float32))
            self._table = None

    def drop_blend(self) -> None:
        """The network alone from now on (the online learner's choice on a catalog larger
        than ``[model.blend] max_items``, where serving the blend costs too much)."""
        self.signals = self.gate = None
        self._features = None

    def blend_part(self, with_counts: bool = False) -> dict[str, Any] | None:
        """What serving needs of the blend for a snapshot (``None`` without one): its
        weights, what the counts took in since the last call (with a journal, see
        :attr:`CountSignals.journal`) and, ``with_counts``, the counts themselves."""
        if self.gate is None or self.signals is None:
            return None
        counts = self.signals.state() if with_counts else None
        return {"weight": self.gate.weight.detach().clone(), "counted": self.signals.drain(), "signals": counts}

    @property
    def n_items(self) -> int:
        return int(self.net.item_id.num_embeddings)

    @property
    def _large(self) -> bool:
        """A catalog the trainer samples negatives from (see ``full_softmax_max``)."""
        return self.n_items > self.learn_settings.full_softmax_max

    # -- internals -----------------------------------------------------------
    @torch.no_grad()
    def _seed_new_items(self, events: Interactions) -> None:
        """Start the ID embedding of an item seen for the first time at a small
        multiple of the state of the user who chose it (``new_item_seed``).

        A zero row would leave the item to its text until training caught up;
        seeded, it is at once close to users in a similar state, the way
        co-occurrence counts surface a new item after a single transition. On
        MovieLens-100K this took cold-item HR@10 from 0.0052 to 0.0118.
        """
        scale = self.model_settings.new_item_seed
        if not scale or not self.net.use_ids:
            return
        fresh = (self.net.interactions[torch.from_numpy(events.item.astype(np.int64))] == 0).numpy()
        if not fresh.any():
            return
        items, first = np.unique(events.item[fresh], return_index=True)
        rows = np.flatnonzero(fresh)[first]
        self.net.eval()
        history = tensors(events.take(rows))
        # on a large catalog, the rows the histories name alone (the whole table cost most of a step)
        needed = compact(history, torch.zeros(0, dtype=torch.long)) if self._large else None
        table, _ = self.net.item_table(needed)
        users = self.net.users(table, **history)
        seeded = torch.from_numpy(items.astype(np.int64))
        self.net.item_id.weight[seeded] = scale * users
        self.trainer.changed.add(seeded)

    def _add_users(self, events: Interactions) -> None:
        if self.net.user_id is not None and len(events):
            self.trainer.grow_users(int(events.user.max()) + 1)

    def forget_user(self, code: int) -> None:
        """Erase what the model learned about user ``code`` alone: the ID
        embedding row and its optimizer state (a no-op without user IDs)."""
        self.trainer.forget_user(code)
        self.buffer.forget_user(code)
        self._table = None

    def _activate(self, events: Interactions) -> None:
        items = torch.from_numpy(events.item.astype(np.int64))
        expired = self.net.observe(items, torch.from_numpy(events.time.astype(np.float64)))
        self.trainer.changed.add(torch.cat([items, expired]))
        if len(expired):
            self.trainer.forget_rows(expired)

    @torch.no_grad()
    def _evaluate(self, events: Interactions) -> float:
        """The weighted loss of ``events``, a slice at a time: at once, a 100,000-event
        slice of a million-item shop asked for 27 GB of logits."""
        self.net.eval()
        total, weight, size = 0.0, 0.0, self.learn_settings.batch_size * 16
        for start in range(0, len(events), size):
            chunk = events.take(np.arange(start, min(start + size, len(events))))
            w = max(float(np.abs(self.trainer.weights(chunk)).sum()), 1e-6)  # what the loss divides by
            total, weight = total + float(self.trainer.loss(chunk)) * w, weight + w
        return total / max(weight, 1e-6)

    # -- persistence -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: parameters, item activity,
        optimizer and schedule state, random generators and the replay buffer."""
        return {
            "trainer": self.trainer.snapshot(),
            "rng": self.rng.bit_generator.state,
            "trainer_rng": self.trainer.rng.bit_generator.state,
            "generator": self.trainer.generator.get_state(),
            "buffer": self.buffer.state(),
            **({"signals": self.signals.state()} if self.signals is not None else {}),
            **({"gate": self.gate.state()} if self.gate is not None else {}),
            "health": vars(self.trainer.health).copy(),
            **({"privacy": self.private.report(self.history_length)} if self.private is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.trainer.restore(state["trainer"])
        self.rng.bit_generator.state = state["rng"]
        self.trainer.rng.bit_generator.state = state["trainer_rng"]
        self.trainer.generator.set_state(state["generator"])
        self.buffer.restore(state["buffer"])
        if self.signals is not None and "signals" in state:
            self.signals.restore(state["signals"])
        if self.gate is not None and "gate" in state:
            self.gate.restore(state["gate"])
        for key, value in state["health"].items():
            setattr(self.trainer.health, key, value)
        if self.private is not None and "privacy" in state:
            self.private.uses = max(1, int(state["privacy"].get("uses", 1)))
        self._table = None
