"""Delivering the learner's snapshots: the newest at most once per interval, as deltas
between whole ones where the receiver gets every delivery in order (the pipe to the
server beside the learner, the bus's snapshots stream), with the blend's counts now
and then."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from freshrec.learn.publishing import Due
from freshrec.model.deltas import SnapshotDelta, delta_since, merge
from freshrec.model.snapshot import Snapshot

log = logging.getLogger("freshrec.learner")

WHOLE_SHARE = 0.02
"""Whole snapshots go at most this share of the time: at least ``1 / WHOLE_SHARE`` times as
long apart as the last one took to encode and deliver, or the receiver to parse and build
(where it says: the server beside the learner). Why: on a million items a whole one was
129 MB, seconds of work for the learner and ten times more for the server that parses it
and rebuilds its item table (while it serves), and ``full_every_s`` is 30 s."""
COUNTS_EVERY_S = 60.0
"""The blend's counts go whole at least this often (a copy: tens of milliseconds, tens of
megabytes on a catalog of thousands of items); in between, what they took in."""


class Sender:
    """Delivers the newest snapshot at most once per interval, never dropping the last
    one, and messages at once; both through the callables it is given, one call at a
    time (a pipe with two threads writing at once interleaves their bytes: the server
    then fails to parse what it reads and never gets a model).

    With ``full_every_s`` (a receiver that gets every delivery, in order: the pipe, the
    bus's stream), a snapshot goes as a delta on the one delivered before
    (:mod:`freshrec.model.deltas`), and whole at least every ``full_every_s``, after a
    failed delivery, when a delta would change most rows anyway, and when it carries the
    blend's counts whole. The second argument of ``snapshot`` says whether the bytes are a
    start: a whole snapshot with whole counts (or without a blend), from which a receiver
    that has nothing, or lost its place, can follow."""

    def __init__(
        self,
        snapshot: Callable[[bytes, bool], object],
        message: Callable[[tuple[Any, ...]], object],
        interval_s: float,
        key: bytes | None = None,
        full_every_s: float = 0.0,
        counts: bool = False,
    ):
        self._deliver, self._message = snapshot, message
        self.interval = interval_s
        self.full_every_s = full_every_s
        self._delivered: Snapshot | SnapshotDelta | None = None
        """The last snapshot delivered; ``None`` before the first and after a lost one (the
        receiver's place is lost: the next goes whole)."""
        self._free_at = 0.0
        """When the interval after the last delivery ends."""
        self._whole_at = 0.0
        self._whole_cost = 0.0
        """Seconds the last whole snapshot took to encode and deliver."""
        self._served_cost = 0.0
        """Seconds the receiver said the last whole snapshot took it to parse and build
        (:meth:`served`)."""
        self.key = key
        """Signs each snapshot (``[cluster] snapshot_key``)."""
        self.fence: Callable[[], bool] | None = None
        """While it returns false (the learner lost the store's lease), snapshots are dropped."""
        self.carries_counts = counts
        """Whether snapshots go with the blend: its counts now and then, and what they took in
        in between, which a receiver must get in order (the pipe, the bus's stream). Without,
        serving ranks with the network alone."""
        self._counts_at: float | None = None
        """When the counts were last asked for whole (``None``: before the first, or after a
        failed delivery)."""
        self.pending: Snapshot | SnapshotDelta | None = None
        self.closed = False
        self.lock = threading.Condition()
        self._sending = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="freshrec-sender", daemon=True)

    def start(self) -> Sender:
        """Start delivering (its own thread); returns itself."""
        self.thread.start()
        return self

    def counts_due(self) -> bool:
        """Whether the next snapshot should carry the blend's counts whole: the first, the
        one after a failed delivery, and one every :data:`COUNTS_EVERY_S` (so a server
        that refused a snapshot, and with it some counting, is whole again soon)."""
        if not self.carries_counts:
            return False
        now = time.monotonic()
        with self.lock:
            if self._counts_at is not None and now - self._counts_at < COUNTS_EVERY_S:
                return False
            self._counts_at = now
            return True

    def due(self) -> Due:
        """What the learner should hand over next (:mod:`freshrec.learn.publishing`):
        nothing while one waits or the interval is not over; else a whole snapshot where
        the receiver lost its place (``"resync"``), without ``full_every_s`` or when a whole
        one is due; else a delta on the last one."""
        now = time.monotonic()
        with self.lock:
            if self.pending is not None or now < self._free_at:
                return None
            if self._delivered is None:
                return "resync"
            return "whole" if not self.full_every_s or now - self._whole_at >= self._full_every() else "delta"

    def _full_every(self) -> float:
        return max(self.full_every_s, max(self._whole_cost, self._served_cost) / WHOLE_SHARE)

    def served(self, seconds: float) -> None:
        """The receiver took ``seconds`` to parse and build the last whole snapshot (on a
        million items, ten times what it cost the learner): whole ones are spaced by that
        too."""
        with self.lock:
            self._served_cost = max(float(seconds), 0.0)

    def counts_ride(self) -> bool:
        """Whether the blend's counts, when due whole, go with a delta: where whole snapshots
        are further apart than :data:`COUNTS_EVERY_S`. Then every whole snapshot carries
        them whole (it is a start). Elsewhere counts due make the snapshot whole."""
        with self.lock:
            return bool(self.full_every_s) and self._full_every() > COUNTS_EVERY_S

    def snapshot(self, snapshot: Snapshot | SnapshotDelta) -> None:
        """Deliver ``snapshot`` next, in place of one still waiting (a delta on that one is
        merged with it)."""
        with self.lock:
            pending = self.pending
            if isinstance(snapshot, SnapshotDelta) and pending is not None and snapshot.parent == pending.serial:
                snapshot = merge(pending, snapshot)
            blend = snapshot.blend
            if pending is not None and pending.blend is not None and blend is not None:
                # the one replaced is never sent: what it counted goes with this one, and so
                # do its whole counts (the increments they hold are skipped where applied)
                counted = [*pending.blend["counted"], *blend["counted"]]
                counts = blend["signals"] if blend["signals"] is not None else pending.blend["signals"]
                snapshot = dataclasses.replace(snapshot, blend={**blend, "counted": counted, "signals": counts})
            self.pending = snapshot
            self.lock.notify()

    def message(self, *message: Any) -> None:
        with self._sending:
            self._message(message)

    def _run(self) -> None:
        while True:
            with self.lock:
                while self.pending is None and not self.closed:
                    self.lock.wait()
                if self.pending is None:
                    return
                snapshot, self.pending = self.pending, None
                self._free_at = float("inf")  # busy until delivered and the interval is over
            if self.fence is not None and not self.fence():
                log.warning("a model snapshot was not published: this learner does not hold the store's lease")
                self._lost(free=True)
                continue
            if isinstance(snapshot, SnapshotDelta) and (
                self._delivered is None or self._delivered.serial != snapshot.parent
            ):
                self._lost(free=True)  # a delta on one the receiver did not get: the learner sends whole next
                continue
            try:
                began = time.monotonic()
                data, start, whole = self._encode(snapshot)
                with self._sending:
                    self._deliver(data, start)
                self._delivered = snapshot
                if whole:
                    self._whole_cost = time.monotonic() - began
            except Exception:  # the next snapshot is tried anyway, whole
                self._lost()
                log.exception("could not deliver a model snapshot")
            with self.lock:
                self._free_at = time.monotonic() + self.interval
            time.sleep(self.interval)

    def _lost(self, free: bool = False) -> None:
        with self.lock:
            self._delivered = None
            self._counts_at = None
            if free:
                self._free_at = 0.0

    def _encode(self, snapshot: Snapshot | SnapshotDelta) -> tuple[bytes, bool, bool]:
        """The bytes to deliver, whether they are a start, and whether they are whole."""
        previous, now = self._delivered, time.monotonic()
        if not self.carries_counts and snapshot.blend is not None:
            snapshot = dataclasses.replace(snapshot, blend=None)
        if isinstance(snapshot, SnapshotDelta):  # the learner's own (see freshrec.learn.publishing)
            return snapshot.to_bytes(self.key), False, False
        whole_counts = snapshot.blend is not None and snapshot.blend["signals"] is not None
        if (
            isinstance(previous, Snapshot)
            and self.full_every_s
            and now - self._whole_at < self._full_every()
            and not whole_counts
        ):
            delta = delta_since(snapshot, previous)
            if delta is not None and 2 * len(delta.rows) <= len(snapshot.item_ids):
                return delta.to_bytes(self.key), False, False
        self._whole_at = now
        return snapshot.to_bytes(self.key), snapshot.blend is None or whole_counts, True

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is pending and stop; with ``timeout_s``, give up on a delivery
        that hangs (the store or the bus away at shutdown)."""
        with self.lock:
            self.closed = True
            self.lock.notify()
        self.thread.join(timeout_s)
