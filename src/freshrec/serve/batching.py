"""Dynamic batching: requests that arrive together share one model pass.

On this hardware a forward pass of the user encoder costs about a
millisecond whatever its batch size (it is dozens of small tensor operations,
each with a fixed overhead), so a server that runs one pass per request
saturates long before its arithmetic does. Requests handled on the event loop
park here; the flush, scheduled with ``call_soon``, runs after every request
that was ready in the same loop iteration has joined, and encodes them all at
once. An idle server pays no wait; a busy one gets bigger batches.

A server asked for more than it can rank falls behind: requests wait longer and
longer, and ranking a request its client gave up on long ago takes the time of the
ones still in time. So a request that waited more than ``deadline_s`` for its pass
is answered :class:`Overloaded` (503 with ``Retry-After``) instead, for the price
of a few microseconds: the server stays as fast as it can for the rest, and the
client learns at once that it should fall back (``[serve] shed_after_ms``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from freshrec.serve.ranker import Request, encode


class Overloaded(Exception):
    """A request waited longer than the deadline for its model pass: the server is over capacity."""

    def __init__(self, waited_s: float, deadline_s: float):
        super().__init__(
            f"the server is over capacity: this request waited {waited_s * 1e3:.0f} ms for the model "
            f"(serve.shed_after_ms is {deadline_s * 1e3:g}); retry"
        )


class Batcher:
    """``run`` is the model pass over a batch; ``deadline_s`` how long a request may wait
    for it since its ``arrived`` time (``None``: for ever); ``shed`` is called once per
    request refused for waiting longer."""

    def __init__(
        self,
        run: Callable[[Sequence[Request]], None] = encode,
        deadline_s: float | None = None,
        shed: Callable[[], None] = lambda: None,
    ):
        self.run = run
        self.deadline_s = deadline_s
        self.shed = shed
        self.pending: list[tuple[Request, asyncio.Future[None]]] = []

    async def encode(self, request: Request) -> None:
        if request.result is not None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.pending.append((request, done))
        if len(self.pending) == 1:
            loop.call_soon(self._flush)
        await done

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if self.deadline_s is not None:
            now, deadline = time.monotonic(), self.deadline_s
            for request, done in batch:
                if now - request.arrived > deadline and not done.done():
                    done.set_exception(Overloaded(now - request.arrived, deadline))
                    self.shed()
            batch = [(request, done) for request, done in batch if not done.done()]
            if not batch:
                return
        try:
            self.run([request for request, _ in batch])
        except Exception as exc:  # every waiting request fails with the cause
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
