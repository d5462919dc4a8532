"""The experiment a server runs: which model serves a user, the lists served, what came of them.

Each arm whose settings differ from the defaults has a model of its own, learned
beside the default one by the learner process and published to a ranker of its
own here (:class:`~freshrec.serve.models.Models`); an arm with the default
settings is served by the default model. A list is served by an arm's model only
while the experiment runs and every arm has a model: before that (the arms' first
warm start) everyone gets the default model, so that no arm's figures include
lists served by a model that was not its own.

Every served list gets a ``recommendation_id``. An event that names it and comes
within ``[experiment] window_s`` counts for the list when it is a click, favourite,
cart, purchase or a rating above ``feedback.rating_neutral`` on one of its items by
the same user: the first such event makes the list "clicked". The online hit rate
per arm is the share of positive events (as on the dashboard) of an arm's users that
were on an item of the last list served to them, with or without the id.

The experiment's state (running, stopped, concluded and the winner) is a blob in the
store, so it outlives restarts and is changed without one; the counts are kept in a
blob too, written at most once a second, so a crash loses at most that second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from freshrec.domain import Event, EventType, ItemId, UserId
from freshrec.experiments import DEFAULT_VARIANT, ArmCounts, assign, report
from freshrec.serve.live import POSITIVE
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Ranker
from freshrec.settings import Settings
from freshrec.storage.base import Store

log = logging.getLogger(__name__)

CONVERSIONS = frozenset({EventType.CLICK, EventType.FAVORITE, EventType.CART, EventType.PURCHASE})
"""Event types that count for a list they name (and ratings above neutral)."""
REMEMBERED_LISTS = 200_000
"""Served lists remembered for attribution (about 200 bytes each)."""
STATUSES = ("running", "stopped", "concluded")


def new_list_id() -> str:
    """A served list's ``recommendation_id``: 96 random bits, in hex."""
    return secrets.token_hex(12)


class ExperimentError(ValueError):
    """A change of the experiment's state that cannot be made (unknown arm, wrong name)."""


@dataclass(frozen=True, slots=True)
class Served:
    arm: str
    user_id: UserId
    items: frozenset[ItemId]
    at: float


@dataclass(frozen=True, slots=True)
class Route:
    """Who serves one request: the ranker and the variant its list is labelled with."""

    ranker: Ranker
    variant: str
    arm: str | None
    """The arm the list counts for; ``None`` when it counts for none."""


