"""A recommendation's read of a user in SQLite while another thread of the process computes.

    python benchmarks/read_beside_compute.py --store DATA/freshrec.db [--requests 2000]

Why: the server reads a user's history on its event loop, and Python's sqlite3 gives the
interpreter lock up at each step of a statement (a row). A thread that computes in Python
beside it (in the server: the model's pass, building a served copy, the index's checks)
takes the lock at each step that waits long enough for it to wake, and keeps it until the
reader has asked for it back for the switch interval (``sys.setswitchinterval``, 5 ms by
default). Reads that were under a millisecond alone then take tens to hundreds.

On an existing store (e.g. the one ``scale.py`` leaves in ``/tmp/freshrec-scale``), reads
``user_context(user, 20, 500)`` (the model's history and the items ``exclude_seen`` leaves
out, as the server asks) for the users of random events: alone, and beside a thread that
runs a Python loop (the worst case: it never gives the lock up by itself), at Python's
switch interval and at the server's (:data:`freshrec.runtime.SWITCH_INTERVAL_S`), in
alternating rounds after a pass that reads every user's pages once. Writes RESULTS.md,
section "read-beside-compute".
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time
from pathlib import Path

import numpy as np

from freshrec.runtime import SWITCH_INTERVAL_S
from freshrec.storage import SQLiteStore
from harness import write_section
from history_read import HISTORY, SEEN, event_users


def compute(stop: threading.Event) -> None:
    """Work in Python that gives the interpreter lock up only when asked to."""
    total = 0
    while not stop.is_set():
        for i in range(10_000):
            total += i


def timed(store: SQLiteStore, users: list[str], beside: bool, switch_s: float) -> list[float]:
    """Milliseconds of each read of ``users``."""
    stop = threading.Event()
    worker = threading.Thread(target=compute, args=(stop,), daemon=True) if beside else None
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    try:
        if worker is not None:
            worker.start()
            time.sleep(0.05)
        times = []
        for user in users:
            started = time.perf_counter()
            store.user_context(user, HISTORY, SEEN)
            times.append(1000 * (time.perf_counter() - started))
        return times
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        sys.setswitchinterval(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    store = SQLiteStore(args.store)
    last = store.last_offset()
    users = [user for user, _ in event_users(store, args.requests)]
    seen = [len(store.user_context(u, HISTORY, SEEN)[1]) for u in users]  # every user's pages read once
    default = sys.getswitchinterval()
    cases = {
        "alone": (False, default),
        f"beside a computing thread, switch interval {default * 1000:g} ms (Python's)": (True, default),
        f"beside a computing thread, switch interval {SWITCH_INTERVAL_S * 1000:g} ms (the server's)": (
            True,
            SWITCH_INTERVAL_S,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.rounds):
        for name in cases if round_ % 2 == 0 else reversed(cases):
            times[name] += (got := timed(store, users, *cases[name]))
            print(f"round {round_}: {name}: p50 {np.percentile(got, 50):.2f} ms, max {max(got):.1f} ms", flush=True)
    body = (
        f"`python benchmarks/read_beside_compute.py --store {args.store}` ({last:,} events; {len(users):,} users "
        f"of random events, {np.mean(seen):.0f} items seen each on average, {args.rounds} alternating rounds), "
        f"run on {dt.date.today()}.\n\n"
        "| `user_context(user, 20, 500)` | p50 ms | p99 ms | p99.9 ms | max ms |\n| --- | --- | --- | --- | --- |\n"
        + "".join(
            f"| {name} | {np.percentile(t, 50):.2f} | {np.percentile(t, 99):.2f} | {np.percentile(t, 99.9):.1f} "
            f"| {max(t):.1f} |\n"
            for name, t in times.items()
        )
    )
    write_section("read-beside-compute", "A user's read beside a thread that computes (SQLite)", body)
    store.close()


if __name__ == "__main__":
    main()
