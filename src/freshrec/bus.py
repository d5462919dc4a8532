"""The event bus between API replicas and the learner: Redis Streams.

Two streams, under ``cluster.prefix``:

``<prefix>:log``
    One entry per acknowledged append: ``{"last": <offset>}``, the newest log
    offset after it. An API replica adds it once the events are durable in
    the store. It carries no event data on purpose: the log in the store is
    the source of truth, a deleted user's events vanish from it and from
    nothing else, and Redis holds no personal data to erase.
``<prefix>:commands``
    Work for the learner that is not in the log: ``{"erase": ""}`` wakes it to carry
    out the erasures recorded in the store (the user ids stay there: the bus holds
    no personal data). ``{"forget": <user id>}`` from older replicas is read alike.

A third stream, ``<prefix>:snapshots``, carries the learner's serving snapshots to
the replicas, in order: a whole one now and then and, in between, deltas (the rows
that changed) with what the blend's counts took in. Each entry is ``{"data": <bytes>,
"start": 0|1}``; ``start`` marks a whole snapshot that also carries the counts whole
(or a model without a blend), where a replica that starts, or lost its place, begins
reading; from there it applies every entry in order, as the server beside the learner
does with its pipe. A replica that misses an entry (trimmed before it read it) skips
deltas and ranks with the network alone until the next start: within a minute, or, where
whole snapshots are costly and further apart, with the next whole one. The
stream keeps what came since the start before the newest (and at most
``snapshot_stream_len`` entries): two whole snapshots and the deltas since, a few times
the model's size in Redis's memory, nothing durable; written to the store, snapshots
cost SQLite a synced write under its one write lock twice a second. The learner still leaves a whole copy in the
store now and then, for replicas that start while Redis has none.

The learner reads both through the consumer group ``learner``. An entry is
acknowledged (``XACK``) only once its work is done: a log entry when the
learner's offset has reached it, a command when it has been carried out.
Delivery is at least once: entries a learner took but did not acknowledge
before it died are delivered again to the next one (its pending list is read
first). Processing is idempotent, so the effect is exactly once: the learner
learns the log as ``offset > W`` from the store (offsets are assigned in
commit order), so an entry whose offset it has passed adds nothing, and
forgetting a user twice is forgetting them once. The same reading covers
entries that were never written (an API replica dying between its commit and
its ``XADD``): the learner also reads the store whenever the bus is quiet, and
looks for pending erasures every few seconds.

Retention is bounded: ``XADD ... MAXLEN ~ cluster.stream_max_len``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from freshrec.settings import ClusterSettings

log = logging.getLogger(__name__)

GROUP = "learner"
DOWN_S = 5.0
"""How long a replica stops announcing after Redis failed it."""


def keys(prefix: str) -> dict[str, str]:
    """Every Redis key a deployment with this prefix uses (to clear one, say)."""
    return {name: f"{prefix}:{name}" for name in ("log", "commands", "snapshots")}


def connect(url: str) -> redis.Redis:
    """A client that fails fast: one retry, no backoff. An API replica announces on the
    request path of every event post, and redis-py's default (three retries with
    backoff) made each post wait about six seconds while Redis was away."""
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=1, retry=Retry(NoBackoff(), 1), health_check_interval=30
    )


class BusError(RuntimeError):
    """The bus cannot be reached or used."""


class RedisBus:
    """Both ends of the bus: :meth:`announce` and :meth:`command` for API replicas,
    :meth:`wait` and :meth:`learned` for the learner."""

    def __init__(self, settings: ClusterSettings, consumer: str = "learner"):
        if not settings.bus_url:
            raise BusError("no bus configured: set cluster.bus_url (e.g. redis://127.0.0.1:6379/0)")
        self.settings = settings
        self.client = connect(settings.bus_url)
        named = keys(settings.prefix)
        self.log_key, self.commands_key = named["log"], named["commands"]
        self.snapshots_key = named["snapshots"]
        self._start: str | None = None
        """The learner's last start on the snapshots stream (what the next one trims to)."""
        self.consumer = consumer
        self._pending: dict[bytes, int] = {}
        """Log entries handed to the learner and not yet acknowledged: (entry id, offset)."""
        self._backlog = True
        """Read this consumer's pending entries (a previous run's) before new ones."""
        self._warned = 0.0
        self._down_until = 0.0
        """After a failed announcement, skip the next ones for a while instead of making
        every event request wait for Redis's connect timeout."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            where = urlsplit(settings.bus_url)
            raise BusError(f"cannot reach Redis at {where.hostname}:{where.port or 6379}: {exc}") from exc

    # -- API replicas ----------------------------------------------------------------
    def announce(self, last_offset: int) -> None:
        """Tell the learner the log has grown to ``last_offset``. Never raises: the
        events are already durable and the learner finds them in the store anyway,
        within a second, when the bus is down."""
        if time.monotonic() < self._down_until:
            return
        try:
            self.client.xadd(self.log_key, {"last": last_offset}, maxlen=self.settings.stream_max_len, approximate=True)
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + DOWN_S
            self._warn("could not announce new events on the bus (the learner will poll)", exc)

    def command(self, name: str, argument: str) -> None:
        """Queue work for the learner; raises :class:`BusError` if the bus does not take it."""
        try:
            self.client.xadd(self.commands_key, {name: argument}, maxlen=self.settings.stream_max_len, approximate=True)
        except redis.RedisError as exc:
            raise BusError(f"could not send {name!r} to the learner: {exc}") from exc

    def snapshots(self, after: str | None = None, count: int = 100) -> list[tuple[str, bytes]]:
        """``(entry id, bytes)`` of the snapshots put after entry ``after``, oldest first, at
        most ``count``; with ``after=None``, from the newest start (see above) on."""
        if after is None:
            after = self._newest_start()
            if after is None:
                return []
            entries: Any = self.client.xrange(self.snapshots_key, min=after, count=count)
        else:
            entries = self.client.xrange(self.snapshots_key, min=f"({after}", count=count)
        return [(entry.decode(), bytes(fields[b"data"])) for entry, fields in entries if b"data" in fields]

    def _newest_start(self) -> str | None:
        """The id of the newest entry marked as a start, looked for from the end."""
        before = "+"
        while True:
            page: Any = self.client.xrevrange(self.snapshots_key, max=before, count=50)
            for entry, fields in page:
                if fields.get(b"start") == b"1":
                    return str(entry.decode())
            if len(page) < 50:
                return None
            before = f"({page[-1][0].decode()}"

    # -- the learner ---------------------------------------------------------------
    def put_snapshot(self, data: bytes, start: bool) -> str:
        """Add a snapshot (``start``: whole, with the blend's counts whole); returns its id.
        A start trims what came before the start before it: the stream holds at most two
        whole snapshots and the deltas since the older (also at most
        ``snapshot_stream_len`` entries), a few of the model's sizes in Redis's memory."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            self.snapshots_key,
            {"data": data, "start": int(start)},
            maxlen=self.settings.snapshot_stream_len,
            approximate=False,  # one entry trimmed per entry added: cheap, and the length is kept
        )
        if start and self._start is not None:
            pipe.xtrim(self.snapshots_key, minid=self._start, approximate=False)
        entry: Any = pipe.execute()[0]
        if start:
            self._start = entry.decode()
        return str(entry.decode())

    def join(self) -> None:
        """Create the consumer group on both streams (idempotent). A new group starts
        at the end of the streams: what was logged before, the learner reads from the
        store when it starts."""
        for key in (self.log_key, self.commands_key):
            try:
                self.client.xgroup_create(key, GROUP, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def wait(self, timeout_s: float, on_command: Callable[[str, str], None]) -> int:
        """Block until entries arrive or ``timeout_s`` passes; carry out commands
        (``on_command(name, argument)``, then acknowledged) and return the newest
        log offset announced so far (0 if none)."""
        try:
            reply = self._read("0", None) if self._backlog else None
            if not any(entries for _, entries in reply or []):
                self._backlog = False
                reply = self._read(">", max(int(timeout_s * 1000), 1))
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.join()  # the streams were deleted under us (a flushed Redis)
            return self.newest()
        except redis.RedisError as exc:  # Redis away: the learner polls the store meanwhile
            self._warn("the bus is unreachable; the learner polls the store until it is back", exc)
            self._backlog = True
            time.sleep(timeout_s)
            return self.newest()
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if stream.decode() == self.log_key:
                    self._pending[entry_id] = int(fields.get(b"last", 0))
                    continue
                try:
                    for name, argument in fields.items():
                        on_command(name.decode(), argument.decode())
                except BaseException:
                    self._backlog = True  # not acknowledged: handed over again by the next read
                    raise
                self.client.xack(self.commands_key, GROUP, entry_id)
        return self.newest()

    def _warn(self, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("%s: %s", message, exc)

    def _read(self, start: str, block_ms: int | None) -> Any:
        """``start`` "0": this consumer's pending entries (a previous run's); ">": new ones."""
        return self.client.xreadgroup(
            GROUP, self.consumer, {self.log_key: start, self.commands_key: start}, count=1000, block=block_ms
        )

    def newest(self) -> int:
        return max(self._pending.values(), default=0)

    def learned(self, offset: int) -> None:
        """Acknowledge every log entry up to ``offset``: the learner has learned it."""
        done = [entry_id for entry_id, last in self._pending.items() if last <= offset]
        if done:
            try:
                self.client.xack(self.log_key, GROUP, *done)
            except redis.RedisError as exc:  # acknowledged with a later offset, once Redis is back
                self._warn("could not acknowledge on the bus", exc)
                return
            for entry_id in done:
                del self._pending[entry_id]

    def backlog(self) -> dict[str, int]:
        """Entries delivered but not acknowledged, per stream (for status and tests)."""
        out = {}
        for key in (self.log_key, self.commands_key):
            try:
                summary: Any = self.client.xpending(key, GROUP)
                out[key] = int(summary["pending"])
            except redis.ResponseError:
                out[key] = 0
        return out

    def close(self) -> None:
        self.client.close()
