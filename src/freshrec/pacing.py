"""Work spaced by its own cost (:class:`Paced`) or held to a share of the time
(:class:`Budgeted`): the learner's reads of the whole catalog and its checkpoints, and
serving's builds of each model it is sent, all grow with the catalog, and at a fixed
interval they would take more and more of a process's time until it fell behind (the
learner behind the log, requests behind builds)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Paced:
    """Due ``every_s`` after it last ran or, where that run took longer than ``share`` of
    that interval, ``took / share`` after: it then takes at most ``share`` of the
    process's time, however long one run takes. ``due_now``: due before its first run."""

    def __init__(
        self,
        every_s: float,
        share: float,
        due_now: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        if every_s < 0 or not 0 < share <= 1:
            raise ValueError("every_s must be >= 0 and share in (0, 1]")
        self.every_s = every_s
        self.share = share
        self.clock = clock
        self._due = clock() + (0.0 if due_now else every_s)

    def due(self) -> bool:
        return self.clock() >= self._due

    def wait_s(self) -> float:
        """Seconds until it is due (0: it is)."""
        return max(0.0, self._due - self.clock())

    def ran(self, took_s: float) -> None:
        """One run, which took ``took_s`` seconds, has just ended."""
        self._due = self.clock() + max(self.every_s, took_s / self.share)


ROUNDING_S = 1e-9
"""A wait shorter than this is none: what the sums of a clock's readings round off."""


class Budgeted:
    """Work that takes at most ``share`` of the time on average: each run spends what it
    took from a budget that grows by ``share`` seconds a second, up to ``burst_s``, and the
    work is due while the budget is not spent. ``longest_s`` bounds the wait after a costly
    run (what it spent beyond that is forgiven), for work whose next run gets cheaper the
    sooner it comes (a build of what changed since the last one): one costly run must not
    make the next one wait so long that it is costly too.

    Why not :class:`Paced`'s wait after every run: for work that comes at its own times (a
    server's builds of the model deltas its learner sends four times a second), that wait
    put off whatever came next by ten times the last run's cost, whether or not the runs
    before took their share: on a million items a build of 35 ms of the processor kept the
    next delta waiting 350 ms, and the deltas merged meanwhile made the next build costlier
    still. Budgeted, the same share holds, and work waits only where the runs before it
    took more than it."""

    def __init__(
        self, share: float, burst_s: float, longest_s: float = math.inf, clock: Callable[[], float] = time.monotonic
    ):
        if not 0 < share <= 1 or burst_s < 0 or longest_s <= 0:
            raise ValueError("share must be in (0, 1], burst_s >= 0 and longest_s > 0")
        self.share = share
        self.burst_s = burst_s
        self.longest_s = longest_s
        self.clock = clock
        self._budget = burst_s
        self._at = clock()

    def _left(self) -> float:
        """The budget now: what it was, plus ``share`` of the time since, at most ``burst_s``."""
        now = self.clock()
        self._budget = min(self.burst_s, self._budget + (now - self._at) * self.share)
        self._at = now
        return self._budget

    def due(self) -> bool:
        return self.wait_s() < ROUNDING_S

    def wait_s(self) -> float:
        """Seconds until it is due (0: it is)."""
        return max(0.0, -self._left() / self.share)

    def ran(self, took_s: float) -> None:
        """One run, which took ``took_s`` seconds, has just ended."""
        self._budget = max(self._left() - took_s, -self.share * self.longest_s)
