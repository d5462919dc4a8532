"""Carrying out deletions in the learner: the store's pending erasures, one thread.

``DELETE /v1/users/{id}`` removes the user's events and records a pending erasure in
the same transaction (:meth:`~freshrec.storage.base.Store.delete_user`); what the
learner learned from them (its in-memory history, embedding row, replay buffer and
every checkpoint version) is erased here. The store's record, not a message, is what
is carried out: a server's queue or the bus only wakes the eraser, so a deletion
survives a restart of any process, and one that fails (a full disk, a store that is
away) is retried with backoff without holding up the ones queued after it or ending
the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from freshrec.ingest.hygiene import Quarantine
from freshrec.model.freshrec import FreshRec
from freshrec.storage.base import Store

log = logging.getLogger(__name__)

POLL_S = 10.0
"""How often the eraser looks at the store unwoken (a deletion made while no learner ran,
or announced on a bus that was away)."""
FIRST_RETRY_S = 1.0
LONGEST_RETRY_S = 60.0


class Eraser:
    """Erase each pending erasure with ``forget(user_id, at)``, then mark it done in
    the store. ``forget`` must be idempotent (a crash between it and the store's
    record repeats it).

    Parameters
    ----------
    store
        Where the pending erasures are recorded.
    forget
        The learner's :meth:`~freshrec.learn.online.Learner.forget_user`.
    halt
        Ends :meth:`run`.
    allowed
        Whether this learner may write now (it holds the store's learner lease): a
        standby learner leaves erasures to the one that writes the checkpoints.
    report
        Called with the number still pending after each round that changed it (the
        server shows it as ``freshrec_erasures_pending``).
    """

    def __init__(
        self,
        store: Store,
        forget: Callable[[str, int], None],
        halt: threading.Event,
        allowed: Callable[[], bool] = lambda: True,
        report: Callable[[int], None] = lambda n: None,
    ):
        self.store = store
        self.forget = forget
        self.halt = halt
        self.allowed = allowed
        self.report = report
        self.reported: int | None = None
        self.woken = threading.Event()
        self.failures = 0
        """Consecutive failed rounds (0 once one succeeds)."""
        self.thread = threading.Thread(target=self.run, name="freshrec-eraser", daemon=True)

    def start(self) -> Eraser:
        self.thread.start()
        return self

    def wake(self) -> None:
        """A deletion was recorded: carry it out now rather than at the next poll."""
        self.woken.set()

    def run(self) -> None:
        wait = 0.0  # look at once: deletions made while no learner ran
        while not self.halt.is_set():
            if wait:
                self.woken.wait(wait)
            self.woken.clear()
            if self.halt.is_set():
                return
            wait = POLL_S if self.round() else min(FIRST_RETRY_S * 2**self.failures, LONGEST_RETRY_S)

    def round(self) -> bool:
        """Carry out every pending erasure; false (after logging why) if any failed. One
        that fails does not hold up the others."""
        if not self.allowed():
            return True
        try:
            pending = self.store.pending_erasures()
        except Exception as exc:
            self._failed("reading the pending erasures", exc)
            self.failures += 1
            return False
        ok, left = True, len(pending)
        self._report(left)
        for erasure in pending:
            if self.halt.is_set():
                break
            try:
                self.forget(erasure.user_id, erasure.at)
                self.store.erasure_done(erasure)
                left -= 1
            except Exception as exc:  # no user id in the log: it is what is being erased
                asked = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(erasure.asked_at))
                ok = self._failed(f"an erasure asked for at {asked} UTC", exc)
        self._report(left)
        self.failures = 0 if ok else self.failures + 1
        return ok

    def _report(self, pending: int) -> None:
        if pending != self.reported:
            self.reported = pending
            try:
                self.report(pending)
            except Exception:  # a figure for the server: never worth ending the thread over
                log.debug("could not report the pending erasures", exc_info=True)

    def _failed(self, what: str, exc: Exception) -> bool:
        """Log the failure (with its traceback the first time in a row)."""
        log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc, exc_info=self.failures == 0)
        return False

    def close(self, timeout_s: float) -> None:
        """Stop (``halt`` is set): wake the thread from its poll, and wait for an erasure in
        progress to finish rewriting the checkpoints."""
        self.woken.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)


def erased_state(
    state: dict[str, Any], user_id: str, new_model: Callable[[np.ndarray], FreshRec]
) -> dict[str, Any] | None:
    """A checkpoint's state without the user, or ``None`` if it never held them;
    ``new_model`` builds a model of the settings on a text table (the user's rows do
    not depend on it, so zeros do)."""
    quarantine = Quarantine.erased(state.get("quarantine", {}), user_id)
    if quarantine is not None:
        state = {**state, "quarantine": quarantine}
    user_ids = list(state.get("user_ids", []))
    if user_id not in user_ids:
        return None if quarantine is None else state
    code = user_ids.index(user_id)
    user_ids[code] = None
    net = state["model"]["trainer"]["net"]
    n_items, width = net["item_id.weight"].shape[0], net["text_bias.weight"].shape[1]
    model = new_model(np.zeros((n_items, width), dtype=np.float32))
    model.load_state(state["model"])
    model.forget_user(code)
    return {**state, "user_ids": user_ids, "model": model.state()}
