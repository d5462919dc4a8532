"""Dynamic batching: requests that arrive together share one model pass.

On this hardware a forward pass of the user encoder costs about a
millisecond whatever its batch size (it is dozens of small tensor operations,
each with a fixed overhead), so a server that runs one pass per request
saturates long before its arithmetic does. Requests handled on the event loop
park here; the flush, scheduled with ``call_soon``, runs after every request
that was ready in the same loop iteration has joined, and encodes them all at
once. An idle server pays no wait; a busy one gets bigger batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from freshrec.serve.ranker import Request, encode


class Batcher:
    def __init__(self, run: Callable[[Sequence[Request]], None] = encode):
        self.run = run
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
