"""The sorted runs of the SQLite per-user index: reads through them equal reads of the
log, whatever the interleaving of appends, build steps, deletions and restarts."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.storage import SQLiteStore
from freshrec.storage import runs as runs_module
from freshrec.storage import sqlite as sqlite_module
from tests.conftest import make_event

USERS = ["u0", "u1", "u2", "u3", "u4"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 4 offsets, runs of 2 pieces, steps of 3 rows: every case in a few events."""
    monkeypatch.setattr(sqlite_module, "SEGMENT_BITS", 2)
    monkeypatch.setattr(runs_module, "FANOUT", 2)
    monkeypatch.setattr(runs_module, "CHUNK_ROWS", 3)


def assert_reads_match_the_log(store: SQLiteStore) -> None:
    log = store.read_events(0, 10_000)
    last = store.last_offset()
    for user in USERS:
        mine = [e for e in log if e.user_id == user]
        for n in (1, 3, 7, 100):
            assert store.user_history(user, n) == mine[-n:]
            assert store.user_items(user, n) == {e.item_id for e in mine[-n:]}
            for before in (None, 1, 4, 5, 9, last // 2, last, last + 1):
                earlier = [e for e in mine if before is None or (e.offset or 0) < before]
                history, seen = store.user_context(user, n, 2, before=before)
                assert history == [replace(e, event_id=None) for e in earlier[-n:]]
                assert seen == {e.item_id for e in earlier[-2:]}


def served_runs_copy_their_segments(store: SQLiteStore) -> None:
    conn = store._conn
    for run in runs_module.all_runs(conn):
        if run.state != "served":
            continue
        copied = conn.execute("SELECT seq, user_id FROM user_runs WHERE run = ? ORDER BY seq", (run.run,)).fetchall()
        logged = conn.execute(
            "SELECT seq, user_id FROM events WHERE segment BETWEEN ? AND ? ORDER BY seq", (run.low, run.high)
        ).fetchall()
        assert copied == logged
        assert run.high < store._high_water() >> sqlite_module.SEGMENT_BITS  # closed segments only


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.sampled_from(USERS), min_size=1, max_size=9)),
        st.tuples(st.just("step"), st.integers(1, 6)),
        st.tuples(st.just("delete"), st.sampled_from(USERS)),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.usefixtures("tiny")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_reads_through_runs_equal_reads_of_the_log(ops: list[tuple[str, object]]) -> None:
    store = SQLiteStore(":memory:")
    count = 0
    for op, arg in ops:
        if op == "append":
            assert isinstance(arg, list)
            store.append_events([make_event(u, f"i{count + k}") for k, u in enumerate(arg)])
            count += len(arg)
        elif op == "step":
            assert isinstance(arg, int)
            for _ in range(arg):
                store.maintain(0.0)
        else:
            assert isinstance(arg, str)
            store.delete_user(arg)
        served_runs_copy_their_segments(store)
    assert_reads_match_the_log(store)
    while store.maintain(1.0):
        pass
    served_runs_copy_their_segments(store)
    assert_reads_match_the_log(store)


def statements_of_a_read(store: SQLiteStore, user: str) -> list[str]:
    said: list[str] = []
    store._conn.set_trace_callback(said.append)
    store.user_context(user, 20, 500)
    store._conn.set_trace_callback(None)
    return [s for s in said if "user_id = ?" in s or "user_id = '" in s]


