"""Trending: a rise against an item's usual rate, not popularity."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.domain import Event, EventType, Item
from freshrec.serve.fallback import Popularity
from freshrec.serve.trending import MIN_RECENT, WINDOWS, Trending
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


def whole_ranking(trending: Trending, window: str) -> list[tuple[str, float]]:
    """The module's formula over every counted item: what each ranking must equal."""
    short, long = (counter.current() for counter in trending.counters[window])
    recent_total, usual_total = sum(short.values()), sum(long.values())
    out = []
    for item_id, recent in short.items():
        if recent >= MIN_RECENT:
            usual = long.get(item_id, 0.0) / usual_total * recent_total
            out.append((item_id, (recent - usual) / math.sqrt(usual + 1.0)))
    return sorted(out, key=lambda t: (-t[1], t[0]))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "wait", "top", "forget"]),
            st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=12),
            st.sampled_from([EventType.CLICK, EventType.PURCHASE, EventType.DISLIKE]),
            st.floats(0.0, 30 * HOUR),
            st.sampled_from(list(WINDOWS)),
        ),
        max_size=40,
    )
)
@settings(max_examples=120, deadline=None)
def test_ranking_the_items_that_trended_and_those_counted_since_ranks_as_every_item_would(
    steps: list[tuple[str, list[str], EventType, float, str]],
) -> None:
    """Whatever events, waits (rescales among them), forgets and rankings follow each other,
    each ranking equals the one over every counted item."""
    clock = Clock()
    trending = Trending(clock=clock)
    trending.refresh_s = -1.0  # every call ranks
    trending.add([e for j in range(40) for e in events(f"q{j}", 1)])  # enough counted not to look at each
    for how, items, kind, seconds, window in steps:
        if how == "add":
            trending.add([Event("u", i, kind, 0.0) for i in items])
        elif how == "wait":
            clock.t += seconds
        elif how == "forget" and items:
            trending.forget(items[0])
        elif how == "top":
            ranked = trending.top(window)
            got, want = {t.item_id: t.score for t in ranked}, dict(whole_ranking(trending, window))
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)  # the same items, as far as rounding goes
            assert [t.score for t in ranked] == sorted(got.values(), reverse=True)  # ranked by their scores


def test_a_ranking_looks_at_the_items_that_trended_and_those_counted_since_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a million counted items, looking at each held the interpreter lock about half a
    second per ranking while requests waited."""
    clock = Clock()
    trending = Trending(clock=clock)
    trending.refresh_s = -1.0
    trending.add([e for j in range(100) for e in events(f"quiet{j}", 1)] + events("hot", 5) + events("warm", 3))
    looked: list[set[str] | None] = []
    current = Popularity.current

    def watched(self: Popularity, ids: Iterable[str] | None = None) -> dict[str, float]:
        if self is trending.counters["day"][0]:
            looked.append(None if ids is None else set(ids))
        return current(self, ids)

    monkeypatch.setattr(Popularity, "current", watched)
    assert [t.item_id for t in trending.top("day")] == ["hot", "warm"]
    trending.add(events("quiet7", 2))
    assert [t.item_id for t in trending.top("day")][:1] == ["hot"]
    assert looked == [None, {"hot", "warm", "quiet7"}]  # every item once, then these three
    trending.forget("warm")
    trending.top("day")
    assert looked[-1] is None  # a count fell from outside: every item again
