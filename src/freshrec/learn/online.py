"""The learner: trains the freshrec model from the store's event log.

``train`` warm-starts on the whole log; ``catch_up`` resumes from the current
checkpoint and learns, in micro-batches, every event after its offset. Each
event is learned exactly once in log order: a crash between two checkpoints
replays the events after the last checkpoint's offset (the log is the source
of truth, the model a view of it at an offset).

User histories are read from the store as users come back and then kept
current in memory, event by event.

Items added to the catalog after the checkpoint join the model as soon as an
event names them: the learner reads their embeddings from the store and
grows the model's tables. After an update the learner hands a
:class:`~freshrec.model.snapshot.Snapshot` (or a delta on the one before) to
``on_update`` when its sender is ready (:mod:`freshrec.learn.publishing`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from freshrec.domain import Event
from freshrec.encoders import encoder_key
from freshrec.ingest.hygiene import Quarantine
from freshrec.learn.checkpoints import Checkpoints, Version
from freshrec.learn.erasures import erased_state
from freshrec.learn.feed import IDLE_S, Feed, Polling, at_most_every
from freshrec.learn.histories import Histories
from freshrec.learn.items import ItemCodes, NoCatalog
from freshrec.learn.publishing import Publishing
from freshrec.learn.recommender import build_freshrec
from freshrec.model.base import Interactions
from freshrec.model.deltas import SnapshotDelta
from freshrec.model.freshrec import FreshRec
from freshrec.model.snapshot import Snapshot
from freshrec.pacing import Paced
from freshrec.settings import Settings
from freshrec.storage.base import Store, identity, log_chunks, redact

log = logging.getLogger(__name__)

STOPPED = "stop"
"""The note of the checkpoint a learner writes when it stops cleanly."""
WARM_START = "warm start"
LEARNING = "learning online"
"""With privacy on, written before the first online step after a clean checkpoint."""
CLEAN = (STOPPED, WARM_START)
"""Checkpoints after which nothing was learned, unless a later one says otherwise: a
resume from one replays nothing (see :mod:`freshrec.learn.privacy`)."""
CHECKPOINT_SHARE = 0.05
"""Online checkpoints take at most this share of the learner's time: after
``checkpoint_every`` events, one is put off until twenty times what the last took has
passed (on a million items, versions of 259 MB every 10,000 events took a quarter of the
learner's time under 500 events/s, by py-spy). A crash then replays a little more of the log."""


class OtherStore(RuntimeError):
    """The current checkpoint was written against another store."""


class Interrupted(RuntimeError):
    """A warm start was stopped before its end (shutdown); nothing was saved."""


@dataclass
class Progress:
    offset: int = 0
    learned: int = 0
    skipped_unknown_items: int = 0


class Learner:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        checkpoints: Checkpoints,
        progress: bool = False,
        on_update: Callable[[Snapshot | SnapshotDelta], None] | None = None,
    ):
        self.store = store
        self.store_id = identity(store)
        self.settings = settings
        self.checkpoints = checkpoints
        self.progress = progress
        self.state = Progress()
        self.items = ItemCodes(store, encoder_key(settings.encoder))
        """The row of each item in the model's tables."""
        self.users = self._histories()
        """User codes (rows of the model's user table) and each user's last events."""
        self.model: FreshRec | None = None
        self.checkpoint_every = settings.learn.checkpoint_every
        self.publishing = Publishing(on_update)
        """Hands the model to serving (whole, or as deltas where its sender takes them)."""
        self.checkpoint_version = 0
        self.updates = 0
        self._unsaved = 0
        self._saving = Paced(0.0, CHECKPOINT_SHARE)
        self._lock = threading.RLock()
        """Held by a micro-batch; a deletion from another thread waits for it."""
        ingest = settings.ingest
        self.quarantine = Quarantine(ingest.max_events_per_minute, ingest.quarantine_s)
        """Users sending events faster than a person could: stored, not learned (online)."""
        self._tombstones: dict[str, int] = {}
        """Deleted users, with the log's head offset at their deletion: their events up to it
        may still be in a micro-batch read before; later ones are a returning user's."""

    # -- set-up -------------------------------------------------------------
    def _add_new_items(self, events: list[Event]) -> None:
        """Grow the model by the catalog items these events name and, every ``CATALOG_S``, by
        every other one it lacks (serving's catalog follows the model's numbering)."""
        if self.model is None:
            return
        if (vectors := self.items.add(events)) is not None:
            self.model.add_items(vectors)
        if (vectors := self.items.add_catalog()) is not None:
            self.model.add_items(vectors)
        self._fit_blend(self.model)

    def _fit_blend(self, model: FreshRec) -> None:
        """No blend on a catalog over ``[model.blend] max_items`` (its features cost serving too much)."""
        if model.signals is not None and model.n_items > self.settings.model.blend.max_items:
            log.info("%d items, over [model.blend] max_items: the network alone", model.n_items)
            model.drop_blend()

    def _new_model(self, text: np.ndarray) -> FreshRec:
        """The model of the settings; its counts keep a journal of what they take in,
        which the snapshots carry to serving (:meth:`FreshRec.blend_part`)."""
        s = self.settings
        model = build_freshrec(len(text), text, s.model, s.learn, s.feedback, s.ingest, progress=self.progress)
        self._fit_blend(model)
        if model.signals is not None:
            model.signals.journal = []
        return model

    def _histories(self, user_ids: list[str | None] | None = None, mid_log: bool = False) -> Histories:
        """``mid_log``: learning starts past the log's start: a new user may have a past."""
        s = self.settings

        def reload(user_id: str, before: int) -> list[Event]:
            return self.store.user_context(user_id, s.model.history_length, 0, before)[0]

        return Histories(s.model.history_length, user_ids, s.learn.max_users_in_memory, reload, mid_log)

    def _batch(self, events: Iterable[Event]) -> Interactions:
        """Events with their users' histories before each of them; histories advance."""
        batch, skipped = self.users.batch(events, self.items.codes)
        self.state.skipped_unknown_items += skipped
        return batch

    def forget_user(self, user_id: str, at: int | None = None) -> None:
        """Forget the user (their events are already deleted from the store):
        their in-memory history, their examples in the replay buffer, their ID
        embedding row and its optimizer state, here and in every stored
        checkpoint version. The user's code is retired, not reused.

        Events of theirs up to ``at``, the log's head at the deletion (now if not
        given), are dropped (a tombstone, kept until the learner has read past that
        offset), so a micro-batch read just before cannot bring the user back, while one
        who returns later, with new events, is learned again."""
        with self._lock:
            self._tombstones[user_id] = self.store.last_offset() if at is None else at
            self.quarantine.forget(user_id)
            code = self.users.forget(user_id)
            if code is not None and self.model is not None:
                self.model.forget_user(code)
        self.checkpoints.rewrite(lambda state: erased_state(state, user_id, self._new_model))

    # -- the two jobs ---------------------------------------------------------
    def train(self, stop: threading.Event | None = None) -> Version:
        """Warm start on the whole stored log; writes a new checkpoint version.
        Setting ``stop`` ends it within one optimizer step, with :class:`Interrupted`
        and nothing saved (a shutdown must not wait for a long warm start).

        A deletion asked for meanwhile (from another thread) waits for it, then
        erases what it learned about the user: the log it read still held them."""
        with self._lock:
            return self._train(stop)

    def _train(self, stop: threading.Event | None = None) -> Version:
        text = self.items.load()
        self.state = Progress()
        # the log is read in chunks straight into arrays: only one chunk of events is
        # ever held as Python objects (a 10-million-event log would not fit that way)
        limit, head = self.settings.learn.warm_start_events, self.store.last_offset()
        start = max(0, head - limit) if limit else 0
        self.users = self._histories(mid_log=start > 0)
        parts, last = [], 0
        for chunk in log_chunks(self.store, start):
            parts.append(self._batch(chunk))
            last = chunk[-1].offset or last
        if not parts:
            raise NoCatalog("the event log is empty: import events first (freshrec import events ...)")
        batch = Interactions.join(parts)
        del parts
        self.model = self._new_model(text)
        self.state.offset = last
        publish = at_most_every(self.settings.learn.warm_publish_s, lambda: self._publish(force=True))

        def step() -> None:
            if stop is not None and stop.is_set():
                self.model = None
                raise Interrupted("the warm start was interrupted; the next start trains again")
            publish()

        self.model.fit(batch, on_step=step)
        self.state.learned = len(batch)
        version = self._checkpoint(WARM_START)
        self._publish(force=True)
        return version

    def resume(self) -> Version:
        """Load the current checkpoint and rebuild histories up to its offset (a
        deletion asked for meanwhile waits for it, as for :meth:`train`)."""
        with self._lock:
            return self._resume()

    def _resume(self) -> Version:
        current = self.checkpoints.current()
        if current is None:
            raise FileNotFoundError("no checkpoint yet: run `freshrec train` first")
        if current.store and current.store != self.store_id:
            raise OtherStore(
                f"checkpoint version {current.version} in {self.checkpoints.folder} was written for another store "
                f"(its offset {current.offset:,} means nothing in {redact(self.settings.store_url)}): "
                "move that checkpoints folder away, or use another --data folder"
            )
        version, state = self.checkpoints.load(current.version)
        text = self.items.load(state["item_ids"])
        self.model = self._new_model(text)
        self.model.load_state(state["model"])  # the text table is the store's: checkpoints leave it out
        if self.model.private is not None and version.note not in CLEAN:
            # the last run did not stop cleanly: the events after this checkpoint may have
            # been learned already (and their effect served), and are learned again
            self.model.private.uses += 1
        self.users = self._histories(state.get("user_ids", []))
        self.quarantine.load(state.get("quarantine", {}))
        self.state = Progress(offset=version.offset, learned=version.events_learned)
        self.checkpoint_version, self.updates, self._unsaved = version.version, 0, 0
        # the log up to the checkpoint is not read again: each user's history is read
        # from the store when their next event comes (their last events before it)
        self._publish(force=True)
        return version

    def catch_up(self, checkpoint_every: int | None = None) -> int:
        """Learn every event after the current offset; returns how many."""
        self._ready(checkpoint_every)
        learned = 0
        while events := self.store.read_events(self.state.offset, self.settings.learn.batch_size):
            learned += self._learn(events)
        self._flush()
        if self.publishing.stale:
            self._publish(force=True)
        return learned

    def follow(
        self,
        stop: threading.Event,
        checkpoint_every: int | None = None,
        feed: Feed | None = None,
    ) -> int:
        """Learn new events as they are logged until ``stop`` is set.

        A micro-batch is learned when ``batch_size`` events are waiting or the
        oldest waiting one has waited ``max_wait_ms``, whichever comes first.
        Between reads of the log the learner waits on ``feed`` (by default it
        looks again every 20 ms).
        """
        self._ready(checkpoint_every)
        feed = feed or Polling()
        size, max_wait = self.settings.learn.batch_size, self.settings.learn.max_wait_ms / 1000
        learned = 0
        waiting_since: float | None = None
        while not stop.is_set():
            events = self.store.read_events(self.state.offset, size)
            timeout = IDLE_S
            if events:
                now = time.monotonic()
                waiting_since = waiting_since or now
                if len(events) == size or now - waiting_since >= max_wait:
                    learned += self._learn(events)
                    feed.learned(self.state.offset)
                    waiting_since = None
                    continue
                timeout = max_wait - (now - waiting_since)
            else:
                waiting_since = None
                if self.publishing.owed():  # idle: what a busy sender could not take yet
                    self._publish(force=True)
                if self._checkpoint_due():  # one put off by its cost (CHECKPOINT_SHARE)
                    self._flush()
            feed.wait(stop, timeout)
        self._flush(stopping=True)
        return learned

    def _ready(self, checkpoint_every: int | None) -> None:
        if self.model is None:
            self.resume()
        self.checkpoint_every = checkpoint_every or self.settings.learn.checkpoint_every
        if self.model is not None and self.model.private is not None:
            current = self.checkpoints.current()
            if current is not None and current.note in CLEAN:
                with self._lock:  # from now on, a crash may leave learned events behind the checkpoint
                    self._checkpoint(LEARNING)

    def _learn(self, events: list[Event]) -> int:
        """One micro-batch: learn it, advance the offset, checkpoint when due."""
        with self._lock:
            return self._learn_locked(events)

    def _learn_locked(self, events: list[Event]) -> int:
        assert self.model is not None
        last = events[-1].offset or self.state.offset
        if self._tombstones:
            gone = self._tombstones
            events = [e for e in events if (e.offset or 0) > gone.get(e.user_id, -1)]
            # read past a deletion's offset, no batch read before it can still arrive
            self._tombstones = {u: at for u, at in gone.items() if at > last}
        events = [e for e in events if self.quarantine.admit(e)]
        learned = 0
        if events:  # else only deleted or quarantined users' events: nothing to learn, but read
            self._add_new_items(events)
            batch = self._batch(events)
            self.model.learn(batch)
            learned = len(batch)
            self.state.learned += learned
            self._unsaved += learned
            self.updates += 1
        self.state.offset = last
        if self._checkpoint_due():
            self._checkpoint("online")
        self._publish()  # serving reads the learned offset from snapshots, so also when nothing was learned
        return learned

    def _checkpoint_due(self) -> bool:
        return self._unsaved >= self.checkpoint_every and self._saving.due()

    def _flush(self, stopping: bool = False) -> None:
        """Checkpoint what is not yet saved. ``stopping``: the learner stops cleanly, which
        the checkpoint says (note ``stop``), so that a resume from it knows nothing was
        learned after it; with privacy on, it is written even with nothing unsaved."""
        with self._lock:
            private = self.model is not None and self.model.private is not None
            if self._unsaved or (stopping and private):
                self._checkpoint(STOPPED if stopping else "online")

    def _checkpoint(self, note: str) -> Version:
        assert self.model is not None
        health = self.model.trainer.health
        state = {
            "model": self.model.state(),
            "item_ids": self.items.ids,
            "user_ids": self.users.ids,
            "quarantine": self.quarantine.state(),
        }
        loss = None if np.isnan(health.last_loss) else float(health.last_loss)
        self._unsaved, started = 0, time.monotonic()
        version = self.checkpoints.save(state, self.state.offset, self.state.learned, loss, note, self.store_id)
        self._saving.ran(time.monotonic() - started)
        self.checkpoint_version, self.updates = version.version, 0
        return version

    def figures(self) -> dict[str, int]:
        """What the server shows of the learner's stream hygiene and safeguards: users in
        quarantine and their events, micro-batches reverted as loss spikes or skipped as
        not finite (counted since the first warm start: checkpoints keep them)."""
        health = self.model.trainer.health if self.model is not None else None
        return {
            **self.quarantine.figures(),
            "reverted_spikes": health.reverted_spikes if health else 0,
            "skipped_batches": health.skipped_non_finite if health else 0,
        }

    def snapshot(self) -> Snapshot:
        """The current parameters, whole, without the blend (serving gets the model through
        :attr:`publishing`)."""
        assert self.model is not None
        return Snapshot.of(self.model.net, self.items.ids, self.users.ids, **self._info())

    def _info(self) -> dict[str, int]:
        return {"checkpoint": self.checkpoint_version, "updates": self.updates, "offset": self.state.offset}

    def _publish(self, force: bool = False) -> None:
        """Hand the model to serving if its sender is ready (or ``force``)."""
        if self.model is not None:
            self.publishing.publish(self.model, force, item_ids=self.items.ids, user_ids=self.users.ids, **self._info())
