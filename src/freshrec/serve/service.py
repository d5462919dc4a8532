"""The service behind the HTTP API, made of one part per concern:

- :class:`~freshrec.serve.intake.Intake`: events in (validation, repeats, one transaction);
- :class:`~freshrec.serve.items.CatalogWriter`: item writes, embedding, deletions;
- :class:`~freshrec.serve.models.Models`: model snapshots in, swapped into the ranker;
- :class:`~freshrec.serve.figures.Figures`: the learner's figures, gauges, status;

and the recommendation path itself (:meth:`Service.recommend`). It owns no
training code: a learner runs beside it (wired by :mod:`freshrec.serve.engine`)
and hands it model snapshots; everything else it reads from the store, so an
acknowledged event is in the user's history for the very next request.

Nothing starts in the constructor: :meth:`Service.start` starts the publisher,
the encoder's loading and the once-a-second sampling of the figures;
:meth:`Service.close` stops them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from freshrec.domain import Event, UserId
from freshrec.encoders import encoder_key
from freshrec.experiments import DEFAULT_VARIANT
from freshrec.ingest.validate import Validator
from freshrec.model.snapshot import prepare_validation
from freshrec.serve.batching import Batcher, arrival
from freshrec.serve.catalog import Catalog
from freshrec.serve.experiments import Experiment, new_list_id
from freshrec.serve.explain import Ranked
from freshrec.serve.fallback import Popularity
from freshrec.serve.figures import Figures
from freshrec.serve.index import search_threads
from freshrec.serve.intake import Intake
from freshrec.serve.items import CatalogWriter
from freshrec.serve.live import Live
from freshrec.serve.metrics import Metrics
from freshrec.serve.models import Models
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.rules import RuleError, parse
from freshrec.serve.trending import WINDOWS, Trending
from freshrec.serve.watchdog import LoopWatch
from freshrec.settings import Settings
from freshrec.storage.base import Store

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    """A served list: the model version that ranked it, its items, its id (which later
    events may name, see :mod:`freshrec.serve.experiments`) and the variant that served it."""

    version: str | None
    items: list[Ranked]
    recommendation_id: str
    variant: str


SEEN_WINDOW = 500
"""Most recent events of a user whose items ``exclude_seen`` leaves out."""
MODEL_LESS_HISTORY = 20
"""Events of a user that rank by text similarity before any model exists."""
LATEST_EVENTS = 8
"""Events read from the log's end per user :func:`latest_histories` looks for."""
TICK_S = 1.0
"""How often the figures are sampled."""


def latest_histories(store: Store, users: int, length: int) -> list[list[Event]]:
    """The last ``length`` events of up to ``users`` users, those whose events end the log
    (a candidate index built before requests came calibrates on them)."""
    recent = store.read_events(max(0, store.last_offset() - LATEST_EVENTS * users), LATEST_EVENTS * users)
    latest = list(dict.fromkeys(e.user_id for e in reversed(recent)))[:users]
    return [store.user_history(user_id, length) for user_id in latest]