class Experiment:
    """The configured experiment (``[experiment]``) in a server.

    Parameters
    ----------
    default
        The default model's ranker.
    arm_models
        A :class:`Models` (with its own ranker) per arm that learns a model of its own.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        default: Ranker,
        arm_models: dict[str, Models],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.config = settings.experiment
        self.neutral = settings.feedback.rating_neutral
        self.default = default
        self.arm_models = arm_models
        self.metrics = metrics
        self.clock = clock
        self.control = next(iter(self.config.arms))
        self.key = f"experiment:{self.config.name}"
        self.counts = {arm: ArmCounts() for arm in self.config.arms}
        self.lists: LRUCache[str, Served] = LRUCache(REMEMBERED_LISTS)
        self.clicked: set[str] = set()
        """Lists already counted as clicked (pruned with :attr:`lists`)."""
        self.last: LRUCache[UserId, Served] = LRUCache(REMEMBERED_LISTS)
        self.arm_states: dict[str, str] = {}
        """The arms' learners' states ("warm start", "following", ...)."""
        self._lock = threading.Lock()
        self._dirty = False
        self.state = self._load_state()
        self._load_counts()

    # -- state -----------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        """The stored state, or "running" for an experiment this store has not seen."""
        started = {"status": "running", "winner": None, "changed_at": self.clock()}
        data = self.store.claim(self.key, json.dumps(started).encode())
        return _checked_state(data, self.config.arms)

    def refresh(self) -> None:
        """Read the state again (another process may have changed it)."""
        got = self.store.published(self.key)
        if got is not None:
            self.state = _checked_state(got[1], self.config.arms)

    def change(self, status: str, winner: str | None = None) -> dict[str, Any]:
        """Start (``running``), stop or conclude the experiment; concluding names the winner,
        whose model then serves every user."""
        if status not in STATUSES:
            raise ExperimentError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        if (status == "concluded") != (winner is not None):
            raise ExperimentError("a winner is named when, and only when, the experiment is concluded")
        if winner is not None and winner not in self.config.arms:
            raise ExperimentError(f"{winner!r} is not an arm of {self.config.name!r}: {', '.join(self.config.arms)}")
        state = {"status": status, "winner": winner, "changed_at": self.clock()}
        self.store.publish(self.key, json.dumps(state).encode())
        self.state = state
        return state

    # -- serving ---------------------------------------------------------------
    def route(self, user_id: UserId) -> Route:
        """Which model serves ``user_id`` now, and which arm their list counts for."""
        status, winner = self.state["status"], self.state["winner"]
        if status == "concluded":
            return Route(self._ranker(winner), winner, None)
        if status == "running" and self.ready():
            arm = assign(self.config, user_id)
            return Route(self._ranker(arm), arm, arm)
        return Route(self.default, DEFAULT_VARIANT, None)

    def ready(self) -> bool:
        """Whether every arm's model is served (until then, the default model serves all)."""
        return all(m.ranker.scoring.snapshot is not None for m in self.arm_models.values())

    def _ranker(self, arm: str) -> Ranker:
        models = self.arm_models.get(arm)
        return models.ranker if models is not None else self.default

    def served(self, route: Route, user_id: UserId, items: Iterable[ItemId]) -> str:
        """Record a list served on ``route``; returns its ``recommendation_id``."""
        rid = new_list_id()
        if route.arm is None:
            return rid
        served = Served(route.arm, user_id, frozenset(items), self.clock())
        with self._lock:
            self.lists[rid] = served
            self.last[user_id] = served
            self.counts[route.arm].lists += 1
            self._dirty = True
        self.metrics.experiment_lists.labels(self.config.name, route.arm).inc()
        return rid

    def events(self, events: Iterable[Event]) -> None:
        """Credit newly stored events to the lists they name, and count the arms' hits."""
        now = self.clock()
        with self._lock:
            for e in events:
                last = self.last.get(e.user_id)
                if last is not None and e.type in POSITIVE:
                    hit = e.item_id in last.items
                    self.counts[last.arm].trials += 1
                    self.counts[last.arm].hits += hit
                    self._dirty = True
                    self.metrics.experiment_hits.labels(self.config.name, last.arm, str(hit).lower()).inc()
                self._attribute(e, now)

    def _attribute(self, e: Event, now: float) -> None:
        rid = (e.context or {}).get("recommendation_id")
        if not isinstance(rid, str):
            return
        served = self.lists.get(rid)
        if served is None or served.user_id != e.user_id or e.item_id not in served.items:
            return
        if now - served.at > self.config.window_s or not self._converts(e):
            return
        counts = self.counts[served.arm]
        counts.attributed += 1
        self.metrics.experiment_attributed.labels(self.config.name, served.arm).inc()
        if rid not in self.clicked:
            self.clicked.add(rid)
            counts.clicked += 1
            if len(self.clicked) > 2 * REMEMBERED_LISTS:
                self.clicked &= set(self.lists.keys())
        self._dirty = True

    def _converts(self, e: Event) -> bool:
        if e.type is EventType.RATING:
            return e.value is not None and e.value > self.neutral
        return e.type in CONVERSIONS

    def forget(self, user_id: UserId) -> None:
        """A deleted user's lists are forgotten (their counts stay: they hold no id)."""
        with self._lock:
            self.last.pop(user_id, None)
            for rid in [rid for rid, s in self.lists.items() if s.user_id == user_id]:
                del self.lists[rid]

    # -- figures ---------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The experiment as ``/v1/experiments`` shows it."""
        with self._lock:
            counts = {arm: dataclasses.replace(c) for arm, c in self.counts.items()}
        arms = report(counts, self.control)
        for arm, row in arms.items():
            row["share"] = self.config.arms[arm].share
            row["own_model"] = arm in self.arm_models
            models = self.arm_models.get(arm)
            scoring = (models.ranker if models is not None else self.default).scoring
            row["model_version"] = scoring.version
            row["learned_offset"] = scoring.snapshot.offset if scoring.snapshot is not None else None
            row["learner"] = self.arm_states.get(arm) if arm in self.arm_models else "default model"
        return {
            "name": self.config.name,
            "status": self.state["status"],
            "winner": self.state["winner"],
            "changed_at": self.state["changed_at"],
            "serving_arms": self.state["status"] == "running" and self.ready(),
            "control": self.control,
            "window_s": self.config.window_s,
            "arms": arms,
        }

    def save(self) -> None:
        """Write the counts to the store if they changed (called once a second)."""
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps({arm: c.as_dict() for arm, c in self.counts.items()}).encode()
            self._dirty = False
        try:
            self.store.publish(f"{self.key}:counts", data)
        except Exception as exc:  # the next tick tries again
            self._dirty = True
            log.warning("could not save the experiment's counts: %s", exc)

    def _load_counts(self) -> None:
        got = self.store.published(f"{self.key}:counts")
        if got is None:
            return
        try:
            stored = json.loads(got[1])
            if not isinstance(stored, dict):
                raise ValueError("not an object")
            for arm, data in stored.items():
                if arm in self.counts and isinstance(data, dict):
                    self.counts[arm] = ArmCounts.of(data)
        except ValueError as exc:
            log.warning("ignored the stored counts of experiment %r: %s", self.config.name, exc)


def _checked_state(data: bytes, arms: Iterable[str]) -> dict[str, Any]:
    """The stored state, validated (the store is not trusted more than the network)."""
    try:
        state = json.loads(data)
        if not isinstance(state, dict) or state.get("status") not in STATUSES:
            raise ValueError(f"unknown status in {state!r}")
        winner = state.get("winner")
        if (state["status"] == "concluded") != (winner is not None) or (winner is not None and winner not in arms):
            raise ValueError(f"winner {winner!r} does not fit status {state['status']!r}")
        changed = state.get("changed_at")
        if not isinstance(changed, (int, float)):
            raise ValueError("changed_at is not a number")
        return {"status": state["status"], "winner": winner, "changed_at": float(changed)}
    except ValueError as exc:
        raise ExperimentError(f"the stored state of the experiment is unreadable: {exc}") from None
