"""How late the server's event loop runs, and what held it up (:class:`LoopWatch`).

Why: on the million-item shop, the p99 of recommendations under load came from pauses of
the whole process, not from its throughput: p50 4.4-5.9 ms at 50 to 200 requests/s, but
p99 53-820 ms, with the API process using 0.43-0.87 of its two cores, and the seconds of
one round alternated p99 8-34 ms with 205-255 ms. A pause of the loop delays every request
in flight at once; what the requests' latency cannot say is when the loop stood still and
which thread was running then.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import Histogram

log = logging.getLogger(__name__)

PERIOD_S = 0.01
"""How often the loop's beat runs, and the watching thread looks at it."""
REPORT_S = 0.1
"""A loop that has not run for this long is reported (a debug line with every thread's stack)."""
FRAMES = 4
"""The innermost frames of each thread that a report shows."""
LOOKS = 4
"""The most looks at the threads' stacks one report shows: after :data:`REPORT_S`, then
each time the pause has lasted twice as long as at the last look."""


class LoopWatch:
    """A beat on the event loop (:meth:`beat`, a task) observes into ``lag`` how much
    later than asked each of its sleeps ended: the time the loop could not run its
    callbacks. A thread beside it (:meth:`start`) logs, at debug level, each pause of
    :data:`REPORT_S` or more once it has ended: how long it lasted (a report made as the pause
    reached :data:`REPORT_S` gave every pause that length), what every thread was running at
    :data:`REPORT_S` and at a few later looks, and how late the watching thread itself woke
    at each: as late as the loop, the interpreter lock was held
    (a call that does not give it up, or its holder not scheduled); on time, the loop
    itself was busy, and its stack says with what. Work the requests wait for in other
    threads (the model's pass, :mod:`freshrec.serve.batching`) is watched the same way
    while it runs (:meth:`busy`): a pause there holds up the requests, not the loop."""

    def __init__(self, lag: Histogram, period_s: float = PERIOD_S, report_s: float = REPORT_S):
        self.lag = lag
        self.period_s = period_s
        self.report_s = report_s
        self.reports = 0
        """Pauses reported since the start."""
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[int, tuple[str, float]] = {}
        """What :meth:`busy` watches now, by thread: its name and when it started."""

    async def beat(self) -> None:
        """Run on the loop until cancelled."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.period_s)
            self._beat = now = time.monotonic()
            self.lag.observe(max(0.0, now - asked - self.period_s))

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Watch the work of this block (``what`` names it in a report) while it runs, where
        the watching thread runs (debug level)."""
        if self._thread is None:
            yield
            return
        me = threading.get_ident()
        self._running[me] = (what, time.monotonic())
        try:
            yield
        finally:
            del self._running[me]

    def start(self) -> None:
        if self._thread is None and log.isEnabledFor(logging.DEBUG):
            self._beat = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="freshrec-watchdog", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        pending: dict[float, _Pause] = {}  # by the start (or the loop's last beat) of each pause
        woke = time.monotonic()
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            late, woke = max(0.0, now - woke - self.period_s), now
            going = [("the event loop has not run", self._beat), *self._running.values()]  # one C call: no race
            for since in pending.keys() - {since for _, since in going}:
                self._report(pending.pop(since), now)
            for what, since in going:
                held, pause = now - since, pending.get(since)
                if pause is None and held >= self.report_s:
                    pause = pending[since] = _Pause(what, since)
                if pause is not None and held >= pause.next_look and len(pause.looks) < LOOKS:
                    pause.looks.append(
                        f"at {held * 1000:.0f} ms (this thread woke {late * 1000:.0f} ms late): {stacks()}"
                    )
                    pause.next_look = 2 * held
        for pause in pending.values():
            self._report(pause, time.monotonic())

    def _report(self, pause: _Pause, ended: float) -> None:
        self.reports += 1
        log.debug("%s for %.0f ms; threads %s", pause.what, (ended - pause.since) * 1000, "; then ".join(pause.looks))


@dataclass
class _Pause:
    """A pause being watched: what it is, since when, and what the threads ran at each look."""

    what: str
    since: float
    looks: list[str] = field(default_factory=list)
    next_look: float = 0.0
    """How long the pause must have lasted for the next look (twice as long as at the last)."""


def stacks() -> str:
    """The innermost :data:`FRAMES` frames of every other thread, by name, on one line."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident != me:
            parts.append(f"{names.get(ident, ident)}: {_innermost(frame)}")
    return "; ".join(parts)


def _innermost(frame: FrameType) -> str:
    summary = traceback.extract_stack(frame)[-FRAMES:]
    return " < ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in reversed(summary))
