"""How the learner hears that the log has grown: by looking again now and then
(:class:`Polling`), or through the Redis bus (``BusFeed`` in
:mod:`freshrec.learn.worker`); it reads the events from the store either way."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from freshrec.pacing import Paced

IDLE_S = 1.0
"""Longest wait between two reads of the log when nothing is waiting to be learned."""


class Feed(Protocol):
    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        """Return when there may be new events, ``stop`` is set or ``timeout_s`` has passed."""
        ...

    def learned(self, offset: int) -> None:
        """Everything up to ``offset`` is learned (a bus acknowledges its entries)."""
        ...


class Polling:
    """Looks at the log again every ``poll_s``: the learner beside the server, or any
    learner without a bus."""

    def __init__(self, poll_s: float = 0.02):
        self.poll_s = poll_s

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        stop.wait(min(timeout_s, self.poll_s))

    def learned(self, offset: int) -> None:
        pass


def at_most_every(seconds: float, action: Callable[[], None]) -> Callable[[], None]:
    """A callback that runs ``action`` once ``seconds`` have passed since it last ran (or
    since it was made): the warm start publishes the model this way from its steps, so
    serving gets a learned model within seconds of a first start, and better ones as the
    warm start goes on."""
    paced = Paced(seconds, 1.0, due_now=False)

    def maybe() -> None:
        if paced.due():
            action()
            paced.ran(0.0)  # due ``seconds`` after the action ended

    return maybe
