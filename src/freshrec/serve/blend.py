"""The blend served: the learner's weights over the network and counting signals.

The evaluator's figures are the blend's (:mod:`freshrec.model.blend`): the
network's scores weighed against transitions, co-occurrence, text similarity and
popularity by weights learned from every scored event. Serving ranks the same
way: a whole snapshot brings the learner's counts, every later one what the
counts took in since (:class:`~freshrec.model.counted.Counted`, in order), so the
server's copy stays equal to the learner's without reading the log itself, and
with each snapshot the weights. The features are then computed per request over
the whole catalog, exactly as the learner computes them when it scores an event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from freshrec.model.base import Interactions
from freshrec.model.blend import Features, Gate, blended, contributions, feature_names, new_signals
from freshrec.model.counted import Counted
from freshrec.model.histories import HistoryTensors
from freshrec.model.signals import GRAM_MAX_ITEMS, CountSignals
from freshrec.model.similarity import SimilarityCache, SimilarityRows, nearest, unit_rows
from freshrec.serve.catalog import CatalogView
from freshrec.settings import ModelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Blended:
    """A batch's blended scores ``(B, n)`` and what they were made of (for explanations)."""

    scores: torch.Tensor
    features: Features
    weight: torch.Tensor
    n_per_query: int
    names: list[str]

    def parts(self, row: int, items: npt.NDArray[np.int64]) -> torch.Tensor:
        """``(len(items), features)``: what each feature adds to row ``row``'s scores."""
        return contributions(self.weight, self.n_per_query, self.features, row, torch.from_numpy(items))

    def weights(self, row: int) -> torch.Tensor:
        """The features' weights in row ``row``'s contexts."""
        return self.weight[self.features.context[row]].sum(0)


