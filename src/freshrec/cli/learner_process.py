"""The online learner in a process of its own, beside the HTTP server.

Why a process and not a thread: on a small machine the request handlers and
the learner each need most of a core, and in one interpreter they queue for
the same lock. Measured on the 2-core reference machine with a 10,000-item
catalog (``benchmarks/serve.py``): 200 recommendation requests/s alone were
served with a p99 of 37 ms and 500 events/s alone with a p99 of 24 ms, but
with the learner as a thread both together made requests wait seconds.

The process owns the learner: it resumes from the checkpoint (or warm-starts),
follows the log in the shared SQLite file, checkpoints, and sends model
snapshots (at most one per ``publish_interval_ms``) and its state to the
server through a pipe. The server sends back the users to forget.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.online import Learner, NoCatalog
from freshrec.model.snapshot import Snapshot
from freshrec.settings import Settings
from freshrec.storage import open_store

log = logging.getLogger("freshrec.learner")


def limit_threads(n: int) -> None:
    """``n`` threads for torch and for NumPy's BLAS alike. The server and the learner
    share the cores; OpenBLAS by default starts a thread per core and, when one is
    busy elsewhere, a small matrix product waits for it: under load, scoring one
    user against 10,000 items took 1.6 ms instead of 0.05 ms."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


class Sender:
    """Sends the newest snapshot at most once per interval; never drops the last one."""

    def __init__(self, pipe: Connection, interval_s: float):
        self.pipe = pipe
        self.interval = interval_s
        self.pending: Snapshot | None = None
        self.closed = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="freshrec-sender", daemon=True)
        self.thread.start()

    def snapshot(self, snapshot: Snapshot) -> None:
        with self.lock:
            self.pending = snapshot
            self.lock.notify()

    def message(self, *message: Any) -> None:
        with self.lock:
            self.pipe.send(message)

    def _run(self) -> None:
        while True:
            with self.lock:
                while self.pending is None and not self.closed:
                    self.lock.wait()
                if self.pending is None:
                    return
                snapshot, self.pending = self.pending, None
                self.pipe.send(("snapshot", snapshot.to_bytes()))
            time.sleep(self.interval)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify()
        self.thread.join()


def learner_main(settings: Settings, pipe: Connection, commands: Queue[Any], halt: ProcessEvent) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the server stops this
    # process through ``halt``, after its last micro-batch and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings.serve.learner_niceness and hasattr(os, "nice"):
        os.nice(settings.serve.learner_niceness)
    limit_threads(settings.serve.torch_threads)
    store = open_store(settings.store_url, settings.storage)
    checkpoints = Checkpoints(settings.data_dir / "checkpoints")
    sender = Sender(pipe, settings.serve.publish_interval_ms / 1000)
    reported: dict[str, int] = {}

    def updated(snapshot: Snapshot) -> None:
        sender.snapshot(snapshot)
        figures = learner.quarantine.figures()
        if figures != reported:
            reported.update(figures)
            sender.message("hygiene", figures)

    learner = Learner(store, settings, checkpoints, on_update=updated)

    def obey() -> None:
        while (command := commands.get()) is not None:
            if command[0] == "forget":
                learner.forget_user(command[1])

    commander = threading.Thread(target=obey, name="freshrec-commands", daemon=True)
    commander.start()
    try:
        while not halt.is_set():
            try:
                if learner.model is None:
                    if checkpoints.current() is None:
                        sender.message("state", "warm start", True)
                        learner.train()
                    else:
                        sender.message("state", "loading checkpoint", True)
                        learner.resume()
                sender.message("state", "following", True)
                gc.freeze()  # the model is long-lived: keep it out of the collector's scans
                learner.follow(halt)  # type: ignore[arg-type]
            except NoCatalog as exc:
                sender.message("state", f"waiting: {exc}", False)
                halt.wait(2.0)
            except Exception as exc:  # keep going; the learner retries from its checkpoint
                log.exception("learner failed")
                sender.message("state", f"failed ({type(exc).__name__}: {exc}); retrying", True)
                learner.model = None
                halt.wait(5.0)
    finally:
        commander.join(timeout=60)  # a deletion in progress finishes erasing the checkpoints
        sender.close()
        store.close()
        pipe.close()
