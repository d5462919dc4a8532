"""``serve --role learner``: the one learner of a deployment of API replicas.

It hears of new events and deletions on the Redis bus and leaves its snapshots
and state in the shared store for the replicas (:mod:`freshrec.serve.replica`).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from freshrec.bus import RedisBus
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.lease import Lease, LeaseHeld
from freshrec.learn.sender import Sender
from freshrec.learn.worker import run_learner
from freshrec.runtime import end_past_stuck_threads, last_steps
from freshrec.serialization import Malformed
from freshrec.settings import Settings
from freshrec.storage import Store, open_store

log = logging.getLogger("freshrec.learner")

LEARNER_GRACE_S = 5.0
"""After SIGTERM, how long ``serve --role learner`` waits for its learner's last micro-batch."""
STORE_EVERY_S = 30.0
"""A deployment's learner writes its newest snapshot and checkpoint to the shared store at
most this often: tens of megabytes, which the store's one writer would otherwise carry
several times a second."""


class Throttled:
    """Hands the newest of what it is offered to ``write`` at most once per ``every_s``
    (at once when ``urgent``); :meth:`flush` writes what is still waiting."""

    def __init__(self, write: Callable[[bytes], object], every_s: float = STORE_EVERY_S):
        self.write, self.every = write, every_s
        self.written_at = float("-inf")
        self.waiting: bytes | None = None
        self.lock = threading.Lock()

    def offer(self, data: bytes, urgent: bool = False) -> None:
        with self.lock:
            self.waiting = data
            if urgent or time.monotonic() - self.written_at >= self.every:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        if self.waiting is not None:
            self.write(self.waiting)
            self.waiting, self.written_at = None, time.monotonic()


def shared_checkpoints(settings: Settings, store: Store) -> tuple[Checkpoints, Throttled]:
    """A deployment's learner mirrors its current checkpoint to the shared store (through
    the returned shelf: at most every ``STORE_EVERY_S``, at once after an erasure rewrote
    it; flush it when the learner stops) and, started with an empty data folder (a new
    machine), resumes from that copy instead of warm-starting from the whole log."""
    shelf = Throttled(lambda data: store.publish("checkpoint", data))
    checkpoints = Checkpoints.of(settings, mirror=shelf.offer)
    if checkpoints.current() is None and (shared := store.published("checkpoint")) is not None:
        try:
            version = checkpoints.restore(shared[1])
        except Malformed as exc:
            log.warning("refused the shared store's checkpoint (%s); learning from the log instead", exc)
        else:
            log.info("resuming from the shared store's checkpoint %d (offset %d)", version.version, version.offset)
    return checkpoints, shelf


def learner_role_main(settings: Settings, halt: threading.Event) -> None:
    """``serve --role learner``: the one learner of a deployment of API replicas.
    Every model snapshot goes to the bus; the newest snapshot and checkpoint go to the
    shared store now and then (and when it stops), its state to the store at once;
    replicas look for them every ``cluster.poll_ms``."""
    bus = RedisBus(settings.cluster)
    store = open_store(settings.store_url, settings.storage)
    status: dict[str, Any] = {}

    def message(message: tuple[Any, ...]) -> None:
        if message[0] == "erasures":  # replicas count them in the store
            return
        if message[0] == "state":
            status.update(state=message[1], wanted=message[2])
        elif message[0] == "hygiene":
            status.update(hygiene=message[1])
        try:
            store.publish("learner", json.dumps(status).encode())
        except Exception:
            log.exception("could not publish the learner's state")

    lease = Lease(store, settings.learn.lease_s)
    try:
        lease.take()  # before anything is written: LeaseHeld ends this learner
    except LeaseHeld:
        store.close()
        bus.close()
        raise
    snapshots = Throttled(lambda data: store.publish("snapshot", data))
    checkpoints, checkpoint_shelf = shared_checkpoints(settings, store)

    def deliver(data: bytes, start: bool) -> None:
        try:
            bus.put_snapshot(data, start)
        finally:  # the store's copy (whole ones only) is kept even when Redis is away
            if start:
                snapshots.offer(data)

    sender = Sender(
        deliver,
        message,
        settings.cluster.snapshot_interval_ms / 1000,
        settings.cluster.key(),
        full_every_s=settings.serve.snapshot_full_s,
        counts=True,
    ).start()
    failed: list[BaseException] = []

    def learn() -> None:
        try:
            run_learner(settings, store, checkpoints, sender, halt, bus=bus, wait_for_lease=False, lease=lease)
        except BaseException as exc:  # raised again below, in this thread
            failed.append(exc)

    # the learner runs beside: a micro-batch stuck on a store that went away must not
    # hold a SIGTERM for the store's timeouts
    worker = threading.Thread(target=learn, name="freshrec-learner", daemon=True)
    worker.start()
    try:
        while worker.is_alive() and not halt.wait(0.5):
            pass
        worker.join(LEARNER_GRACE_S)
        if worker.is_alive():
            log.warning("the learner's last micro-batch did not end within %.0f s; stopping", LEARNER_GRACE_S)
        if failed:
            raise failed[0]
    finally:
        last_steps(
            [
                ("release the learner lease", lambda: lease.release(raising=True)),
                ("publish the last snapshot copy", snapshots.flush),
                ("publish the last checkpoint copy", checkpoint_shelf.flush),
                ("close the store", store.close),
                ("close the bus", bus.close),
            ],
            within_s=3.0,
        )


def run_role(settings: Settings) -> None:
    """The learner in the foreground until SIGTERM or Ctrl-C, then its last steps.
    Raises :class:`~freshrec.bus.BusError` or :class:`~freshrec.learn.lease.LeaseHeld`
    when it cannot start."""
    halt = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        halt.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    learner_role_main(settings, halt)
    end_past_stuck_threads(0)
