"""The learner's background upkeep of the store: paced, and only while it may write."""

from __future__ import annotations

import threading

import pytest

from freshrec.learn import upkeep
from freshrec.learn.upkeep import Upkeep
from freshrec.storage import SQLiteStore
from freshrec.storage import runs as runs_module
from freshrec.storage import sqlite as sqlite_module
from tests.conftest import make_event


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> SQLiteStore:
    monkeypatch.setattr(sqlite_module, "SEGMENT_BITS", 2)
    monkeypatch.setattr(runs_module, "CHUNK_ROWS", 3)
    store = SQLiteStore(":memory:")
    store.append_events([make_event(f"u{n % 7}", f"i{n}") for n in range(300)])
    return store


def test_upkeep_works_in_paced_rounds_until_none_is_left(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upkeep, "STEP_S", 0.0)  # one step a round
    keeper = Upkeep(store, threading.Event())
    waits = [keeper.round()]
    while waits[-1] != upkeep.IDLE_S:
        waits.append(keeper.round())
    assert len(waits) > 10 and all(0 <= w < upkeep.IDLE_S for w in waits[:-1])
    assert not store.maintain(1.0) and runs_module.served_runs(store._conn)


def test_upkeep_waits_while_the_learner_may_not_write(store: SQLiteStore) -> None:
    keeper = Upkeep(store, threading.Event(), allowed=lambda: False)
    assert keeper.round() == upkeep.IDLE_S
    assert not runs_module.all_runs(store._conn)


def test_upkeep_thread_builds_the_runs_and_stops_when_halted(store: SQLiteStore) -> None:
    halt = threading.Event()
    keeper = Upkeep(store, halt).start()

    def spans() -> list[tuple[int, int, str]]:
        return [(r.low, r.high, r.state) for r in runs_module.all_runs(store._conn)]

    try:  # 75 closed segments of 4 events: 64 in a run of 8 x 8, 8 in one of 8, 3 left
        for _ in range(400):
            if spans() == [(0, 63, "served"), (64, 71, "served")]:
                break
            halt.wait(0.05)
        assert spans() == [(0, 63, "served"), (64, 71, "served")]
    finally:
        halt.set()
        keeper.thread.join(5)
    assert not keeper.thread.is_alive()
