"""The service behind the HTTP API: ingest, catalog writes, ranking, live figures.

It owns no training code. In ``freshrec serve`` a learner runs beside it
(wired by the command) and hands it model snapshots through :meth:`publish`;
everything else it reads from the store, so an acknowledged event is in the
user's history for the very next request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from freshrec.domain import Event, Item, ItemId, UserId
from freshrec.encoders import TextEncoder, build_encoder, embed_items, encoder_key
from freshrec.ingest.hygiene import RepeatFilter
from freshrec.ingest.importer import derive_event_id
from freshrec.ingest.validate import InvalidRecord, Validator
from freshrec.model.snapshot import Snapshot
from freshrec.serialization import Malformed
from freshrec.serve.batching import Batcher
from freshrec.serve.catalog import Catalog
from freshrec.serve.explain import Ranked
from freshrec.serve.fallback import Popularity
from freshrec.serve.jobs import Job, Jobs
from freshrec.serve.live import Live
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Options, Ranker, finish
from freshrec.settings import Settings
from freshrec.storage.base import AppendResult, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

SEEN_WINDOW = 500
"""Most recent events of a user whose items ``exclude_seen`` leaves out."""
MODEL_LESS_HISTORY = 20
"""Events of a user that rank by text similarity before any model exists."""


class Problem(Exception):
    """A request the service refuses; ``errors`` locate each bad record."""

    def __init__(self, status: int, detail: str, errors: Sequence[dict[str, Any]] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)


def _problems(raw: Sequence[Any], check: Callable[[Any], Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    good, errors = [], []
    for index, record in enumerate(raw):
        try:
            good.append(check(record))
        except InvalidRecord as exc:
            errors += [{"index": index, "field": e.field, "message": e.message} for e in exc.errors]
    return good, errors


class Service:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.validator = Validator(settings.ingest, clock)
        self.repeats = RepeatFilter(settings.ingest.repeat_window_s)
        self._ingest_lock = threading.Lock()
        self.hygiene: dict[str, int] = {
            "quarantined_users": 0,
            "quarantined_events": 0,
            "reverted_spikes": 0,
            "skipped_batches": 0,
        }
        """The learner's figures as it last reported them (:meth:`~freshrec.learn.online.Learner.figures`)."""
        self._counted = {"reverted_spikes": 0, "skipped_batches": 0}
        """How much of the learner's running counts the Prometheus counters hold already."""
        self.encoder_key = encoder_key(settings.encoder)
        self.catalog = Catalog()
        self.catalog.load(store, self.encoder_key)
        self.ranker = Ranker(self.catalog)
        self.popularity = Popularity(clock=clock)
        self.popularity.seed(store)
        self.live = Live(clock=clock)
        self.metrics = Metrics()
        self.jobs = Jobs()
        self.batcher = Batcher()
        self.learner_state = "starting"
        self.model_wanted = True
        """False while there is nothing to train on (the service is ready without a model)."""
        self._erasures_pending = 0
        self.forget_hooks: list[Callable[[UserId], None]] = []
        """Called with each deleted user (the learner must forget them too)."""
        self.append_hooks: list[Callable[[int], None]] = []
        """Called with the log's newest offset after each append that stored events."""
        self.catalog_hooks: list[Callable[[], object]] = []
        """Called after each item write or deletion (other replicas reload their catalog)."""
        self.head = store.last_offset()
        self._acks: deque[tuple[int, float]] = deque()
        self._encoder: TextEncoder | None = None
        self._encoder_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.metrics.catalog_items.set(int(self.catalog.view.alive.sum()))
        self._pending: Snapshot | None = None
        self._closed = False
        self._publishing = threading.Condition()
        threading.Thread(target=self._publisher, name="freshrec-publisher", daemon=True).start()
        # loading a language model takes seconds: do it now, not in the first item write
        threading.Thread(target=self._preload_encoder, name="freshrec-encoder", daemon=True).start()

    # -- model -------------------------------------------------------------------
    def parse(self, data: bytes, source: str) -> Snapshot | None:
        """The snapshot in ``data`` (from the pipe, the bus or the store), or ``None``
        if it is malformed or not signed with the snapshot key: refused with one log
        line and a count in ``/metrics``, while the current model stays served."""
        try:
            cluster = self.settings.cluster
            return Snapshot.from_bytes(data, cluster.key(), cluster.snapshot_max_mb << 20)
        except Malformed as exc:
            log.warning("refused a model snapshot from the %s: %s", source, exc)
            self.metrics.rejected_models.labels(source).inc()
            return None

    def receive(self, data: bytes, source: str) -> Snapshot | None:
        """Publish the snapshot in ``data`` unless :meth:`parse` refuses it."""
        snapshot = self.parse(data, source)
        if snapshot is not None:
            self.publish(snapshot)
        return snapshot

    def publish(self, snapshot: Snapshot) -> None:
        """Hand over a new model snapshot (from the learner, which sends at most one
        per ``publish_interval_ms``). The publisher thread builds the serving copy;
        if snapshots arrive faster than it builds, the newest wins and the ones in
        between are skipped, never the last."""
        with self._publishing:
            self._pending = snapshot
            self._publishing.notify()

    def _publish(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        self.ranker.publish(snapshot)
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        self.metrics.model_served.set(1)
        self.metrics.model_version.set(snapshot.checkpoint)
        self.metrics.model_updates.set(snapshot.updates)
        if snapshot.loss is not None:
            self.metrics.training_loss.set(snapshot.loss)

    def _publisher(self) -> None:
        while True:
            with self._publishing:
                while self._pending is None and not self._closed:
                    self._publishing.wait()
                snapshot, self._pending = self._pending, None
            if snapshot is None:  # closed
                return
            self._publish(snapshot)

    def close(self) -> None:
        with self._publishing:
            self._closed = True
            self._publishing.notify()

    @property
    def erasures_pending(self) -> int:
        """Deletions recorded in the store that the learner has not yet carried out, as
        the learner last reported (an API replica counts them in the store)."""
        return self._erasures_pending

    @erasures_pending.setter
    def erasures_pending(self, value: int) -> None:
        self._erasures_pending = value
        self.metrics.erasures_pending.set(value)  # at once: /metrics agrees with /v1/status

    @property
    def model_served(self) -> bool:
        """Whether a learned model ranks (until the first arrives, the text and
        popularity fallback does; readiness does not wait for it)."""
        return self.ranker.scoring.snapshot is not None

    # -- events ------------------------------------------------------------------
    def ingest(self, payload: Any) -> tuple[int, int]:
        """Validate every event, then store all of them in one transaction, or none."""
        raw = payload if isinstance(payload, list) else [payload]
        limit = self.settings.serve.max_events_per_request
        if len(raw) > limit:
            raise Problem(413, f"{len(raw):,} events in one request; at most {limit:,}")
        if not raw:
            return 0, 0
        events, errors = _problems(raw, self.validator.event)
        if errors:
            self.metrics.rejected.inc(len(raw) - len(events))
            raise Problem(
                422, f"{len(raw) - len(events)} of {len(raw)} events are invalid; nothing was stored", tuple(errors)
            )
        events = [e if e.event_id else replace(e, event_id=derive_event_id(e)) for e in events]
        with self._ingest_lock:  # a repeat is judged against what is stored, not what is being stored
            events, repeats = self.repeats.split(events)
            result = self.store.append_events(events) if events else AppendResult(0, 0, self.head)
            self.repeats.remember(events)
        with self._write_lock:
            self.head = max(self.head, result.last_offset)
            self._acks.append((result.last_offset, time.monotonic()))
        if result.accepted:
            for hook in self.append_hooks:
                hook(result.last_offset)
        new = [e for e in events if e.event_id in result.stored]
        if new:  # a retried request, or the repeated part of one, must not count twice
            for kind, n in Counter(e.type.value for e in new).items():
                self.metrics.events.labels(kind).inc(n)
            self.popularity.add(new)
            self.live.events(new)
        self.metrics.duplicates.inc(result.duplicates + repeats)
        return result.accepted, result.duplicates + repeats

    # -- items -------------------------------------------------------------------
    def encoder(self) -> TextEncoder:
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.settings.encoder)
            return self._encoder

    def _preload_encoder(self) -> None:
        try:
            self.encoder()
        except Exception:  # reported again, with its cause, by the first item write
            log.exception("could not load the text encoder %s", self.settings.encoder.model)

    def write_items(self, payload: Any) -> tuple[int, Job | None]:
        """Store items at once; embed them now, or in a background job for large batches."""
        raw = payload if isinstance(payload, list) else [payload]
        items, errors = _problems(raw, self.validator.item)
        if errors:
            raise Problem(
                422, f"{len(raw) - len(items)} of {len(raw)} items are invalid; nothing was stored", tuple(errors)
            )
        width = self.catalog.view.text.shape[1] if len(self.catalog.view) else None
        wrong = [
            {
                "index": n,
                "field": "vector",
                "message": f"has {len(i.vector)} numbers; the catalog's vectors have {width}",
            }
            for n, i in enumerate(items)
            if i.vector is not None and width is not None and len(i.vector) != width
        ]
        if wrong:
            raise Problem(422, f"{len(wrong)} items have a vector of the wrong size; nothing was stored", tuple(wrong))
        if not items:
            return 0, None
        self.store.upsert_items(items)
        if len(items) > self.settings.serve.background_items:
            return len(items), self.jobs.start(f"embed {len(items):,} items", lambda job: self._embed(items, job))
        try:
            self._embed(items, None)
        except Exception as exc:  # the items are stored; the next write embeds them
            log.exception("embedding failed")
            raise Problem(
                503,
                f"{len(items)} items stored but not embedded yet: text encoder failed ({type(exc).__name__}: {exc})",
            ) from None
        return len(items), None

    def _embed(self, items: Sequence[Item], job: Job | None) -> None:
        def report(done: int, total: int) -> None:
            if job is not None:
                job.done, job.total = done, total

        embed_items(self.store, self.encoder(), chunk=self.settings.encoder.batch_size * 4, report=report)
        latest = {i.item_id: i for i in items}
        ids, vectors = self.store.item_vectors(self.encoder_key, list(latest))
        self.catalog.put([latest[i] for i in ids], vectors)
        self._catalog_changed()

    def _catalog_changed(self) -> None:
        self._catalog_reloaded()
        for hook in self.catalog_hooks:
            hook()

    def reload_catalog(self) -> None:
        """Read the catalog again from the store: another API replica changed it."""
        self.catalog.load(self.store, self.encoder_key)
        self._catalog_reloaded()

    def _catalog_reloaded(self) -> None:
        self.ranker.refresh()
        self.metrics.catalog_items.set(int(self.catalog.view.alive.sum()))

    def observe_head(self, offset: int) -> None:
        """The log has grown to ``offset`` (appended by another replica)."""
        with self._write_lock:
            self.head = max(self.head, offset)

    def get_item(self, item_id: ItemId) -> Item | None:
        return self.store.get_item(item_id)

    def delete_item(self, item_id: ItemId) -> bool:
        found = self.store.delete_item(item_id)
        if self.catalog.remove(item_id):
            self._catalog_changed()
        self.popularity.forget(item_id)
        return found

    # -- users -------------------------------------------------------------------
    async def recommend(self, user_id: UserId, options: Options) -> tuple[str | None, list[Ranked]]:
        """Recommendations for a user, on the event loop: the model pass is shared with
        the requests that arrived at the same time (:mod:`freshrec.serve.batching`)."""
        user_id = self.validator.user_key(user_id)
        scoring = self.ranker.scoring
        # the model reads the last history_length events; exclude_seen needs the
        # items of many more, which a one-column read gives much more cheaply
        length = scoring.snapshot.settings.history_length if scoring.snapshot is not None else MODEL_LESS_HISTORY
        history, seen = await self.store.user_context_async(user_id, length, SEEN_WINDOW * options.exclude_seen)
        if seen:
            options = replace(options, exclude=(*options.exclude, *seen))
        request = self.ranker.plan(history, self.clock(), options, self.popularity.top)
        await self.batcher.encode(request)
        items = finish(request)
        self.metrics.recommendations.labels(request.source).inc()
        self.live.served_list(user_id, [r.item_id for r in items])
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
        user_id = self.validator.user_key(user_id)
        removed = self.store.delete_user(user_id)
        self.erasures_pending += 1  # until the learner (or the replica's look at the store) counts again
        self.live.forget(user_id)
        for hook in self.forget_hooks:
            hook(user_id)
        return removed

    # -- live figures ------------------------------------------------------------------
    def tick(self) -> dict[str, Any]:
        """Sample the gauges (called once a second by the server)."""
        scoring = self.ranker.scoring
        learned = scoring.snapshot.offset if scoring.snapshot is not None else 0
        now = time.monotonic()
        with self._write_lock:
            while self._acks and self._acks[0][0] <= learned:
                self._acks.popleft()
            lag_s = now - self._acks[0][1] if self._acks and scoring.snapshot is not None else 0.0
            head = self.head
        lag = max(head - learned, 0) if scoring.snapshot is not None else head
        hit_rate = self.live.hit_rate()
        self.metrics.lag_events.set(lag)
        self.metrics.lag_seconds.set(lag_s)
        if hit_rate is not None:
            self.metrics.hit_rate.set(hit_rate)
        hygiene = self.hygiene
        self.metrics.quarantined_users.set(hygiene.get("quarantined_users", 0))
        self.metrics.quarantined_events.set(hygiene.get("quarantined_events", 0))
        for name, counter in (
            ("reverted_spikes", self.metrics.reverted_spikes),
            ("skipped_batches", self.metrics.skipped_batches),
        ):
            now_at = int(hygiene.get(name, 0))
            if now_at > self._counted[name]:  # the learner's running count: a counter goes by the difference
                counter.inc(now_at - self._counted[name])
            self._counted[name] = max(self._counted[name], now_at)
        gauges: dict[str, Any] = {
            "lag_events": lag,
            "lag_seconds": round(lag_s, 3),
            "loss": scoring.snapshot.loss if scoring.snapshot is not None else None,
            "model_version": scoring.version,
            "hit_rate": hit_rate,
            "erasures_pending": self.erasures_pending,
            **hygiene,
        }
        self.live.gauges(gauges)
        return gauges

    def status(self) -> dict[str, Any]:
        scoring = self.ranker.scoring
        snap = scoring.snapshot
        return {
            "model_version": scoring.version,
            "model_created": snap.created if snap is not None else None,
            "learned_offset": snap.offset if snap is not None else 0,
            "log_offset": self.head,
            "learner": self.learner_state,
            "catalog_items": int(scoring.view.alive.sum()),
            "model_served": self.model_served,
            "model_wanted": self.model_wanted,
            "hit_rate": self.live.hit_rate(),
            "hits_total": self.live.hits_total,
            "trials_total": self.live.trials_total,
            "erasures_pending": self.erasures_pending,
            **self.hygiene,
        }


def item_dict(item: Item) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "description": item.description,
        "categories": list(item.categories),
        "attributes": item.attributes,
        "has_vector": item.vector is not None,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }
