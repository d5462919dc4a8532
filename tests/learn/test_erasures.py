"""The eraser carries out the store's pending erasures: a failing one is retried with
backoff, holds up no other, never ends the thread, and survives a restart."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec.learn import erasures
from freshrec.learn.erasures import Eraser
from freshrec.storage import Store, open_store
from tests.conftest import make_event
from tests.serve.conftest import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erasures, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(erasures, "POLL_S", 2.0)


def test_a_failing_erasure_is_retried_with_backoff_and_holds_up_no_other(store: Store) -> None:
    store.append_events([make_event("stuck", "a"), make_event("easy", "b"), make_event("stays", "c")])
    store.delete_user("stuck")
    store.delete_user("easy")
    tries: dict[str, list[float]] = defaultdict(list)

    def forget(user_id: str, at: int) -> None:
        tries[user_id].append(time.monotonic())
        if user_id == "stuck" and len(tries["stuck"]) < 4:
            raise OSError("No space left on device")

    halt = threading.Event()
    eraser = Eraser(store, forget, halt).start()
    try:
        wait_for(lambda: store.pending_erasures() == [], timeout=10, every=0.02)
        assert eraser.thread.is_alive()  # the failures did not end it
        assert len(tries["easy"]) == 1 and len(tries["stuck"]) == 4
        gaps = [b - a for a, b in zip(tries["stuck"], tries["stuck"][1:], strict=False)]
        assert gaps[2] > gaps[0] * 1.5  # backing off
        store.delete_user("later")
        eraser.wake()  # a deletion announced: carried out well before the next poll
        wait_for(lambda: store.pending_erasures() == [], timeout=1.0, every=0.01)
    finally:
        halt.set()
        started = time.monotonic()
        eraser.close(5)
    assert not eraser.thread.is_alive() and time.monotonic() - started < 1.0  # not a poll's wait
    assert [e.user_id for e in store.read_events()] == ["stays"]


def test_a_pending_erasure_survives_a_restart(url: str) -> None:
    first = open_store(url)
    first.append_events([make_event("gone", "a")])
    first.delete_user("gone")
    halt = threading.Event()

    def failing(user_id: str, at: int) -> None:
        raise OSError("the checkpoint folder is read-only")

    eraser = Eraser(first, failing, halt).start()
    time.sleep(0.3)
    halt.set()
    eraser.close(5)
    first.close()  # the process ends with the erasure still to do

    again = open_store(url)
    try:
        done: list[tuple[str, int]] = []
        halt = threading.Event()
        eraser = Eraser(again, lambda user_id, at: done.append((user_id, at)), halt).start()
        wait_for(lambda: again.pending_erasures() == [], timeout=5, every=0.02)
        halt.set()
        eraser.close(5)
        assert [user for user, _ in done] == ["gone"] and done[0][1] >= 1
    finally:
        again.close()


def test_a_standby_learner_leaves_erasures_to_the_lease_holder(store: Store) -> None:
    store.delete_user("gone")
    holding = threading.Event()
    done: list[str] = []
    halt = threading.Event()
    eraser = Eraser(store, lambda user_id, at: done.append(user_id), halt, allowed=holding.is_set).start()
    try:
        time.sleep(0.3)
        assert done == [] and len(store.pending_erasures()) == 1
        holding.set()
        wait_for(lambda: store.pending_erasures() == [], timeout=5, every=0.02)
        assert done == ["gone"]
    finally:
        halt.set()
        eraser.close(5)


def test_on_postgresql_a_done_erasure_leaves_no_tuple_of_the_user_in_the_table_pages(postgres_url: str) -> None:
    import psycopg

    from tests.conftest import POSTGRES

    victim = "victim-0c4e9a71"
    store = open_store(postgres_url)
    try:
        store.append_events([make_event(u, f"i{n}") for n in range(50) for u in (victim, "stays")])
        store.delete_user(victim)
        schema = postgres_url.rsplit("schema=", 1)[1]
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")

            def tuples_holding(text: str) -> int:
                pages = conn.execute(
                    f"SELECT pg_relation_size('{schema}.events') / current_setting('block_size')::int"  # type: ignore[arg-type]
                ).fetchone()
                assert pages is not None
                found = 0
                for page in range(int(pages[0])):
                    row = conn.execute(
                        "SELECT count(*) FROM heap_page_items(get_raw_page(%s, %s))"
                        " WHERE position(%s::bytea in t_data) > 0",
                        (f"{schema}.events", page, text.encode()),
                    ).fetchone()
                    found += int(row[0]) if row else 0
                return found

            assert tuples_holding(victim) == 50  # deleted, but still in the pages
            (erasure,) = store.pending_erasures()
            store.erasure_done(erasure)
            assert tuples_holding(victim) == 0 and tuples_holding("stays") == 50
    finally:
        store.close()
