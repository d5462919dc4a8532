"""Work spaced by its own cost: the learner's reads of the whole catalog and its
checkpoints, and serving's builds of each model it is sent, all grow with the
catalog, and at a fixed interval they would take more and more of a process's
time until it fell behind (the learner behind the log, requests behind builds)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Paced:
    """Due ``every_s`` after it last ran or, where that run took longer than ``share`` of
    that interval, ``took / share`` after: it then takes at most ``share`` of the
    process's time, however long one run takes. ``due_now``: due before its first run.

    ``longest_s`` bounds the wait whatever the cost, for work whose next run gets cheaper
    the sooner it comes (a build of what changed since the last one): one costly run
    must not make the next one wait so long that it is costly too."""

    def __init__(
        self,
        every_s: float,
        share: float,
        due_now: bool = True,
        clock: Callable[[], float] = time.monotonic,
        longest_s: float = math.inf,
    ):
        if every_s < 0 or not 0 < share <= 1 or longest_s < every_s:
            raise ValueError("every_s must be >= 0, share in (0, 1] and longest_s >= every_s")
        self.every_s = every_s
        self.share = share
        self.longest_s = longest_s
        self.clock = clock
        self._due = clock() + (0.0 if due_now else every_s)

    def due(self) -> bool:
        return self.clock() >= self._due

    def wait_s(self) -> float:
        """Seconds until it is due (0: it is)."""
        return max(0.0, self._due - self.clock())

    def ran(self, took_s: float) -> None:
        """One run, which took ``took_s`` seconds, has just ended."""
        self._due = self.clock() + min(max(self.every_s, took_s / self.share), self.longest_s)