class ServedBlend:
    """The server's copy of one model's blend; thread-safe (snapshots arrive on one
    thread, requests read on others)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.settings: ModelSettings | None = None
        self.signals: CountSignals | None = None
        self.weight: torch.Tensor | None = None
        self._text: tuple[CatalogView, npt.NDArray[np.float32], SimilarityRows] | None = None
        self._units: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def ready(self) -> bool:
        return self.signals is not None and self.weight is not None

    def take(self, part: dict[str, Any] | None, settings: ModelSettings) -> None:
        """A snapshot's blend (checked when the snapshot was read): the counts of a whole
        one, then the increments that follow the copy's own, and the weights. Whole counts
        are only taken where the increments do not already bring the copy to them (the
        learner sends them every minute), and are made before the lock is taken: requests
        do not wait for them. A gap in the increments (a snapshot this server missed)
        leaves the copy out until the next whole counts: the network ranks alone meanwhile.
        Called from one thread (the snapshots' receiver)."""
        current = self.signals if settings == self.settings else None
        whole = None
        if part is not None and part["signals"] is not None and _behind(current, part):
            state = part["signals"]
            n = len(state["interactions"])
            # the server reads text from its catalog: a one-column stand-in
            whole = new_signals(n, settings, np.zeros((n, 1), np.float32) if settings.use_text else None)
            whole.restore(state)
        with self._lock:
            if part is None or settings != self.settings:
                self.signals = self.weight = None
                self.settings = settings
            if part is None:
                return
            if whole is not None:
                self.signals = whole
            signals = self.signals
            if signals is None:
                return
            following = _following(signals.seq, part["counted"])
            if following is None:
                log.debug("the blend's counts missed an increment; the network ranks alone until the next")
                self.signals = self.weight = None
                return
            for counted in following:
                if counted.n_items > signals.n_items:
                    signals.grow(np.zeros((counted.n_items - signals.n_items, 1), np.float32))
                signals.apply(counted)
            self.weight = part["weight"]

    def prepare(self, view: CatalogView) -> None:
        """Make the view's text similarities before requests need them (from the thread
        that publishes a new view: on 4,096 items, every pair's took half a second)."""
        known, settings = self._text, self.settings
        if self.signals is None or settings is None or not settings.use_text:
            return  # nothing reads them (yet: the first request after the counts arrive makes them)
        if known is None or known[0] is not view:
            made = self._text_for(view)
            with self._lock:
                self._text = made

    def forget(self) -> None:
        with self._lock:
            self.signals = self.weight = None

    def score(
        self,
        network: torch.Tensor,
        t: HistoryTensors,
        vectors: torch.Tensor,
        view: CatalogView,
        context: torch.Tensor | None = None,
    ) -> Blended | None:
        """The blended scores of a batch whose network scores over ``view``'s items are
        ``network`` (``(B, len(view))``), from its history tensors ``t`` and the
        network's item table ``vectors``; ``None`` before the copy is ready. ``context``
        (``(B, 2)``, see :func:`contexts`) picks each row's weights (default: its own)."""
        with self._lock:
            signals, weight, settings = self.signals, self.weight, self.settings
            if signals is None or weight is None or settings is None:
                return None
            queries = _queries(t)
            if settings.use_text:
                _, unit, rows = self._text_of(view)
                per_query, per_item = signals.features(queries, unit, rows)
            else:
                per_query, per_item = signals.features(queries, _no_text(len(view)))
        learned = nearest(self._unit_vectors(vectors), queries)
        context = Gate.context(queries) if context is None else context
        features = Features(network, torch.cat([per_query, learned[:, None]], 1), per_item, context)
        q = signals.n_per_query + 1
        return Blended(blended(weight, q, features), features, weight, q, feature_names(signals))

    def _unit_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """The network's item vectors at unit length, made once per item table."""
        known = self._units
        if known is None or known[0] is not vectors:
            known = self._units = (vectors, F.normalize(vectors, dim=1))
        return known[1]

    def _text_of(self, view: CatalogView) -> tuple[CatalogView, npt.NDArray[np.float32], SimilarityRows]:
        if self._text is None or self._text[0] is not view:
            self._text = self._text_for(view)
        return self._text

    @staticmethod
    def _text_for(view: CatalogView) -> tuple[CatalogView, npt.NDArray[np.float32], SimilarityRows]:
        """The view's unit text vectors and their similarity rows: every pair's made at
        once on a small catalog (as the learner does), a cache of those read on a larger one."""
        unit = unit_rows(view.text)
        units = torch.from_numpy(unit)
        rows = (units @ units.T).__getitem__ if len(unit) <= GRAM_MAX_ITEMS else SimilarityCache(units)
        return view, unit, rows


def _following(seq: int, counted: list[Counted]) -> list[Counted] | None:
    """The increments of ``counted`` that follow a copy at ``seq``, in order (those it
    already took skipped); ``None`` if one is missing between them."""
    following = [c for c in counted if c.seq > seq]
    if any(c.seq != seq + 1 + n for n, c in enumerate(following)):
        return None
    return following


def _behind(current: CountSignals | None, part: dict[str, Any]) -> bool:
    """Whether a copy at ``current`` needs the whole counts of ``part``: it has none, or
    the increments that come with them leave it short of them."""
    if current is None:
        return True
    following = _following(current.seq, part["counted"])
    reached = following[-1].seq if following else current.seq
    return following is None or reached < int(part["signals"].get("seq", 0))


def contexts(t: HistoryTensors) -> torch.Tensor:
    """``(B, 2)``: each row's rows of the blend's weights (:meth:`Gate.context`)."""
    return Gate.context(_queries(t))


def _no_text(n: int) -> npt.NDArray[np.float32]:
    """A stand-in for the text of a model without text features (only its length is read)."""
    return np.zeros((n, 1), np.float32)


def _queries(t: HistoryTensors) -> Interactions:
    """The fields of a batch of queries the features read, from history tensors."""
    hist = t["hist_item"].numpy()
    b = len(hist)
    return Interactions(
        user=t["user"].numpy(),
        item=np.full(b, -1, dtype=np.int64),
        type=np.zeros(b, dtype=np.int8),
        value=np.full(b, np.nan),
        time=t["time"].numpy(),
        hist_item=hist,
        hist_type=t["hist_type"].numpy().astype(np.int8),
        hist_value=t["hist_value"].numpy(),
        hist_time=t["hist_time"].numpy(),
        position=np.zeros(b, dtype=np.int64),
    )
