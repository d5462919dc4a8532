"""Model snapshots in: checked, then built into the serving copy by a publisher
thread, so that neither the learner's pipe nor a request ever waits for a build."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import torch

from freshrec.model import deltas
from freshrec.model.deltas import ROW_STATE, SnapshotDelta
from freshrec.model.rows import Room
from freshrec.model.snapshot import Snapshot
from freshrec.pacing import Budgeted
from freshrec.serialization import Malformed, StringLists
from freshrec.serve import traced
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Ranker
from freshrec.settings import ClusterSettings

log = logging.getLogger(__name__)

PUBLISH_SHARE = 0.1
"""Building serving copies of deltas takes at most this share of the server's time, on
average (:class:`~freshrec.pacing.Budgeted`): where the builds before took more, the next
waits, and the deltas that arrive meanwhile are merged into one. Builds compete with
requests for the processor and, in their Python steps, for the interpreter lock: on a
million items one took 35 ms alone and 50 to 300 ms under 200 requests/s, and four a second
(``publish_interval_ms``) left requests queueing behind them. On small catalogs a build
takes milliseconds and this never waits. Only deltas' builds count: a whole snapshot's
(seconds on a million items, and rare: the learner spaces them by their cost) would hold
back the deltas after it for half a minute."""
PUBLISH_BURST_S = 0.1
"""The most processor time the builds may take back to back, after a quiet while: a delta
that comes when the builds before it took less than their share is built at once (on a
million items a delta of 5,000 to 15,000 rows took 11 to 34 ms of the processor:
``benchmarks/publish_lag.py``). Before, every build put the next off by ten times its own
cost, whatever the builds had taken: with deltas of 15,000 rows the deltas that came
meanwhile merged into builds of 130-160 ms, which put the next off by the longest wait, and
serving lagged p99 0.5-0.7 s behind the learner (now 0.34-0.35 s)."""
PUBLISH_LONGEST_S = 1.0
"""But a build waits at most this long: the deltas that arrive meanwhile merge, and the
next build costs more the longer it waits. On a million items, the first delta after a
whole snapshot copied the whole table (half a second of a core); spaced by its share alone,
the next came five seconds later with 104,000 rows changed: 4 builds in 30 s under 200
requests/s and 500 events/s (mean 688 ms), serving up to 10 s behind the learner."""

SLOW_BUILD_S = 0.1
"""A delta's build that takes longer is logged (debug), with the processor time it took: the
rest is waiting, for the interpreter lock or for the requests still reading the table it
writes over (:meth:`~freshrec.serve.spare.Behind.spare_for`)."""


class Models:
    """Receives snapshots (from the learner's pipe, the bus or the store) and has the
    ranker serve the newest; :meth:`start` starts the publisher thread."""

    def __init__(self, ranker: Ranker, cluster: ClusterSettings, metrics: Metrics, arm: str | None = None):
        self.ranker = ranker
        self.arm = arm
        """The experiment arm whose model this is; ``None``: the default model, the one the
        gauges of ``/metrics`` describe."""
        self.cluster = cluster
        self.metrics = metrics
        self._pending: Snapshot | None = None
        self._latest: Snapshot | None = None
        self._room = Room()
        """Spare rows past the newest snapshot's per-item tables, for the deltas that add items."""
        self._applying = threading.Lock()
        """The newest snapshot received: the one the next delta must name."""
        self._closed = False
        self._publishing = threading.Condition()
        self.on_whole: Callable[[float], object] | None = None
        """Told the seconds each whole snapshot took to parse and build (the learner spaces
        whole ones by that: :meth:`~freshrec.learn.sender.Sender.served`)."""
        self.settle: Callable[[], object] | None = None
        """Called on the publisher thread after each whole snapshot's build (the server's own
        process tidies its memory then: :class:`freshrec.serve.engine.Refreeze`); what it
        takes counts in what ``on_whole`` is told."""
        self._strings = StringLists()
        """The item ids of the last snapshots parsed: a whole one's are nearly always the same."""
        self._parsed: tuple[int, float] | None = None
        """The serial of the last whole snapshot parsed, and the seconds that took."""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            name = "freshrec-publisher" if self.arm is None else f"freshrec-publisher-{self.arm}"
            self._thread = threading.Thread(target=self._publisher, name=name, daemon=True)
            self._thread.start()

    def parse(self, data: bytes | memoryview, source: str) -> Snapshot | None:
        """The snapshot in ``data`` (a delta applied to the newest snapshot received), or
        ``None`` if it is malformed or not signed with the snapshot key: refused with one
        log line and a count in ``/metrics``, while the current model stays served. A
        delta on a snapshot this server did not get is skipped, counted apart: the next
        whole snapshot follows within ``[serve] snapshot_full_s``."""
        try:
            started = time.perf_counter()
            got = deltas.read(data, self.cluster.key(), self.cluster.snapshot_max_mb << 20, self._strings)
            kind = "delta" if isinstance(got, SnapshotDelta) else "whole"
            self.metrics.snapshots_received.labels(kind).inc()
            self.metrics.snapshot_bytes.labels(kind).inc(len(data))
            if not isinstance(got, SnapshotDelta):
                self._parsed = (got.serial, time.perf_counter() - started)
                with self._applying:
                    self._room.keep(())  # the blocks of the tables it replaces are given back
                return self._blend_taken(got)
            latest = self._latest
            if latest is None or latest.serial != got.parent:
                log.debug("skipped a model delta on a snapshot this server did not get")
                self.metrics.skipped_deltas.inc()
                self.ranker.blend.forget()  # what that delta counted is missing too
                return None
            with self._applying:  # nothing reads latest's tables
                served = deltas.apply(latest, got, in_place=True, room=self._room)
                self._room.keep(served.state[name] for name in ROW_STATE if name in served.state)
            return self._blend_taken(served)
        except Malformed as exc:
            log.warning("refused a model snapshot from the %s: %s", source, exc)
            self.metrics.rejected_models.labels(source).inc()
            return None

    def _blend_taken(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` without its blend, which the ranker's copy takes now, in the order
        snapshots arrive (the publisher may skip some; their counts must not be)."""
        self.ranker.blend.take(snapshot.blend, snapshot.settings)
        self.metrics.receive_lag_seconds.observe(max(0.0, time.time() - snapshot.created))
        return dataclasses.replace(snapshot, blend=None)

    def receive(self, data: bytes | memoryview, source: str) -> Snapshot | None:
        """Publish the snapshot in ``data`` unless :meth:`parse` refuses it."""
        snapshot = self.parse(data, source)
        if snapshot is not None:
            self.publish(snapshot)
        return snapshot

    def publish(self, snapshot: Snapshot) -> None:
        """Hand over a new model snapshot (the learner sends at most one per
        ``publish_interval_ms``). If snapshots arrive faster than the publisher
        builds, the newest wins and the ones in between are skipped, never the last."""
        with self._publishing:
            pending = self._pending
            # a delta on the one not built yet, which it replaces: the rows of both changed
            if pending is not None and snapshot.parent == pending.serial:
                snapshot = _merged(pending, snapshot)
                parsed = self._parsed
                if parsed is not None and parsed[0] == pending.serial:  # a whole one merged: its cost still counts
                    self._parsed = (snapshot.serial, parsed[1])
            self._pending = self._latest = snapshot
            self._publishing.notify()

    def _publish(self, snapshot: Snapshot) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        self.ranker.publish(snapshot)
        if self.arm is None:  # as soon as it is served: /health/ready says so from now on
            self.metrics.model_served.set(1)
            self.metrics.model_version.set(snapshot.checkpoint)
            self.metrics.model_updates.set(snapshot.updates)
            if snapshot.loss is not None:
                self.metrics.training_loss.set(snapshot.loss)
        traced.prepare(self.ranker.scoring)  # a new network shape's graph, traced once
        took = time.perf_counter() - started
        self.metrics.publish_seconds.observe(took)
        if snapshot.changed is not None and took > SLOW_BUILD_S:
            log.debug(
                "built a model delta of %d changed rows in %.0f ms, %.0f ms of it this thread's processor time",
                len(snapshot.changed), took * 1e3, (time.thread_time() - cpu) * 1e3,
            )  # fmt: skip
        parsed = self._parsed
        if parsed is not None and parsed[0] == snapshot.serial:
            self._parsed = None
            log.debug(
                "served a whole model snapshot of %d items in %.2f s (parsed in %.2f s; its item tower served for "
                "%.0f s)", len(snapshot.item_ids), parsed[1] + time.perf_counter() - started, parsed[1],
                self.ranker.tower.age_s,
            )  # fmt: skip
            if self.settle is not None:
                self.settle()
            if self.on_whole is not None:
                self.on_whole(parsed[1] + time.perf_counter() - started)
        self.metrics.publish_lag_seconds.observe(max(0.0, time.time() - snapshot.created))

    def _publisher(self) -> None:
        # Not niced (:func:`~freshrec.runtime.in_background`): the budget holds the deltas'
        # builds to their share, and a niced thread that the scheduler leaves waiting while it
        # holds the interpreter lock holds every request up with it. Beside two busy processes
        # on a million items (``benchmarks/publish_lag.py``, 15,000-row deltas), niced: the
        # lock's waits p99 7.4-8.2 ms, a build 154-168 ms of wall time for 13 ms of the
        # processor, serving p99 304-383 ms behind; not niced: 4.6-4.7 ms, 34-35 ms, 98-135 ms.
        budget = Budgeted(PUBLISH_SHARE, PUBLISH_BURST_S, longest_s=PUBLISH_LONGEST_S)
        while True:
            with self._publishing:
                while (self._pending is None or not budget.due()) and not self._closed:
                    self._publishing.wait(None if self._pending is None else budget.wait_s())
                snapshot, self._pending = self._pending, None
            if snapshot is None:  # closed
                return
            started = time.thread_time()  # its cost: not the waits for the lock or a spare table
            try:
                self._publish(snapshot)
            except Exception:  # the thread must live on: the next snapshot may build (a delta's then whole)
                log.exception("could not build the serving copy of model %s; the one before stays", snapshot.version)
                self.metrics.failed_builds.inc()
            if snapshot.changed is not None:  # whole ones are spaced by the learner (by their cost)
                budget.ran(time.thread_time() - started)

    def close(self) -> None:
        with self._publishing:
            self._closed = True
            self._publishing.notify()


def _merged(skipped: Snapshot, snapshot: Snapshot) -> Snapshot:
    """``snapshot``, a delta on ``skipped`` (which the publisher never built), as a delta
    on what ``skipped`` was a delta on: the rows either changed."""
    if skipped.changed is None or snapshot.changed is None:
        return dataclasses.replace(snapshot, changed=None)  # whole: nothing to build on
    changed = torch.unique(torch.cat([skipped.changed, snapshot.changed]))
    return dataclasses.replace(snapshot, parent=skipped.parent, changed=changed)
