"""How far serving's model lags the learner's micro-batches on a large catalog, and what the
builds take of the interpreter lock meanwhile.

    python benchmarks/publish_lag.py [--items 1000000] [--rows 5000] [--seconds 30] [--added 0]

Builds a network of ``--items`` items, a catalog, the server's snapshot intake
(:class:`~freshrec.serve.models.Models` with its publisher thread) and its candidate index
(each build then measures its rows' moves for the index, and the index codes them anew every
few seconds, as a server's does), and hands it a whole snapshot. Then, for ``--seconds``, it
plays the learner: every 250 ms (``publish_interval_ms``) a micro-batch moves ``--rows``
random item rows (the learner's sparse steps move those of its sampled negatives too) and a
dense layer, and its delta's bytes are taken in as the server's receiver takes them.
Meanwhile one thread computes in Python half of the time, as a server's event loop under
load does, and another asks for the interpreter lock every millisecond and records how late
it gets it. Reports the lag from each delta's making to the swap that serves it (p50, p99,
longest), the builds (how many, their processor time) and the lock's waits. Writes the
``publish-lag`` section of RESULTS.md.

``--added N`` first adds N items to the catalog, which the learner's snapshots do not have
(as between a shop's new item and the learner taking it in, up to minutes on a large
catalog): serving pads the model's per-item tables for them. Halfway through, the learner
takes them in (a delta that adds them); that delta's build is reported apart. Writes
``publish-lag-added``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import threading
import time

import numpy as np
import torch

from freshrec.domain import Item
from freshrec.model.deltas import delta_of
from freshrec.model.snapshot import Snapshot
from harness import large_intake, lock_waits, serve_whole, write_section

INTERVAL_S = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--added", type=int, default=0)
    args = parser.parse_args()
    n = args.items
    ids, net, ranker, models = large_intake(n, learned=1.0)
    lags: list[float] = []
    builds: list[tuple[float, float]] = []
    intake: list[tuple[float, float]] = []  # the build of the delta that took the added items in
    observe, publish = models.metrics.publish_lag_seconds.observe, ranker.publish

    def lag(seconds: float) -> None:
        lags.append(seconds)
        observe(seconds)

    def timed(snapshot: Snapshot | None) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        publish(snapshot)
        took = (time.perf_counter() - started, time.thread_time() - cpu)
        grew = snapshot is not None and len(snapshot.item_ids) > n and not intake
        (intake if grew else builds).append(took)

    models.metrics.publish_lag_seconds.observe = lag  # type: ignore[method-assign]
    ranker.publish = timed  # type: ignore[method-assign]
    whole = serve_whole(net, ids, ranker, models)
    width = ranker.catalog.view.text.shape[1]
    added = [Item(f"added{k}", title=f"added {k}") for k in range(args.added)]
    added_text = np.random.default_rng(1).standard_normal((args.added, width)).astype(np.float32)
    if args.added:  # items the catalog has and the learner has not taken in yet
        ranker.catalog.put(added, added_text)
        ranker.refresh()
    lags.clear()
    builds.clear()

    stop = threading.Event()
    late = lock_waits(stop)

    def busy() -> None:  # half of the time in Python, as the event loop under load
        while not stop.is_set():
            started = time.perf_counter()
            while time.perf_counter() - started < 0.0025:
                sum(range(100))
            time.sleep(0.0025)

    threading.Thread(target=busy, daemon=True).start()
    parent, rng = (whole.serial, n), np.random.default_rng(0)
    ends = time.perf_counter() + args.seconds
    updates = 0
    while time.perf_counter() < ends:
        due = time.perf_counter() + INTERVAL_S
        if added and ends - time.perf_counter() < args.seconds / 2:  # halfway: the learner takes them in
            net.grow(torch.from_numpy(added_text))
            ids, added = [*ids, *(item.item_id for item in added)], []
        rows = torch.from_numpy(np.unique(rng.integers(0, n, args.rows)))
        with torch.no_grad():
            net.item_id.weight[rows] += 0.01 * torch.randn(len(rows), net.item_id.embedding_dim)
            net.item_bias.weight[rows] -= 0.01
            net.query += 0.001
        updates += 1
        delta = delta_of(net, parent, rows, item_ids=ids, user_ids=[], checkpoint=1, updates=updates, offset=0)
        models.receive(delta.to_bytes(), "learner")
        parent = (delta.serial, len(ids))
        time.sleep(max(0.0, due - time.perf_counter()))
    time.sleep(1.0)  # the last build
    stop.set()
    models.close()
    ranker.retrieval.wait()  # an index step still running in C++ would abort the interpreter's exit
    report(args, lags, builds, late, intake)


def report(
    args: argparse.Namespace,
    lags: list[float],
    builds: list[tuple[float, float]],
    late: list[float],
    intake: list[tuple[float, float]],
) -> None:
    lag_ms, wall, cpu = np.asarray(lags) * 1e3, [w for w, _ in builds], [c for _, c in builds]
    waits = np.asarray(late) * 1e3
    figures = (
        f"{len(lag_ms)} deltas served, lag p50 {np.percentile(lag_ms, 50):.0f} ms, p99 "
        f"{np.percentile(lag_ms, 99):.0f} ms, longest {lag_ms.max():.0f} ms; {len(builds)} builds, mean "
        f"{np.mean(wall) * 1e3:.1f} ms ({np.mean(cpu) * 1e3:.1f} ms of the processor); lock waits p99 "
        f"{np.percentile(waits, 99):.2f} ms, longest {waits.max():.1f} ms"
    )
    if intake:
        figures += (
            f"; the build of the delta that took the {args.added:,} added items in {intake[0][0] * 1e3:,.0f} ms "
            f"({intake[0][1] * 1e3:,.0f} ms of the processor)"
        )
    print(figures)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    added = f" --added {args.added}" if args.added else ""
    body = (
        f"`python benchmarks/publish_lag.py --items {args.items} --rows {args.rows} --seconds {args.seconds:g}"
        f"{added}`, run on {dt.date.today()} at {commit}: {figures}.\n"
    )
    if args.added:
        heading = f"Publish lag on {args.items:,} items, {args.added:,} of the catalog's not yet the model's"
        write_section("publish-lag-added", heading, body)
    else:
        write_section("publish-lag", f"Publish lag on {args.items:,} items (issue 18)", body)


if __name__ == "__main__":
    main()
