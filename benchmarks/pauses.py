"""How long requests wait while a server takes in a whole model snapshot of a large catalog.

    python benchmarks/pauses.py [--items 1000000] [--rounds 3]

A server answers requests on one thread, and every other thread of its process (the one
that parses snapshots, the publisher that builds the serving copy) shares the interpreter
lock with it: a step that holds the lock for 100 ms stops every request for 100 ms. This
builds a network of ``--items`` items (half of the rows learned, as in a large shop's
snapshot), a catalog and the server's snapshot intake (:class:`~freshrec.serve.models.Models`
with the collection the server runs after a whole snapshot), then, ``--rounds`` times,
hands it the bytes of a whole snapshot while a thread asks for the lock every millisecond,
as the event loop does, and records how late it gets it. Reports the longest pauses of the
parse (receiver thread) and of the build and collection (publisher thread) of each round, and
how long that thread waited in all, beyond its timer's slack when nothing else runs (what the
intake took of the lock: under load, requests' work waits that long too, even where no single
pause is long).
The first round's collection scans every object, as a server's does after the whole
snapshot it starts with (before its traffic); the later rounds' are what a server under
traffic sees. Writes the ``pauses`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import subprocess
import threading
import time

from freshrec.model.snapshot import Snapshot
from freshrec.serve import engine
from harness import large_intake, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.items
    ids, net, ranker, models = large_intake(n, learned=0.5)  # half the rows learned, as in a large shop's
    models.settle = engine.Refreeze()
    gc.collect()
    gc.freeze()  # as the server does once it is up

    late: list[tuple[float, float]] = []
    stop = threading.Event()

    def ask() -> None:  # the event loop's part: it wants the lock often
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            late.append((started, time.perf_counter() - started - 0.001))

    threading.Thread(target=ask, daemon=True).start()
    models.start()
    rows = []
    for r in range(args.rounds):
        data = Snapshot.of(net, ids, [], checkpoint=1, updates=r, offset=0).to_bytes()
        quiet = time.perf_counter()
        time.sleep(0.5)  # how late the thread wakes when nothing else runs: its timer's slack
        started = time.perf_counter()
        slack = statistics.median(x for t, x in late if quiet <= t < started)
        got = models.receive(data, "learner")
        parsed = time.perf_counter()
        assert got is not None
        serial = got.serial
        while (sc := ranker.scoring.snapshot) is None or sc.serial != serial:
            time.sleep(0.01)
        time.sleep(1.0)  # the collection after the build
        ended = time.perf_counter()
        for phase, (lo, hi) in (("parse", (started, parsed)), ("build and collection", (parsed, ended))):
            pauses = sorted((x for t, x in late if lo <= t < hi), reverse=True)
            longest, over = ", ".join(f"{x * 1000:.0f}" for x in pauses[:5]), sum(x > 0.02 for x in pauses)
            waited = sum(max(0.0, x - slack) for x in pauses)
            print(
                f"round {r + 1} {phase}: {hi - lo:.2f} s, longest pauses {longest} ms, {over} over 20 ms, "
                f"{waited * 1000:.0f} ms waited in all (beyond the timer's slack, {slack * 1000:.2f} ms a wake)"
            )
            rows.append((r + 1, phase, hi - lo, pauses[:5], over, len(data), waited))
    stop.set()
    models.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    body = (
        f"`python benchmarks/pauses.py --items {n} --rounds {args.rounds}`, run on {dt.date.today()} at {commit}: "
        f"a whole snapshot of {rows[-1][5] / 2**20:.0f} MB taken in, the pauses a thread asking for the "
        "interpreter lock every millisecond saw, in each round (the first round's collection scans every "
        "object, as a server's does after the whole snapshot it starts with, before its traffic).\n\n"
        "| round | phase | seconds | five longest pauses | pauses over 20 ms | waited in all, beyond the slack |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        + "".join(
            f"| {r} | {phase} | {secs:.2f} | {', '.join(f'{x * 1000:.0f}' for x in top)} ms | {over} | "
            f"{waited * 1000:.0f} ms |\n"
            for r, phase, secs, top, over, _, waited in rows
        )
    )
    write_section("pauses", "Pauses while a whole snapshot is taken in (1,000,000 items, issue 18)", body)


if __name__ == "__main__":
    main()
