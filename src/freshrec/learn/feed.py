"""How the learner hears that the log has grown: by looking again now and then
(:class:`Polling`), or through the Redis bus (``BusFeed`` in
:mod:`freshrec.learn.worker`); it reads the events from the store either way."""

from __future__ import annotations

import threading
from typing import Protocol

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
