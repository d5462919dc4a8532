"""The online learner in a process of its own, beside the HTTP server.

Why a process and not a thread: on a small machine the request handlers and
the learner each need most of a core, and in one interpreter they queue for
the same lock. Measured on the 2-core reference machine with a 10,000-item
catalog (``benchmarks/serve.py``): 200 recommendation requests/s alone were
served with a p99 of 37 ms and 500 events/s alone with a p99 of 24 ms, but
with the learner as a thread both together made requests wait seconds.

The process owns the learner: it resumes from the checkpoint (or warm-starts),
follows the log in the shared store, checkpoints, and sends model snapshots (at
most one per ``publish_interval_ms``) and its state to the server through a
pipe. The server wakes its eraser (:mod:`freshrec.learn.erasures`) at each
deletion, which it recorded in the store.

A deployment's only learner (``serve --role learner``) runs the same loop,
:func:`run_learner`, from :mod:`freshrec.learn.role`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from freshrec.bus import RedisBus
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.erasures import Eraser
from freshrec.learn.feed import IDLE_S, Feed, Polling
from freshrec.learn.items import NoCatalog
from freshrec.learn.lease import Lease, LeaseHeld
from freshrec.learn.online import Interrupted, Learner
from freshrec.learn.sender import Sender
from freshrec.learn.upkeep import Upkeep
from freshrec.model.deltas import SnapshotDelta
from freshrec.model.snapshot import Snapshot
from freshrec.runtime import (
    ARM_SNAPSHOT,
    SNAPSHOT,
    SWITCH_INTERVAL_S,
    die_with_parent,
    last_steps,
    limit_threads,
    log_to_stderr,
)
from freshrec.settings import Settings
from freshrec.storage import Store, open_store
from freshrec.storage.base import LeaseState

log = logging.getLogger("freshrec.learner")

SENDER_GRACE_S = 2.0
"""How long a stopping learner waits for its last snapshot and state to be delivered."""


def learner_main(settings: Settings, pipe: Connection, commands: Queue[Any], halt: ProcessEvent) -> None:
    """The learner beside the server (``serve --role all``): snapshots and state go
    through ``pipe``, deletions come through ``commands``. With an experiment, each arm
    whose settings differ from the defaults is learned too, its snapshots tagged with
    its name (:data:`~freshrec.runtime.ARM_SNAPSHOT`)."""
    # Ctrl-C in a terminal reaches the whole process group; the server stops this
    # process through ``halt``, after its last micro-batch and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # the process is this learner's own
    log_to_stderr()  # the server's --log-level
    store = open_store(settings.store_url, settings.storage)
    writing = threading.Lock()  # every sender writes to the one pipe: one message at a time

    def send(data: bytes) -> None:
        with writing:
            pipe.send_bytes(data)

    own = settings.own_arms()
    # the server builds every snapshot it gets: the models share one model's publish
    # budget, each publishing as often as the others (a fair comparison of freshness)
    interval_s = settings.serve.publish_interval_ms / 1000 * (1 + len(own))

    def sender_for(tag: bytes, arm: str | None) -> Sender:
        def message(m: tuple[Any, ...]) -> None:
            send(json.dumps(m if arm is None else ["arm", arm, *m]).encode())

        return Sender(
            lambda data, start: send(tag + data),
            message,
            interval_s,
            settings.cluster.key(),
            full_every_s=settings.serve.snapshot_full_s,
            counts=True,
        ).start()

    sender = sender_for(SNAPSHOT, None)
    arms = {arm: (settings.for_arm(arm), sender_for(ARM_SNAPSHOT + arm.encode() + b"\n", arm)) for arm in own}
    try:
        checkpoints = Checkpoints.of(settings)
        run_learner(settings, store, checkpoints, sender, halt, commands=commands, arms=arms)  # type: ignore[arg-type]
    finally:
        store.close()
        pipe.close()


def run_learner(
    settings: Settings,
    store: Store,
    checkpoints: Checkpoints,
    sender: Sender,
    halt: threading.Event,
    commands: Queue[Any] | None = None,
    bus: RedisBus | None = None,
    wait_for_lease: bool = True,
    lease: Lease | None = None,
    arms: Mapping[str, tuple[Settings, Sender]] | None = None,
) -> None:
    """Take the store's learner lease (waiting for it, or raising
    :class:`~freshrec.learn.lease.LeaseHeld` if ``wait_for_lease`` is false), resume or
    warm-start, then follow the log until ``halt``; retry after failures. Closes
    ``sender`` at the end.

    Deleted users are erased from the store's pending erasures, at once when
    ``commands`` (a queue, ended by ``None``) or the ``bus`` says so, else at the next
    poll.

    ``arms`` are an experiment's arms with models of their own: each is learned by a
    :class:`~freshrec.learn.online.Learner` of its own (its checkpoints in its own data
    folder) in a thread, under the same lease, and erasures reach every one of them."""
    if settings.serve.learner_niceness and hasattr(os, "nice"):
        os.nice(settings.serve.learner_niceness)
    limit_threads(settings.serve.torch_threads)
    reported: dict[str, int] = {}

    def updated(snapshot: Snapshot | SnapshotDelta) -> None:
        sender.snapshot(snapshot)
        figures = learner.figures()
        if figures != reported:
            reported.update(figures)
            sender.message("hygiene", figures)

    learner = Learner(store, settings, checkpoints, on_update=updated)
    others = {
        arm: (Learner(store, s, Checkpoints.of(s), on_update=arm_sender.snapshot), arm_sender)
        for arm, (s, arm_sender) in (arms or {}).items()
    }
    for one, its_sender in [(learner, sender), *others.values()]:
        one.publishing.counts_due, one.publishing.due = its_sender.counts_due, its_sender.due
        one.publishing.counts_ride = its_sender.counts_ride

    owned = lease is None  # a lease handed in is the caller's to release
    lease = lease or Lease(store, settings.learn.lease_s)
    checkpoints.fence = sender.fence = lambda: lease.valid
    for other, other_sender in others.values():
        other.checkpoints.fence = other_sender.fence = lambda: lease.valid

    def forget(user_id: str, at: int) -> None:
        learner.forget_user(user_id, at)
        for other, _ in others.values():
            other.forget_user(user_id, at)

    eraser = Eraser(
        store, forget, halt, allowed=lambda: lease.valid, report=lambda n: sender.message("erasures", n)
    ).start()
    Upkeep(store, halt, allowed=lambda: lease.valid).start()
    arm_threads = [
        threading.Thread(
            target=_learn_arm, args=(other, other_sender, halt, lease), name=f"freshrec-arm-{arm}", daemon=True
        )
        for arm, (other, other_sender) in others.items()
    ]
    for thread in arm_threads:
        thread.start()
    feed: Feed = Polling() if bus is None else BusFeed(bus, eraser)

    def obey() -> None:
        assert commands is not None
        while (command := commands.get()) is not None:
            if command[0] == "erase":  # the deletion is recorded in the store: carried out from there
                eraser.wake()
            elif command[0] == "served":  # ("served", seconds, arm or None): a whole snapshot's cost
                _, seconds, arm = command
                served = sender if arm is None else (arms or {}).get(arm, (None, None))[1]
                if served is not None:
                    served.served(seconds)

    commander = threading.Thread(target=obey, name="freshrec-commands", daemon=True)
    if commands is not None:
        commander.start()

    def waiting(held: LeaseState) -> None:
        state = f"waiting for lease (held by {held.holder}, renewed {held.age_s:.0f} s ago)"
        sender.message("state", state, True)

    try:
        while not halt.is_set():
            if not lease.valid:
                lease.release()
                learner.model = None  # whatever it learned meanwhile, the holder has learned too
                try:
                    if not wait_for_lease:
                        lease.take()  # LeaseHeld ends a learner that must not wait
                    elif not lease.wait(halt, waiting):
                        break
                except LeaseHeld:
                    raise
                except Exception as exc:  # the store is away: wait for it, do not die
                    log.warning("could not take the learner lease (%s); retrying", exc)
                    sender.message("state", f"waiting for the store: {exc}", True)
                    halt.wait(5.0)
                    continue
            learn_until_halted(learner, sender, halt, feed)
    finally:
        if commands is not None:
            commander.join(timeout=5)
        for thread in arm_threads:  # each finishes its micro-batch and checkpoints on ``halt``
            thread.join(timeout=60)
        for _, other_sender in others.values():
            other_sender.close(timeout_s=SENDER_GRACE_S)
        eraser.close(timeout_s=60)  # an erasure in progress finishes rewriting the checkpoints
        sender.close(timeout_s=SENDER_GRACE_S)
        if owned:
            last_steps([("release the learner lease", lease.release)], within_s=2.0)


def _learn_arm(learner: Learner, sender: Sender, halt: threading.Event, lease: Lease) -> None:
    """An experiment arm's learner, in its own thread: learns while this process holds
    the lease (the default learner's loop takes and keeps it), retries after failures."""
    while not halt.is_set():
        if not lease.valid:
            learner.model = None  # whatever it learned meanwhile, the lease's holder has learned too
            halt.wait(1.0)
            continue
        learn_until_halted(learner, sender, halt, Polling())


def learn_until_halted(learner: Learner, sender: Sender, halt: threading.Event, feed: Feed) -> None:
    """Resume ``learner`` from its checkpoint (or warm-start it) if it holds no model, then
    follow the log until ``halt``. A failure is reported through ``sender`` and ends the
    call after a pause: the caller calls again and the learner starts over from its
    checkpoint."""
    try:
        if learner.model is None:
            if learner.checkpoints.current() is None:
                sender.message("state", "warm start", True)
                learner.train(halt)
            else:
                sender.message("state", "loading checkpoint", True)
                learner.resume()
        sender.message("state", "following", True)
        gc.freeze()  # the model is long-lived: keep it out of the collector's scans
        learner.follow(halt, feed=feed)
    except NoCatalog as exc:
        sender.message("state", f"waiting: {exc}", False)
        feed.wait(halt, 2.0)  # deletions are carried out meanwhile
    except Interrupted as exc:
        log.warning("shutting down: %s", exc)
    except Exception as exc:  # keep going; the learner retries from its checkpoint
        log.exception("learner failed")
        sender.message("state", f"failed ({type(exc).__name__}: {exc}); retrying", True)
        learner.model = None
        halt.wait(5.0)


class BusFeed:
    """The learner's :class:`~freshrec.learn.feed.Feed` on the Redis bus: wakes at each
    announced append, and wakes the eraser at each deletion an API replica recorded."""

    def __init__(self, bus: RedisBus, eraser: Eraser):
        self.bus = bus
        self.eraser = eraser
        bus.join()

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        if not stop.is_set():
            self.bus.wait(min(timeout_s, IDLE_S), self._command)

    def learned(self, offset: int) -> None:
        self.bus.learned(offset)

    def _command(self, name: str, argument: str) -> None:
        if name in ("erase", "forget"):  # recorded as pending in the store before it was sent
            self.eraser.wake()
        else:
            log.warning("unknown command %r on the bus; ignored", name)


def follow_until_signalled(learner: Learner) -> int:
    """``learner.follow`` until SIGINT or SIGTERM, which end it cleanly: the micro-batch
    in progress is finished and checkpointed. Returns how many events it learned."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return learner.follow(stop)
