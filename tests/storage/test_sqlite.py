"""What is specific to the SQLite backend: the file, WAL mode, reopening."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from freshrec.settings import StorageSettings
from freshrec.storage import SQLiteStore, open_store
from freshrec.storage import sqlite as sqlite_module
from freshrec.storage.sqlite import SchemaError
from tests.conftest import make_event, resident_share


def test_data_survives_reopening_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path, StorageSettings(synchronous="full")) as store:
        store.append_events([make_event(event_id="e1")])
    with SQLiteStore(path) as store:
        assert [e.event_id for e in store.read_events()] == ["e1"]
        assert store.append_events([make_event(event_id="e1")]).duplicates == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_a_file_of_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sqlite3.connect(path).execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaError, match="schema version 99"):
        SQLiteStore(path)


@pytest.mark.parametrize(
    ("version", "index"),
    [
        (1, "events_user ON events (segment, user_id, seq)"),
        (2, "events_user_items ON events (segment, user_id, seq, item_id)"),
    ],
)
def test_older_files_are_upgraded_to_the_covering_user_index(tmp_path: Path, version: int, index: str) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.append_events([make_event(event_id="e1")])
    with sqlite3.connect(path) as conn:  # as that version left it
        conn.execute("DROP INDEX events_user_history")
        conn.execute(f"CREATE INDEX {index}")
        conn.execute(f"PRAGMA user_version = {version}")
    with SQLiteStore(path) as store:
        assert store.user_items("u1", 10) == {"i1"}
        assert [(e.item_id, e.offset) for e in store.user_context("u1", 5, 5)[0]] == [("i1", 1)]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"events_user", "events_user_items"}.isdisjoint(indexes) and "events_user_history" in indexes
    plan = conn.execute(  # what a recommendation reads comes from the index alone
        "EXPLAIN QUERY PLAN SELECT seq, item_id, type, value, ts FROM events"
        " WHERE segment IN (0, 1) AND user_id = 'u1' ORDER BY seq DESC LIMIT 5"
    ).fetchall()
    assert "COVERING INDEX events_user_history" in plan[0][3]


def test_unknown_url_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported store URL scheme 'mysql'"):
        open_store("mysql://localhost/db")


@pytest.mark.parametrize("merged", [64, 3, 1])
def test_history_and_deletion_across_many_segments(monkeypatch: pytest.MonkeyPatch, merged: int) -> None:
    """Tiny segments, so that a user's events spread over dozens of them (75: read in
    several statements, however many segments each spans)."""
    import random

    from freshrec.storage import runs
    from freshrec.storage import sqlite as module

    monkeypatch.setattr(module, "SEGMENT_BITS", 2)
    monkeypatch.setattr(runs, "MERGED_SOURCES", merged)
    store = SQLiteStore(":memory:")
    rng = random.Random(1)
    users = [f"u{rng.randrange(6)}" for _ in range(300)]
    for start in range(0, 300, 7):
        store.append_events([make_event(u, f"i{n}") for n, u in enumerate(users[start : start + 7], start=start)])
    log = store.read_events(0, 1_000)
    for user in sorted(set(users)):
        mine = [e for e in log if e.user_id == user]
        for n in (1, 5, 40, 1_000):
            assert store.user_history(user, n) == mine[-n:]
            history, seen = store.user_context(user, n, n)
            assert history == [replace(e, event_id=None) for e in mine[-n:]] and seen == store.user_items(user, n)
            assert store.user_items(user, n) == {e.item_id for e in mine[-n:]}
            for before in (1, 4, 5, 117, 118, 301):  # segment edges (4 offsets each) and inside
                earlier = [e for e in mine if (e.offset or 0) < before]
                assert store.user_history(user, n, before=before) == earlier[-n:]
                history, seen = store.user_context(user, n, 3, before=before)
                assert history == [replace(e, event_id=None) for e in earlier[-n:]]
                assert seen == {e.item_id for e in earlier[-3:]}
    assert store.delete_user("u3") == users.count("u3")
    assert all(e.user_id != "u3" for e in store.read_events(0, 1_000))


def test_readers_do_not_wait_for_a_writers_transaction(tmp_path: Path) -> None:
    import threading

    store = SQLiteStore(tmp_path / "s.db")
    store.append_events([make_event("u", "committed")])
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.transaction():
            store.append_events([make_event("u", "pending")])
            assert [e.item_id for e in store.user_history("u", 10)] == ["committed", "pending"]  # own writes
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    started = time.monotonic()
    assert [e.item_id for e in store.user_history("u", 10)] == ["committed"]  # the last committed state
    assert store.last_offset() == 1 and time.monotonic() - started < 1.0
    release.set()
    thread.join()
    assert [e.item_id for e in store.user_history("u", 10)] == ["committed", "pending"]
    store.close()


def test_prefetch_reads_the_whole_file_into_the_page_cache(tmp_path: Path) -> None:
    """Asked for the whole file at once, the kernel reads only its first megabytes; the
    store asks a chunk at a time, so all of a file larger than one request is read."""
    path = tmp_path / "f.db"
    with SQLiteStore(path) as store:
        padding = "x" * 2_000
        for chunk in range(12):
            store.append_events(
                [make_event(f"u{n}", f"i{n}", event_id=f"e{chunk}-{n}", context={"p": padding}) for n in range(1_000)]
            )
    assert path.stat().st_size > 2 * sqlite_module.PREFETCH_CHUNK
    with path.open("rb") as fh:
        os.fsync(fh.fileno())  # dirty pages cannot be dropped
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert resident_share(path) < 0.5
    with SQLiteStore(path) as store:
        assert store.prefetch()
        deadline = time.monotonic() + 20
        while resident_share(path) < 0.99:
            assert time.monotonic() < deadline, f"{resident_share(path):.0%} of the file read after 20 s"
            time.sleep(0.05)
    assert not SQLiteStore(":memory:").prefetch()


def test_prefetch_leaves_a_file_larger_than_half_the_free_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLiteStore(tmp_path / "f.db") as store:
        store.append_events([make_event("u1", "i1")])
        size = (tmp_path / "f.db").stat().st_size
        monkeypatch.setattr(sqlite_module, "free_memory", lambda: 2 * size - 1)
        assert not store.prefetch()
        monkeypatch.setattr(sqlite_module, "free_memory", lambda: 2 * size)
        assert store.prefetch()
