"""One learner per store: a lease in the store, renewed while the learner lives.

Two learners on one store would each write checkpoints and publish models, the
newer one overwriting the older one's at random. A learner therefore takes the
store's ``learner`` lease (holder: host, pid and a random suffix) before it
learns, and renews it every third of ``[learn] lease_s``. A lease not renewed for
``lease_s`` (its holder died, or hangs) may be taken over; its fencing token then
grows, and the old holder's next renewal fails: from then on it writes no
checkpoint and publishes nothing (:attr:`Lease.valid`), and stops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from freshrec.storage.base import LeaseState, Store

log = logging.getLogger(__name__)

NAME = "learner"


def _died_here(holder: str) -> bool:
    """Whether ``holder`` (``host:pid:suffix``) names a process of this machine that no
    longer runs."""
    host, _, pid = holder.rpartition(":")[0].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, as another user
        return False
    return False


class LeaseHeld(RuntimeError):
    """Another live learner holds the store's lease."""

    def __init__(self, state: LeaseState):
        super().__init__(f"another learner holds this store's lease: {state.holder}, renewed {state.age_s:.0f} s ago")
        self.state = state


class Lease:
    """The store's learner lease, for this process.

    Parameters
    ----------
    store
        Where the lease lives (a learner's own connection; renewals run on a thread).
    ttl_s
        ``[learn] lease_s``: unrenewed for this long, the lease may be taken over.
    on_lost
        Called once if the lease is lost (another learner took it over).
    """

    def __init__(self, store: Store, ttl_s: float, on_lost: Callable[[], None] | None = None):
        self.store = store
        self.ttl_s = ttl_s
        self.on_lost = on_lost
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token: int | None = None
        self._renewed = 0.0
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Take the lease and start renewing it, or raise :class:`LeaseHeld`."""
        state = self.store.take_lease(NAME, self.holder, self.ttl_s)
        if state.holder != self.holder and _died_here(state.holder):
            # a learner of this machine that is gone (killed with its server): no need to
            # wait out its lease before starting again
            log.info("taking over the learner lease of %s, which is no longer running", state.holder)
            state = self.store.take_lease(NAME, self.holder, 0.0)
        if state.holder != self.holder:
            raise LeaseHeld(state)
        self.token, self._renewed, self._lost = state.token, time.monotonic(), False
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="freshrec-lease", daemon=True)
        self._thread.start()

    def wait(self, halt: threading.Event, waiting: Callable[[LeaseState], None], every_s: float = 2.0) -> bool:
        """Take the lease once it is free; ``waiting`` is told who holds it meanwhile.
        False if ``halt`` was set first."""
        while not halt.is_set():
            try:
                self.take()
                return True
            except LeaseHeld as held:
                waiting(held.state)
            halt.wait(every_s)
        return False

    @property
    def valid(self) -> bool:
        """Whether this process still holds the lease: taken, not lost, and renewed
        within ``ttl_s`` (a renewal that cannot reach the store does not count)."""
        return self.token is not None and not self._lost and time.monotonic() - self._renewed < self.ttl_s

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            assert self.token is not None
            try:
                mine = self.store.renew_lease(NAME, self.holder, self.token)
            except Exception as exc:  # the store may be briefly away; valid lapses if it stays away
                log.warning("could not renew the learner lease: %s", exc)
                continue
            if mine:
                self._renewed = time.monotonic()
                continue
            self._lost = True
            log.error("this learner lost the store's lease to another one; it stops writing and publishing")
            if self.on_lost is not None:
                self.on_lost()
            return

    def release(self, raising: bool = False) -> None:
        """Give the lease up; where the store cannot be reached it expires by itself (with
        ``raising``, the error is raised after that, for a caller that reports it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        token, self.token = self.token, None
        if token is not None and not self._lost:
            try:
                self.store.release_lease(NAME, self.holder, token)
            except Exception as exc:
                if raising:
                    raise
                log.warning("could not release the learner lease (it expires by itself): %s", exc)
