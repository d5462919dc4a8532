"""The store's background upkeep in the learner, one thread: what the store derives from
the log to answer reads faster (:meth:`~freshrec.storage.base.Store.maintain`: SQLite's
sorted runs of the per-user index), a short step at a time.

Why in the learner: it is the process that does the deployment's background work, and a
step's write transaction holds up its own writes (checkpoints), not a request. Why
paced: the learner's core also trains, and the server's event loop shares the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from freshrec.storage.base import Store

log = logging.getLogger(__name__)

STEP_S = 0.05
"""Seconds of work per call to the store (a step, each its own transaction, is shorter)."""
SHARE = 0.2
"""At most this share of the time goes to the upkeep: after work that took ``t``, the next
starts ``t / SHARE`` later."""
IDLE_S = 30.0
"""How often to look again when nothing was left (a log segment fills in minutes at
hundreds of events a second)."""


class Upkeep:
    """Calls ``store.maintain`` paced by :data:`SHARE`, while ``allowed()`` (the learner
    holds its lease: one learner at a time does it), until ``halt`` is set."""

    def __init__(self, store: Store, halt: threading.Event, allowed: Callable[[], bool] = lambda: True):
        self.store = store
        self.halt = halt
        self.allowed = allowed
        self.thread = threading.Thread(target=self.run, name="freshrec-upkeep", daemon=True)

    def start(self) -> Upkeep:
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.halt.is_set():
            self.halt.wait(self.round())

    def round(self) -> float:
        """One call's work; the seconds to wait before the next."""
        if not self.allowed():
            return IDLE_S
        started = time.monotonic()
        try:
            more = self.store.maintain(STEP_S)
        except Exception as exc:  # a busy or absent store: its next round tries again
            log.warning("the store's upkeep failed (%s); trying again in %.0f s", exc, IDLE_S)
            return IDLE_S
        return (time.monotonic() - started) * (1 - SHARE) / SHARE if more else IDLE_S
