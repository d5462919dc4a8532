"""Sorted runs of the SQLite log's per-user index: a user's older events in a few descents.

The per-user index is segmented (:mod:`freshrec.storage.sqlite`) so that ingest stays
fast, but then a user's history spans every segment, one B-tree descent each: 77 on a
10,000,000-event log, and with the rows they touch spread over the file, a fifth of the
server's event loop under load. The segments that take no more inserts (all but the
newest) are copied, in the background, into *runs* keyed by user first: a run of
:data:`FANOUT` segments, then one of ``FANOUT`` such runs, and so on (tiered merging, as in
a log-structured merge tree; segments not yet in a run go straight into one of up to 64),
so a read descends at most ``FANOUT - 1`` times a level (on that log, into five segments
and two runs instead of 77 segments). A run is a copy: the events and their segmented
index stay the source of truth (a deletion removes a user from both), and what a run covers is
read from the segments until the run is complete.

Each step of the work is one short write transaction that copies or deletes about
:data:`CHUNK_ROWS` rows in the key's order (appended at the B-tree's right edge, no random
writes) and records how far it got in ``runs``: a crash loses at most that step, and an
append waits for the lock at most one step. A run being built (``building``) and runs
merged into a newer one (``retired``, their rows deleted a step at a time) are never read.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from freshrec.domain import Offset, UserId

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_runs (
    run INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL,
    PRIMARY KEY (run, user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    level INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('building', 'served', 'retired')),
    next_user TEXT NOT NULL DEFAULT ''
);
"""

FANOUT = 8
"""Pieces merged into one run: ``FANOUT`` closed segments, or runs of one level."""
CHUNK_ROWS = 20_000
"""Rows a step copies or deletes (about 30 ms of a write lock)."""
MERGED_SOURCES = 64
"""The most segments or runs one statement of a read spans."""

Key = tuple[int, str, str, float | None, float]
"""What a read takes of an event: offset, item, type, value, time."""
Found = list[Any]
"""An event as a read finds it: offset, item and type, and its value and time as SQLite
writes them (:func:`decoded` makes a :data:`Key` of it)."""


@dataclass(frozen=True, slots=True)
class Run:
    run: int
    low: int
    """Its first segment."""
    high: int
    """Its last segment."""
    level: int
    state: str
    next_user: str
    """Building: the first user the next step copies."""


def all_runs(conn: sqlite3.Connection) -> list[Run]:
    return [Run(*row) for row in conn.execute("SELECT run, low, high, level, state, next_user FROM runs ORDER BY low")]


