"""What a recommendation and the learner read of a user in SQLite: from the per-user index
alone, against the index's offsets and then the table's rows.

    python benchmarks/history_read.py --store DATA/freshrec.db [--requests 2000] [--rounds 4]

On an existing store (e.g. the one ``scale.py`` leaves in ``/tmp/freshrec-scale``), reads
``user_context(user, 20, 500)`` (the model's history and the items ``exclude_seen`` leaves
out, as the server asks) for the users of random events, in alternating rounds: as the store
reads it (schema 3: offset, item, type, value and time come from the index), and as schema
2 did (the offsets and items from the index, then the history's 20 rows from the table by
offset); and the learner's read of a user it meets for the first time, the 20 events before
the event it learns from, the same two ways. All run on the same file and the same
connection, after a pass over every user that reads their pages once and checks that the
answers agree (less the event id and context, which the index does not hold). Writes
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
from freshrec.storage import SQLiteStore
from harness import write_section

HISTORY, SEEN = 20, 500  # the default history_length and serve's SEEN_WINDOW


def from_rows(store: SQLiteStore, user_id: str, n: int, seen: int) -> tuple[list[Event], set[ItemId]]:
    """Schema 2's read: the index's offsets, then the history's rows from the table (the
    store's own row read, which ``user_history`` still uses)."""
    with store._read() as conn:
        keys = store._user_keys(conn, user_id, max(n, seen))
        return store._events(conn, [key[0] for key in keys[:n]]), {key[1] for key in keys[:seen]}


def bare(events: list[Event]) -> list[tuple[object, ...]]:
    return [(e.item_id, e.offset, e.type, e.timestamp, e.value) for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    store = SQLiteStore(args.store)
    last = store.last_offset()
    rng = random.Random(0)
    with store._read() as conn:
        events = [rng.randint(1, last) for _ in range(args.requests)]
        found = [r for o in events for r in conn.execute("SELECT user_id, seq FROM events WHERE seq = ?", (o,))]
    users, offsets = [r[0] for r in found], [int(r[1]) for r in found]
    pairs = list(zip(users, offsets, strict=True))
    for user, at in pairs:  # every user's pages read once before the timed rounds, and the answers compared
        ours, theirs = store.user_context(user, HISTORY, SEEN), from_rows(store, user, HISTORY, SEEN)
        learner = store.user_context(user, HISTORY, 0, before=at)[0]
        if bare(ours[0]) != bare(theirs[0]) or ours[1] != theirs[1]:
            raise SystemExit(f"the two reads disagree for {user!r}")
        if bare(learner) != bare(store.user_history(user, HISTORY, before=at)):
            raise SystemExit(f"the learner's two reads disagree for {user!r} before {at}")
    reads: dict[str, Callable[[str, int], object]] = {
        "a recommendation's, `user_context(user, 20, 500)`: the index alone (schema 3)": lambda u, at: (
            store.user_context(u, HISTORY, SEEN)
        ),
        "the same, as schema 2 read it: the index, then the history's rows from the table": lambda u, at: from_rows(
            store, u, HISTORY, SEEN
        ),
        "the learner's, `user_context(user, 20, 0, before=offset)`: the index alone": lambda u, at: store.user_context(
            u, HISTORY, 0, before=at
        ),
        "the same, as the learner read it before: `user_history(user, 20, before=offset)`": lambda u, at: (
            store.user_history(u, HISTORY, before=at)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in reads}
    names = list(reads)
    for round_ in range(args.rounds):
        for pair in (names[:2], names[2:]):
            for name in pair if round_ % 2 == 0 else pair[::-1]:
                started = time.perf_counter()
                for user, at in pairs:
                    reads[name](user, at)
                times[name].append(1e6 * (time.perf_counter() - started) / len(pairs))
                print(f"round {round_}: {name} {times[name][-1]:.0f} µs a read", flush=True)
    body = (
        f"`python benchmarks/history_read.py --store {args.store}` ({last:,} events, {len(users):,} users of "
        f"random events, the learner's reads below each of those events' offsets, {args.rounds} alternating "
        f"rounds), run on {dt.date.today()}.\n\n"
        "| read of a user's history | µs a read, each round |\n| --- | --- |\n"
        + "".join(f"| {name} | {', '.join(f'{t:.0f}' for t in ts)} |\n" for name, ts in times.items())
    )
    write_section("history-read", "What a recommendation and the learner read of a user (SQLite)", body)
    store.close()


if __name__ == "__main__":
    main()