class Service:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.validator = Validator(settings.ingest, clock)
        for name, rule in settings.serve.rules.items():  # a bad named rule fails the start, not a request
            try:
                parse(rule)
            except RuleError as exc:
                raise ValueError(f"[serve.rules] {name}: {exc}") from None
        self.metrics = Metrics()
        prepare_validation()  # before traffic: the first snapshot's check would import for seconds
        self.live = Live(clock=clock)
        self.catalog = Catalog()
        self.catalog.load(store, encoder_key(settings.encoder))
        self.ranker = Ranker(self.catalog, settings.serve.retrieval, self._stored)
        self.metrics.candidate_index_items.set_function(lambda: self._index("n"))
        self.metrics.candidate_index_recall.set_function(lambda: self._index("recall"))
        self.metrics.candidate_index_probes.set_function(lambda: self._index("scanned"))
        self.metrics.candidate_index_builds.set_function(lambda: self.ranker.retrieval.builds)
        self.metrics.candidate_index_updated.set_function(lambda: self.ranker.retrieval.updated)
        self.metrics.item_tower_age.set_function(lambda: self.ranker.tower.age_s)
        self.popularity = Popularity(clock=clock)
        self.popularity.seed(store)
        self.popularity.top()  # ranking every item at start-up, not in a request (trending's counters never rank)
        self.trending = Trending(clock=clock)
        self.trending.seed(store)
        for window in WINDOWS:  # likewise: later rankings look at what trended and what was counted since
            self.trending.top(window)
        counts = (self.popularity, self.trending)
        shed_after = settings.serve.shed_after_ms / 1e3 if settings.serve.shed_after_ms else None
        self.watch = LoopWatch(self.metrics.loop_lag)
        self.batcher = Batcher(
            deadline_s=shed_after,
            shed=self.metrics.shed.inc,
            starting=lambda: search_threads(settings.serve.torch_threads),
            watched=self.watch.busy,
        )
        self.intake = Intake(store, settings, self.validator, self.metrics, counts, self.live)
        self.models = Models(self.ranker, settings.cluster, self.metrics)
        self.experiment: Experiment | None = None
        if settings.experiment.name:
            arm_models = {
                arm: Models(
                    Ranker(self.catalog, settings.serve.retrieval, self._stored), settings.cluster, self.metrics, arm
                )
                for arm in settings.own_arms()
            }
            self.experiment = Experiment(store, settings, self.ranker, arm_models, self.metrics, clock)
            self.intake.stored_hooks.append(self.experiment.events)
        rankers = [self.ranker, *(m.ranker for m in self._arm_models())]
        self.items = CatalogWriter(store, settings, self.validator, self.catalog, rankers, counts, self.metrics)
        self.figures = Figures(self.ranker, self.intake, self.live, self.metrics)
        self.forget_hooks: list[Callable[[UserId], None]] = []
        """Called with each deleted user (the learner must forget them too)."""
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        """Start the background work: the publisher, the encoder's loading, the figures' sampling."""
        if self._ticker is not None:
            return
        self.models.start()
        for models in self._arm_models():
            models.start()
        self.items.start()
        self._ticker = threading.Thread(target=self._tick, name="freshrec-tick", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self.figures.tick()
            if self.experiment is not None:
                self.experiment.save()
                try:  # a change made through another process (a script on the store) shows within a second
                    self.experiment.refresh()
                except Exception as exc:  # keep serving with the state known
                    log.warning("could not read the experiment's state: %s", exc)

    def _index(self, figure: str) -> float:
        """The default model's candidate index's ``n``, ``recall`` or ``scanned`` (NaN for
        the recall without one, else 0)."""
        index = self.ranker.retrieval.index
        if index is None:
            return float("nan") if figure == "recall" else 0.0
        return float(getattr(index, figure))

    def _stored(self, users: int, length: int) -> tuple[list[list[Event]], float]:
        return latest_histories(self.store, users, length), self.clock()

    def _arm_models(self) -> list[Models]:
        return list(self.experiment.arm_models.values()) if self.experiment is not None else []

    def close(self) -> None:
        self._stop.set()
        self.batcher.close()
        self.models.close()
        for models in self._arm_models():
            models.close()
        if self.experiment is not None:
            self.experiment.save()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()

    # -- users -------------------------------------------------------------------
    async def recommend(self, user_id: UserId, options: Options, queued: str | None = None) -> Served:
        """Recommendations for a user, on the event loop: the model pass is shared with
        the requests that arrived at the same time (:mod:`freshrec.serve.batching`). With
        an experiment, the model of the user's arm ranks (:mod:`freshrec.serve.experiments`).
        ``queued``: the value of the ``serve.queue_header`` header (:func:`arrival`)."""
        arrived = self._arrived(queued)
        user_id = self.validator.user_key(user_id)
        experiment = self.experiment
        route = experiment.route(user_id) if experiment is not None else None
        ranker = route.ranker if route is not None else self.ranker
        scoring = ranker.scoring
        # the model reads the last history_length events; exclude_seen needs the
        # items of many more, which a one-column read gives much more cheaply
        length = scoring.snapshot.settings.history_length if scoring.snapshot is not None else MODEL_LESS_HISTORY
        history, seen = await self.store.user_context_async(user_id, length, SEEN_WINDOW * options.exclude_seen)
        if seen:
            options = replace(options, exclude=(*options.exclude, *seen))
        version, items = await self._ranked(ranker, history, options, arrived)
        ids = [r.item_id for r in items]
        self.live.served_list(user_id, ids)
        if experiment is None or route is None:
            return Served(version, items, new_list_id(), DEFAULT_VARIANT)
        return Served(version, items, experiment.served(route, user_id, ids), route.variant)

    async def recommend_guest(self, history: list[Event], options: Options, queued: str | None = None) -> Served:
        """Recommendations for a history the store does not hold (:mod:`freshrec.serve.guests`):
        ranked like a stored user's by the default model (a guest has no id to assign an
        experiment's arm by), and nothing of it is kept, not even in the live figures."""
        arrived = self._arrived(queued)
        scoring = self.ranker.scoring
        length = scoring.snapshot.settings.history_length if scoring.snapshot is not None else MODEL_LESS_HISTORY
        version, items = await self._ranked(self.ranker, history[-length:], options, arrived)
        return Served(version, items, new_list_id(), DEFAULT_VARIANT)

    def _arrived(self, queued: str | None) -> float:
        """When the request arrived (:func:`arrival`); one that already waited too long in a
        proxy's queue is refused here, before anything is read for it."""
        if queued is None:  # it arrived now
            return time.monotonic()
        arrived = arrival(queued)
        self.batcher.check(arrived)
        return arrived

    async def _ranked(
        self, ranker: Ranker, history: list[Event], options: Options, arrived: float
    ) -> tuple[str | None, list[Ranked]]:
        request = ranker.plan(history, self.clock(), options, self.popularity.top)
        request.arrived = arrived
        items = await self.batcher.rank(request)
        self.metrics.recommendations.labels(request.source).inc()
        return request.scoring.version, items

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A store read from the event loop: in a worker thread when the store is remote
        (a slow database then stalls that request only), else directly."""
        if self.store.remote:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def history(self, user_id: UserId, n: int) -> list[Event]:
        return await self.read(self.store.user_history, self.validator.user_key(user_id), n)

    def delete_user(self, user_id: UserId) -> int:
        """Delete a user's events now; the learner erases them from its state (the
        deletion is recorded in the store as a pending erasure)."""
        user_id = self.validator.user_key(user_id)
        removed = self.store.delete_user(user_id)
        self.figures.erasures_pending += 1  # until the learner (or the replica's look at the store) counts again
        self.live.forget(user_id)
        if self.experiment is not None:
            self.experiment.forget(user_id)
        for hook in self.forget_hooks:
            hook(user_id)
        return removed
