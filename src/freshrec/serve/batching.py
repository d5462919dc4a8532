"""Dynamic batching: requests that arrive together share one model pass, made in a
thread of its own while the event loop goes on with the others.

On this hardware a forward pass of the user encoder costs about a
millisecond whatever its batch size (it is dozens of small tensor operations,
each with a fixed overhead), so a server that runs one pass per request
saturates long before its arithmetic does. Requests park here; a batch is the
requests that arrived while the previous one was ranked (or, on an idle server,
the ones ready in the same loop iteration as the first), so an idle server pays
no wait and a busy one gets bigger batches.

Why a thread for the pass (the encoder, the candidate index's search and the
exact scoring of the candidates): on the event loop it held the loop in each of its
steps, and the requests' HTTP parsing, store reads and answers waited behind it.
Under 200 requests/s and 500 events/s on the million-item shop the loop's thread was
busy in 81% of the samples, a good half of it in those steps, and queued (p99 50-250
ms). The search and the encoder's traced pass (:mod:`~freshrec.serve.traced`) each give
the interpreter lock up once for their whole work, so they overlap with the loop's on
two cores; and a batch takes every request that came while the previous one ran, which
shares the pass's fixed costs more. (Tried before the pass was traced, a thread of its
own made requests slower: the eager pass gave the lock up at each of its hundred small
operations, and waited for it at each.)

A server asked for more than it can rank falls behind: requests wait longer and
longer, and ranking a request its client gave up on long ago takes the time of the
ones still in time. So a request that waited more than ``deadline_s`` for its pass
is answered :class:`Overloaded` (503 with ``Retry-After``) instead, for the price
of a few microseconds: the server stays as fast as it can for the rest, and the
client learns at once that it should fall back (``[serve] shed_after_ms``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from freshrec.serve.explain import Ranked
from freshrec.serve.request import Request, encode, finish


class Overloaded(Exception):
    """A request waited longer than the deadline for its model pass: the server is over capacity."""

    def __init__(self, waited_s: float, deadline_s: float):
        super().__init__(
            f"the server is over capacity: this request waited {waited_s * 1e3:.0f} ms for the model "
            f"(serve.shed_after_ms is {deadline_s * 1e3:g}); retry"
        )


Outcome = list[Ranked] | BaseException

SKEW_S = 60.0
"""A proxy's time of a request further than this from this host's clock is ignored (:func:`arrival`)."""


def arrival(stamp: str | None) -> float:
    """When the request reached the proxy in front, on this process's monotonic clock, from
    the proxy's ``stamp`` (``[t=]`` seconds, milliseconds or microseconds since the epoch,
    told apart by their size); now where there is none, it does not parse, or it is further
    than :data:`SKEW_S` from this host's clock (a proxy's clock slightly ahead counts as now)."""
    now, wall = time.monotonic(), time.time()
    if not stamp:
        return now
    text = stamp.strip().removeprefix("t=")
    try:
        value = float(text)
    except ValueError:
        return now
    if not math.isfinite(value):
        return now
    since = value / (1e6 if value > 1e14 else 1e3 if value > 1e11 else 1.0)
    waited = wall - since
    return now - waited if 0 < waited <= SKEW_S else now


class Batcher:
    """``run`` is the model pass over a batch and ``finish`` what makes each request's
    list after it, both in the batcher's thread (``starting`` runs there first);
    ``deadline_s`` is how long a request may wait for its pass since its ``arrived``
    time (``None``: for ever); ``shed`` is called once per request refused for waiting
    longer. :meth:`close` stops the thread."""

    def __init__(
        self,
        run: Callable[[Sequence[Request]], None] = encode,
        finish: Callable[[Request], list[Ranked]] = finish,
        deadline_s: float | None = None,
        shed: Callable[[], None] = lambda: None,
        starting: Callable[[], None] = lambda: None,
        watched: Callable[[str], AbstractContextManager[None]] = lambda what: nullcontext(),
    ):
        self.run = run
        self.watched = watched
        self.finish = finish
        self.deadline_s = deadline_s
        self.shed = shed
        self.pending: list[tuple[Request, asyncio.Future[list[Ranked]]]] = []
        self._busy: asyncio.AbstractEventLoop | None = None
        """The loop for which a batch is being ranked, or a flush is due: the requests coming
        meanwhile wait for it (another loop's, one closed meanwhile, does not hold them up)."""
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="freshrec-model", initializer=starting)

    def check(self, arrived: float) -> None:
        """Refuse (:class:`Overloaded`) a request that arrived at ``arrived`` (monotonic) and
        already waited longer than the deadline: one that queued in front of the server."""
        waited = time.monotonic() - arrived
        if self.deadline_s is not None and waited > self.deadline_s:
            self.shed()
            raise Overloaded(waited, self.deadline_s)

    async def rank(self, request: Request) -> list[Ranked]:
        """The request's list: at once if planning settled it (no model pass), else after
        the pass of the batch it joins."""
        if request.result is not None:
            return request.result
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Ranked]] = loop.create_future()
        self.pending.append((request, done))
        if self._busy is not loop:
            self._busy = loop
            loop.call_soon(self._flush, loop)
        return await done

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.pending = self.pending, []
        if self.deadline_s is not None:
            now, deadline = time.monotonic(), self.deadline_s
            for request, done in batch:
                if now - request.arrived > deadline and not done.done():
                    done.set_exception(Overloaded(now - request.arrived, deadline))
                    self.shed()
        batch = [(request, done) for request, done in batch if not done.done()]  # cancelled ones too
        if not batch:
            self._next(loop)
            return
        try:
            ranked = loop.run_in_executor(self._thread, self._pass, [request for request, _ in batch])
        except RuntimeError as exc:  # closed: the server is stopping
            for _, done in batch:
                done.set_exception(exc)
            self._next(loop)
            return
        ranked.add_done_callback(lambda f: self._answer(loop, batch, f))

    def _pass(self, requests: list[Request]) -> list[Outcome]:
        with self.watched(f"the model pass of {len(requests)} requests has run"):
            try:
                self.run(requests)
            except Exception as exc:  # every request of the batch fails with the cause
                return [exc] * len(requests)
            out: list[Outcome] = []
            for request in requests:  # one request's failure is its own
                try:
                    out.append(self.finish(request))
                except Exception as exc:
                    out.append(exc)
            return out

    def _answer(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Request, asyncio.Future[list[Ranked]]]],
        ranked: asyncio.Future[list[Outcome]],
    ) -> None:
        if ranked.cancelled():  # closed while the batch waited for the thread
            outcomes: list[Outcome] = [RuntimeError("the server is stopping")] * len(batch)
        else:
            failed = ranked.exception()
            outcomes = [failed] * len(batch) if failed is not None else ranked.result()
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
        self._next(loop)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Rank the requests that came meanwhile, or stand idle."""
        if self.pending:
            loop.call_soon(self._flush, loop)
        else:
            self._busy = None

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