def served_runs(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """The runs a read looks in: run, first and last segment, newest first."""
    return conn.execute("SELECT run, low, high FROM runs WHERE state = 'served' ORDER BY high DESC").fetchall()


def _sources(served: list[tuple[int, int, int]], newest: int) -> Iterator[tuple[str, int]]:
    """What a read looks in, newest first: ``("segment", s)`` for a segment no served
    run covers, ``("run", id)`` for a served run (``served``: run, low, high, newest first)."""
    segment = newest
    for run, low, high in served:
        yield from (("segment", s) for s in range(segment, high, -1))
        yield "run", run
        segment = low - 1
    yield from (("segment", s) for s in range(segment, -1, -1))


def user_keys(
    conn: sqlite3.Connection, user_id: UserId, n: int, newest: int, before: Offset | None, bits: int
) -> list[Found]:
    """The offset, item, type, value and time (:data:`Found`) of the user's last ``n`` events (below
    offset ``before``, if given), newest first, from the indexes alone; ``newest`` is the
    log's newest segment, ``bits`` the segments' size.

    The newest source is read alone (in the index's order: an active user's events end
    there), the older ones several at a time (segments or runs, as they come), which
    SQLite sorts: as many as the user's events found so far say the rest needs (a quarter
    more), at most :data:`MERGED_SOURCES`, and that many when none was found. A history and
    the items seen on a 10,000,000-event log (77 segments): a statement per segment 1.3 ms,
    64 segments at a time after the newest 0.68-0.98 ms, the newest segments and two runs
    (three statements) 0.40-0.49 ms (``benchmarks/history_read.py``)."""
    with _snapshot(conn):  # the runs read are those the statements below find
        served = served_runs(conn)
        top = newest if before is None else min(newest, (before - 1) >> bits)
        lows = {run: low for run, low, _ in served}
        sources = [(kind, x) for kind, x in _sources(served, newest) if (lows[x] if kind == "run" else x) <= top]
        below, bound = ("", ()) if before is None else (" AND seq < ?", (before,))
        keys: list[Found] = []
        start, size = 0, 1
        while len(keys) < n and start < len(sources):
            kind, group = _leading(sources[start : start + size])
            start += len(group)
            table, column = ("events", "segment") if kind == "segment" else ("user_runs", "run")
            keys += _one_row(
                conn,
                f"SELECT seq, item_id, type, value, ts FROM {table} WHERE {column} IN ({', '.join('?' * len(group))})"
                f" AND user_id = ?{below} ORDER BY seq DESC LIMIT ?",
                (*group, user_id, *bound, n - len(keys)),
            )
            # as many sources as the user's events per source so far say the rest needs, a quarter more
            wanted = math.ceil(1.25 * (n - len(keys)) * start / len(keys)) if keys else MERGED_SOURCES
            size = min(MERGED_SOURCES, wanted)
    return keys  # sources are newest first and disjoint: the groups' rows come in order


def _one_row(conn: sqlite3.Connection, select: str, params: tuple[object, ...]) -> list[Found]:
    """The events ``select`` finds, newest first, read as one row (a JSON array).

    Why: Python's sqlite3 gives the interpreter lock up for each step of a statement, a row
    each, and a thread that computes in Python beside the reader (in the server: the
    model's pass, parsing a snapshot) may take it at each step and keep it for the switch
    interval. On the million-item shop beside such a thread, at the server's switch
    interval (0.5 ms), a recommendation's read of a user (195 rows on average) took p50 5.5,
    p99 45, at most 83 ms row by row; as one row a statement 2.7, 6.3 and 20 ms (alone 0.19
    against 0.23 ms; ``benchmarks/read_beside_compute.py``). ``quote`` writes a real number
    exactly (JSON's numbers keep 15 digits). The numbers are left as written (:func:`decoded`):
    a recommendation uses the item alone of most events it reads (those it excludes as
    seen), and decoding 195 events took 166 µs of the interpreter against 66 µs for the
    JSON alone (a recommendation's read on a 10,000,000-event log, about 100 events a
    user: median 391 µs with every event decoded, 365 µs with its history's alone)."""
    (text,) = conn.execute(
        f"SELECT json_group_array(json_array(seq, item_id, type, quote(value), quote(ts))) FROM ({select})", params
    ).fetchone()
    found: list[Found] = json.loads(text)
    found.sort(key=itemgetter(0), reverse=True)  # an aggregate's order is not guaranteed
    return found


def decoded(event: Found) -> Key:
    """The event's offset, item, type, value and time."""
    seq, item, kind, value, ts = event
    return seq, item, kind, None if value == "NULL" else float(value), float(ts)


def _leading(sources: list[tuple[str, int]]) -> tuple[str, list[int]]:
    """The kind of the first source, and the ids of those of that kind before another kind."""
    kind = sources[0][0]
    return kind, [x for _, x in itertools.takewhile(lambda source: source[0] == kind, sources)]


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction (a step may serve a run and retire its pieces in between two
    statements otherwise); inside the caller's own transaction, that one."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def delete_user(conn: sqlite3.Connection, user_id: UserId) -> None:
    """Remove the user from every run (served, building or retired)."""
    for run in all_runs(conn):
        conn.execute("DELETE FROM user_runs WHERE run = ? AND user_id = ?", (run.run, user_id))


def step(conn: sqlite3.Connection, closed: int) -> bool:
    """One step of the work, inside the caller's write transaction; ``False`` when there
    was none. ``closed``: the newest segment that takes no more inserts (-1: none)."""
    runs = all_runs(conn)
    retired = next((r for r in runs if r.state == "retired"), None)
    if retired is not None:
        _delete_some(conn, retired)
        return True
    building = next((r for r in runs if r.state == "building"), None) or _plan(conn, runs, closed)
    if building is None:
        return False
    _copy_some(conn, building, runs)
    return True


def _plan(conn: sqlite3.Connection, runs: list[Run], closed: int) -> Run | None:
    """The next run to build: the oldest ``FANOUT`` consecutive pieces of one level (a
    closed segment no run covers is a piece of level 0, a served run one of its level).
    Segments go straight into a run of as high a level as they fill (at most
    :data:`MERGED_SOURCES` of them), not through runs merged again: an import's end copies
    each event once."""
    pieces: list[tuple[int, int, int]] = []  # level, low, high; oldest first
    served = iter([r for r in runs if r.state == "served"])
    run = next(served, None)
    segment = 0
    while segment <= closed:
        if run is not None and run.low == segment:
            pieces.append((run.level, run.low, run.high))
            segment = run.high + 1
            run = next(served, None)
        else:
            pieces.append((0, segment, segment))
            segment += 1
    levels = [piece[0] for piece in pieces]
    for i, level in enumerate(levels):
        same = len(list(itertools.takewhile(level.__eq__, levels[i:])))
        if same < FANOUT:
            continue
        segments, size, level = level == 0, FANOUT, level + 1
        while segments and size * FANOUT <= min(same, MERGED_SOURCES):
            size, level = size * FANOUT, level + 1
        low, high = pieces[i][1], pieces[i + size - 1][2]
        number = conn.execute(
            "INSERT INTO runs (run, low, high, level, state) VALUES"
            " ((SELECT COALESCE(MAX(run), 0) + 1 FROM runs), ?, ?, ?, 'building') RETURNING run",
            (low, high, level),
        ).fetchone()[0]
        return Run(number, low, high, level, "building", "")
    return None


def _copy_some(conn: sqlite3.Connection, run: Run, runs: list[Run]) -> None:
    """Copy the next users' rows of ``run``'s pieces into it, sorted; the last step serves
    it and retires the runs it merges."""
    table, column = "user_runs", "run"
    pieces = [r.run for r in runs if r.state == "served" and run.low <= r.low and r.high <= run.high]
    if not pieces:  # it is built from segments
        table, column = "events", "segment"
        pieces = list(range(run.low, run.high + 1))
    # the nearest of the users CHUNK_ROWS / len(pieces) rows further in each piece
    ends = [
        conn.execute(
            f"SELECT user_id FROM {table} WHERE {column} = ? AND user_id > ? ORDER BY user_id LIMIT 1 OFFSET ?",
            (piece, run.next_user, max(0, CHUNK_ROWS // len(pieces) - 1)),
        ).fetchone()
        for piece in pieces
    ]
    end = min((e for e in ends if e is not None), default=None)
    upto, bound = ("", ()) if end is None else (" AND user_id < ?", (end[0],))
    conn.execute(
        "INSERT INTO user_runs (run, user_id, seq, item_id, type, value, ts)"
        f" SELECT ?, user_id, seq, item_id, type, value, ts FROM {table}"
        f" WHERE {column} IN ({', '.join('?' * len(pieces))}) AND user_id >= ?{upto} ORDER BY user_id, seq",
        (run.run, *pieces, run.next_user, *bound),
    )
    if end is not None:
        conn.execute("UPDATE runs SET next_user = ? WHERE run = ?", (end[0], run.run))
        return
    conn.execute("UPDATE runs SET state = 'served', next_user = '' WHERE run = ?", (run.run,))
    if table == "user_runs":
        conn.execute(
            f"UPDATE runs SET state = 'retired' WHERE run IN ({', '.join('?' * len(pieces))})",
            pieces,
        )


def _delete_some(conn: sqlite3.Connection, run: Run) -> None:
    """Delete the first users' rows of a retired run; the last step forgets the run."""
    end = conn.execute(
        "SELECT user_id FROM user_runs WHERE run = ? ORDER BY user_id LIMIT 1 OFFSET ?", (run.run, CHUNK_ROWS)
    ).fetchone()
    if end is None:
        conn.execute("DELETE FROM user_runs WHERE run = ?", (run.run,))
        conn.execute("DELETE FROM runs WHERE run = ?", (run.run,))
    else:
        conn.execute("DELETE FROM user_runs WHERE run = ? AND user_id <= ?", (run.run, end[0]))