def test_a_long_log_is_read_in_a_few_statements_once_its_runs_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """301 segments: a read of a user's whole history looks in each (64 at most per
    statement) until the runs are built, then in the newest segment and a few runs."""
    monkeypatch.setattr(sqlite_module, "SEGMENT_BITS", 2)
    monkeypatch.setattr(runs_module, "CHUNK_ROWS", 50)
    store = SQLiteStore(":memory:")
    events = [make_event(USERS[n % 5], f"i{n}") for n in range(1_200)]
    store.append_events(events)
    before = statements_of_a_read(store, "u3")
    steps = 0
    while store.maintain(0.0):
        steps += 1
    after = statements_of_a_read(store, "u3")
    segments = sum(len(m.split(",")) for s in before for m in re.findall(r"segment IN \(([^)]*)\)", s))
    assert segments == (store.last_offset() >> 2) + 1 == 301 and len(before) >= 5
    assert len(after) <= 3
    # 8 runs of level 1 (8 segments each) merge into one of level 2, 8 of those into one of level 3 ...
    levels = [r.level for r in runs_module.all_runs(store._conn)]
    assert max(levels) == 2 and len(levels) <= 2 * (runs_module.FANOUT - 1)
    assert steps > len(levels)  # the copies went in steps
    assert_reads_match_the_log(store)


def test_a_build_goes_on_after_a_restart_and_a_deletion(tiny: None, tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.append_events([make_event(USERS[n % 5], f"i{n}") for n in range(60)])
        for _ in range(4):
            store.maintain(0.0)
        states = {r.state for r in runs_module.all_runs(store._conn)}
        assert "building" in states
    with SQLiteStore(path) as store:
        assert store.delete_user("u2") == 12
        while store.maintain(0.0):
            pass
        assert {r.state for r in runs_module.all_runs(store._conn)} == {"served"}
        assert not store._conn.execute("SELECT 1 FROM user_runs WHERE user_id = 'u2'").fetchall()
        served_runs_copy_their_segments(store)
        assert_reads_match_the_log(store)


def test_a_version_3_file_gains_the_runs(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.append_events([make_event(event_id="e1")])
    with sqlite3.connect(path) as conn:  # as version 3 left it
        conn.execute("DROP TABLE user_runs")
        conn.execute("DROP TABLE runs")
        conn.execute("PRAGMA user_version = 3")
    with SQLiteStore(path) as store:
        assert not store.maintain(1.0)  # one segment, still open: nothing to build
        assert [e.item_id for e in store.user_history("u1", 5)] == ["i1"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    plan = conn.execute(  # a run is read by one descent, from its key alone
        "EXPLAIN QUERY PLAN SELECT seq, item_id, type, value, ts FROM user_runs"
        " WHERE run IN (1, 2) AND user_id = 'u1' ORDER BY seq DESC LIMIT 5"
    ).fetchall()
    assert "PRIMARY KEY (run=? AND user_id=?)" in plan[0][3]


def test_an_import_ends_with_every_run_built(tiny: None) -> None:
    from freshrec.cli.imports import sort_histories

    store = SQLiteStore(":memory:")
    store.append_events([make_event(USERS[n % 5], f"i{n}") for n in range(100)])
    sort_histories(store)
    assert not store.maintain(1.0)
    served = runs_module.served_runs(store._conn)
    assert sorted((low, high) for _, low, high in served) == [(0, 15), (16, 23)]  # 24 closed segments of 25
    assert sorted(run for run, _, _ in served) == [1, 2]  # each straight from the segments: no run merged again
    assert_reads_match_the_log(store)


ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)  # quotes, brackets, any script
reals = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.usefixtures("tiny")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(USERS[:2]), ids, reals, st.none() | reals), min_size=1, max_size=30))
def test_a_read_gives_back_every_value_exactly(rows: list[tuple[str, str, float, float | None]]) -> None:
    """Items, times and values as they were appended, from the segments and from the runs
    (a read takes each statement's rows as one JSON row: its numbers must not be rounded)."""
    store = SQLiteStore(":memory:")
    store.append_events([make_event(u, item, t=t, value=value) for u, item, t, value in rows])
    for built in (False, True):
        while built and store.maintain(1.0):
            pass
        for user in USERS[:2]:
            mine = [replace(e, event_id=None) for e in store.read_events(0, 100) if e.user_id == user]
            assert store.user_context(user, 100, 100) == (mine, {e.item_id for e in mine})
            assert store.user_history(user, 100) == mine
