"""What a recommendation and the learner read of a user in SQLite: through the per-user
index's sorted runs (schema 4), against its log segments alone (schema 3).

    python benchmarks/history_read.py --store DATA/freshrec.db [--requests 2000] [--rounds 4]

On an existing store (e.g. the one ``scale.py`` leaves in ``/tmp/freshrec-scale``), first
builds what is left of the sorted runs (:mod:`freshrec.storage.runs`; an import builds them,
and the learner as the log grows: timed here if any is left), then reads ``user_context(user,
20, 500)`` (the model's history and the items ``exclude_seen`` leaves out, as the server
asks) for the users of random events, in alternating rounds: as the store reads it (the
newest segments, then the runs), and as schema 3 did (every segment, the runs ignored); and
the learner's read of a user it meets for the first time, the 20 events before the event it
learns from, the same two ways. All run on the same file and the same connection, after a
pass over every user that reads their pages once and checks that the answers agree. Writes
RESULTS.md, section "history-read".
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from collections.abc import Callable
from pathlib import Path

from freshrec.domain import Event, ItemId
from freshrec.storage import SQLiteStore, runs
from freshrec.storage.sqlite import SEGMENT_BITS
from harness import write_section

HISTORY, SEEN = 20, 500  # the default history_length and serve's SEEN_WINDOW


def event_users(store: SQLiteStore, n: int) -> list[tuple[str, int]]:
    """The user and offset of ``n`` random events of ``store``'s log (seeded: the same each
    run; an offset that holds no event, deleted, is left out)."""
    rng, last = random.Random(0), store.last_offset()
    with store._read() as conn:
        offsets = [rng.randint(1, last) for _ in range(n)]
        found = [r for o in offsets for r in conn.execute("SELECT user_id, seq FROM events WHERE seq = ?", (o,))]
    return [(str(r[0]), int(r[1])) for r in found]


def segments_alone(read: Callable[[], tuple[list[Event], set[ItemId]]]) -> tuple[list[Event], set[ItemId]]:
    """``read()`` as schema 3 answered it: no run served, every segment looked in."""
    served, runs.served_runs = runs.served_runs, lambda conn: []
    try:
        return read()
    finally:
        runs.served_runs = served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    store = SQLiteStore(args.store)
    started = time.perf_counter()
    while store.maintain(1.0):
        pass
    built = time.perf_counter() - started
    with store._read() as conn:
        spans = [f"{low}-{high}" for _, low, high in runs.served_runs(conn)]
    print(f"runs built in {built:.1f} s; served: segments {', '.join(spans) or 'none'}")
    last = store.last_offset()
    pairs = event_users(store, args.requests)
    reads: dict[str, Callable[[str, int], object]] = {
        "a recommendation's, `user_context(user, 20, 500)`: the newest segments, then the runs (schema 4)": (
            lambda u, at: store.user_context(u, HISTORY, SEEN)
        ),
        "the same, every segment (schema 3)": lambda u, at: segments_alone(
            lambda: store.user_context(u, HISTORY, SEEN)
        ),
        "the learner's, `user_context(user, 20, 0, before=offset)`: segments, then runs": lambda u, at: (
            store.user_context(u, HISTORY, 0, before=at)
        ),
        "the same, segments alone": lambda u, at: segments_alone(lambda: store.user_context(u, HISTORY, 0, before=at)),
    }
    names = list(reads)
    for user, at in pairs:  # every user's pages read once before the timed rounds, and the answers compared
        for ours, theirs in (names[:2], names[2:]):
            if reads[ours](user, at) != reads[theirs](user, at):
                raise SystemExit(f"{ours} and {theirs} disagree for {user!r} (offset {at})")
    times: dict[str, list[float]] = {name: [] for name in reads}
    for round_ in range(args.rounds):
        for pair in (names[:2], names[2:]):
            for name in pair if round_ % 2 == 0 else pair[::-1]:
                started = time.perf_counter()
                for user, at in pairs:
                    reads[name](user, at)
                times[name].append(1e6 * (time.perf_counter() - started) / len(pairs))
                print(f"round {round_}: {name} {times[name][-1]:.0f} µs a read", flush=True)
    body = (
        f"`python benchmarks/history_read.py --store {args.store}` ({last:,} events, "
        f"{(last >> SEGMENT_BITS) + 1} segments; runs served over segments {', '.join(spans) or 'none'}"
        f"{f', built in {built:.0f} s' if built >= 1 else ''}; {len(pairs):,} users of "
        f"random events, the learner's reads below each of those events' offsets, {args.rounds} alternating "
        f"rounds), run on {dt.date.today()}.\n\n"
        "| read of a user's history | µs a read, each round |\n| --- | --- |\n"
        + "".join(f"| {name} | {', '.join(f'{t:.0f}' for t in ts)} |\n" for name, ts in times.items())
    )
    write_section("history-read", "What a recommendation and the learner read of a user (SQLite)", body)
    store.close()


if __name__ == "__main__":
    main()
