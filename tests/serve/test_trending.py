"""Trending: a rise against an item's usual rate, not popularity."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from freshrec.domain import Event, EventType, Item
from freshrec.serve.trending import MIN_RECENT, Trending
from freshrec.storage.sqlite import SQLiteStore

HOUR = 3_600.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def events(item: str, n: int, kind: EventType = EventType.CLICK) -> list[Event]:
    return [Event(f"u{j}", item, kind, 0.0) for j in range(n)]


def test_a_rise_trends_and_a_steady_bestseller_does_not() -> None:
    clock = Clock()
    trending = Trending(clock=clock)
    trending.refresh_s = 0.0
    for _ in range(14 * 24):  # two weeks, hour by hour
        trending.add(events("bestseller", 10) + events("lamp", 1 if clock.t % (6 * HOUR) == 0 else 0))
        clock.t += HOUR
    steady = {t.item_id: t for t in trending.top("day")}
    assert steady["bestseller"].recent == pytest.approx(steady["bestseller"].usual, rel=0.05)
    trending.add(events("lamp", 30) + events("once", 1) + events("hated", 40, EventType.DISLIKE))
    day = {t.item_id: t for t in trending.top("day")}
    assert next(iter(day)) == "lamp"
    assert day["lamp"].recent > day["lamp"].usual * 5
    assert abs(day["bestseller"].score) < 2  # its rate did not change
    assert "once" not in day and "hated" not in day  # one event is no trend; dislikes count for nothing
    trending.forget("lamp")
    assert "lamp" not in {t.item_id for t in trending.top("hour")}


def test_the_counts_start_from_the_stores_and_survive_rescaling(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "f.db")
    now = time.time()
    store.upsert_items([Item("kettle", title="Kettle")])
    store.append_events([Event(f"u{j}", "kettle", EventType.CLICK, now, event_id=f"e{j}") for j in range(5)])
    trending = Trending()
    trending.seed(store)
    hour = {t.item_id: t for t in trending.top("hour")}
    assert hour["kettle"].recent == pytest.approx(5, rel=0.01) and hour["kettle"].recent >= MIN_RECENT
    clock = Clock()
    fast = Trending(clock=clock)
    for _ in range(30):  # 30 hours: the hourly weight passes 1e6 and the counts are rescaled
        fast.add(events("kettle", 3))
        clock.t += HOUR
    assert fast.origin > 1_700_000_000.0
    assert fast.top("hour")[0].recent == pytest.approx(3 * sum(0.5 ** (h + 1) for h in range(30)), rel=1e-6)
    with pytest.raises(ValueError, match="unknown window"):
        fast.top("month")
