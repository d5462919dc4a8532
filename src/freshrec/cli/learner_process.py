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

``serve --role learner`` runs the same loop as a deployment's only learner: it
hears of new events and deletions on the Redis bus and leaves its snapshots
and state in the shared store for the API replicas (:func:`learner_role_main`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from freshrec.bus import RedisBus
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.erasures import Eraser
from freshrec.learn.lease import Lease, LeaseHeld
from freshrec.learn.online import IDLE_S, Feed, Interrupted, Learner, NoCatalog, Polling
from freshrec.model.snapshot import Snapshot
from freshrec.serialization import Malformed
from freshrec.settings import Settings
from freshrec.storage import Store, open_store
from freshrec.storage.base import LeaseState

log = logging.getLogger("freshrec.learner")


def limit_threads(n: int) -> None:
    """``n`` threads for torch and for NumPy's BLAS alike. The server and the learner
    share the cores; OpenBLAS by default starts a thread per core and, when one is
    busy elsewhere, a small matrix product waits for it: under load, scoring one
    user against 10,000 items took 1.6 ms instead of 0.05 ms."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


SNAPSHOT = b"snapshot\n"
"""On the pipe to the server, what starts a model snapshot's bytes; other messages
are JSON arrays. Nothing on the pipe is pickled (see :mod:`freshrec.serialization`)."""


class Sender:
    """Delivers the newest snapshot at most once per interval, never dropping the last
    one, and messages at once; both through the callables it is given, one call at a
    time (a pipe with two threads writing at once interleaves their bytes: the server
    then fails to parse what it reads and never gets a model)."""

    def __init__(
        self,
        snapshot: Callable[[bytes], object],
        message: Callable[[tuple[Any, ...]], object],
        interval_s: float,
        key: bytes | None = None,
    ):
        self._deliver, self._message = snapshot, message
        self.interval = interval_s
        self.key = key
        """Signs each snapshot (``[cluster] snapshot_key``)."""
        self.fence: Callable[[], bool] | None = None
        """While it returns false (the learner lost the store's lease), snapshots are dropped."""
        self.pending: Snapshot | None = None
        self.closed = False
        self.lock = threading.Condition()
        self._sending = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="freshrec-sender", daemon=True)
        self.thread.start()

    def snapshot(self, snapshot: Snapshot) -> None:
        with self.lock:
            self.pending = snapshot
            self.lock.notify()

    def message(self, *message: Any) -> None:
        with self._sending:
            self._message(message)

    def _run(self) -> None:
        while True:
            with self.lock:
                while self.pending is None and not self.closed:
                    self.lock.wait()
                if self.pending is None:
                    return
                snapshot, self.pending = self.pending, None
            if self.fence is not None and not self.fence():
                log.warning("a model snapshot was not published: this learner does not hold the store's lease")
                continue
            try:
                data = snapshot.to_bytes(self.key)
                with self._sending:
                    self._deliver(data)
            except Exception:  # the next snapshot is tried anyway
                log.exception("could not deliver a model snapshot")
            time.sleep(self.interval)

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is pending and stop; with ``timeout_s``, give up on a delivery
        that hangs (the store or the bus away at shutdown)."""
        with self.lock:
            self.closed = True
            self.lock.notify()
        self.thread.join(timeout_s)


PR_SET_PDEATHSIG = 1


def die_with_parent(poll_s: float = 1.0) -> None:
    """End this process when the server that started it dies, even by SIGKILL (the OOM
    killer's way), which gives the server no chance to stop it: an orphan learner would
    go on writing checkpoints beside the next server's. On Linux the kernel sends
    SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere, a thread
    watches for this process being handed to another parent. Nothing is lost: every
    acknowledged event is in the store, and the next learner resumes from the last
    checkpoint."""
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None and started_by.pid else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            log.debug("prctl is not available; the parent is watched instead")
    if os.getppid() != parent:  # died before the kernel was told
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name=PARENT_WATCH, daemon=True).start()


def learner_main(settings: Settings, pipe: Connection, commands: Queue[Any], halt: ProcessEvent) -> None:
    """The learner beside the server (``serve --role all``): snapshots and state go
    through ``pipe``, deletions come through ``commands``."""
    # Ctrl-C in a terminal reaches the whole process group; the server stops this
    # process through ``halt``, after its last micro-batch and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    store = open_store(settings.store_url, settings.storage)
    sender = Sender(
        lambda data: pipe.send_bytes(SNAPSHOT + data),
        lambda message: pipe.send_bytes(json.dumps(message).encode()),
        settings.serve.publish_interval_ms / 1000,
        settings.cluster.key(),
    )
    try:
        checkpoints = Checkpoints(settings.data_dir / "checkpoints", key=settings.cluster.key())
        run_learner(settings, store, checkpoints, sender, halt, commands=commands)  # type: ignore[arg-type]
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
) -> None:
    """Take the store's learner lease (waiting for it, or raising
    :class:`~freshrec.learn.lease.LeaseHeld` if ``wait_for_lease`` is false), resume or
    warm-start, then follow the log until ``halt``; retry after failures. Closes
    ``sender`` at the end.

    Deleted users are erased from the store's pending erasures, at once when
    ``commands`` (a queue, ended by ``None``) or the ``bus`` says so, else at the next
    poll."""
    if settings.serve.learner_niceness and hasattr(os, "nice"):
        os.nice(settings.serve.learner_niceness)
    limit_threads(settings.serve.torch_threads)
    reported: dict[str, int] = {}

    def updated(snapshot: Snapshot) -> None:
        sender.snapshot(snapshot)
        figures = learner.figures()
        if figures != reported:
            reported.update(figures)
            sender.message("hygiene", figures)

    learner = Learner(store, settings, checkpoints, on_update=updated)

    owned = lease is None  # a lease handed in is the caller's to release
    lease = lease or Lease(store, settings.learn.lease_s)
    checkpoints.fence = sender.fence = lambda: lease.valid
    eraser = Eraser(
        store, learner.forget_user, halt, allowed=lambda: lease.valid, report=lambda n: sender.message("erasures", n)
    ).start()
    feed: Feed = Polling() if bus is None else BusFeed(bus, eraser)

    def obey() -> None:
        assert commands is not None
        while (command := commands.get()) is not None:
            if command[0] == "erase":  # the deletion is recorded in the store: carried out from there
                eraser.wake()

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
            try:
                if learner.model is None:
                    if checkpoints.current() is None:
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
    finally:
        if commands is not None:
            commander.join(timeout=5)
        eraser.close(timeout_s=60)  # an erasure in progress finishes rewriting the checkpoints
        sender.close(timeout_s=SENDER_GRACE_S)
        if owned:
            last_steps([("release the learner lease", lease.release)], within_s=2.0)


def last_steps(steps: list[tuple[str, Callable[[], object]]], within_s: float = 5.0) -> bool:
    """Run a stopping process's last steps, all of them within ``within_s`` seconds:
    with the store or the bus away, each would otherwise wait for its own timeout and
    a SIGTERM would take minutes. Those that fail or are cut short are named in one log
    line (what is acknowledged is in the store, and the checkpoint on disk is current,
    so nothing is lost). True if all completed."""
    deadline = time.monotonic() + within_s
    missed = []
    for what, step in steps:
        failed: list[BaseException] = []

        def run(step: Callable[[], object] = step, failed: list[BaseException] = failed) -> None:
            try:
                step()
            except Exception as exc:
                failed.append(exc)

        worker = threading.Thread(target=run, name="freshrec-last-step", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive() or failed:
            reason = "timed out"
            if failed:  # the message's first line: the log line stays one line
                said = str(failed[0]).strip().splitlines() or [""]
                reason = f"{type(failed[0]).__name__}: {said[0]}"
            missed.append(f"{what} ({reason})")
    if missed:
        log.warning("stopped without being able to %s; nothing acknowledged is lost", "; ".join(missed))
    return not missed


def end_past_stuck_threads(code: int = 0) -> None:
    """End the process at once when threads it started are still blocked, on a store or
    bus that went away: Python's own shutdown would wait for them or, with a daemon
    thread holding a lock the interpreter needs at exit (stderr's, a connection
    pool's), abort with SIGABRT. Called once the last steps are done, so what is
    acknowledged is in the store and the checkpoint on disk is current."""
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("freshrec-") and t.name != PARENT_WATCH and t.is_alive()
    ]
    if not stuck:
        return
    log.warning("leaving %d blocked thread(s) behind: %s", len(stuck), ", ".join(sorted(set(stuck))))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


PARENT_WATCH = "freshrec-parent-watch"
LEARNER_GRACE_S = 5.0
"""After SIGTERM, how long ``serve --role learner`` waits for its learner's last micro-batch."""
SENDER_GRACE_S = 2.0
"""How long a stopping learner waits for its last snapshot and state to be delivered."""

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
    checkpoints = Checkpoints(settings.data_dir / "checkpoints", mirror=shelf.offer, key=settings.cluster.key())
    if checkpoints.current() is None and (shared := store.published("checkpoint")) is not None:
        try:
            version = checkpoints.restore(shared[1])
        except Malformed as exc:
            log.warning("refused the shared store's checkpoint (%s); learning from the log instead", exc)
        else:
            log.info("resuming from the shared store's checkpoint %d (offset %d)", version.version, version.offset)
    return checkpoints, shelf


class BusFeed:
    """The learner's :class:`~freshrec.learn.online.Feed` on the Redis bus: wakes at each
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

    def deliver(data: bytes) -> None:
        try:
            bus.put_snapshot(data)
        finally:  # the store's copy is kept even when Redis is away
            snapshots.offer(data)

    sender = Sender(deliver, message, settings.cluster.snapshot_interval_ms / 1000, settings.cluster.key())
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
                ("release the learner lease", lease.release),
                ("publish the last snapshot copy", snapshots.flush),
                ("publish the last checkpoint copy", checkpoint_shelf.flush),
                ("close the store", store.close),
                ("close the bus", bus.close),
            ],
            within_s=3.0,
        )
