"""Repeated events and users sending faster than a person could."""

from __future__ import annotations

from freshrec.domain import EventType
from freshrec.ingest.hygiene import Quarantine, RepeatFilter
from tests.conftest import T0, make_event


def test_a_repeat_within_the_window_is_dropped_only_once_stored() -> None:
    f = RepeatFilter(window_s=2.0)
    first = make_event("u", "i", t=T0)
    kept, repeats = f.split([first, make_event("u", "i", t=T0 + 1)])  # the second repeats the first
    assert kept == [first] and repeats == 1
    # nothing remembered yet (the write may still fail): a retry is not a repeat
    assert f.split([first]) == ([first], 0)
    f.remember(kept)
    assert f.split([make_event("u", "i", t=T0 + 1.5)]) == ([], 1)
    later = make_event("u", "i", t=T0 + 2.5)
    other_type = make_event("u", "i", EventType.PURCHASE, t=T0 + 1)
    other_user = make_event("v", "i", t=T0 + 1)
    assert f.split([later, other_type, other_user]) == ([later, other_type, other_user], 0)
    rating = make_event("u", "i", EventType.RATING, t=T0, value=4.0)
    f.remember([rating])
    changed = make_event("u", "i", EventType.RATING, t=T0 + 1, value=2.0)
    assert f.split([changed]) == ([changed], 0)  # a changed rating is news


def test_no_window_keeps_everything_and_memory_is_bounded() -> None:
    events = [make_event("u", "i", t=T0) for _ in range(3)]
    assert RepeatFilter(window_s=0).split(events) == (events, 0)
    f = RepeatFilter(window_s=2.0, max_keys=10)
    f.remember([make_event(f"u{n}", "i", t=T0) for n in range(25)])
    assert f.split([make_event("u0", "i", t=T0)])[1] == 0  # forgotten, the oldest first
    assert f.split([make_event("u24", "i", t=T0)])[1] == 1
    f.remember([make_event("late", "i", t=T0 + 3)])  # the others are now older than the window
    assert len(f._last) == 1


def test_a_user_above_the_rate_is_quarantined_for_a_while() -> None:
    q = Quarantine(max_events_per_minute=30, quarantine_s=600)
    person = [q.admit(make_event("person", f"i{n}", t=T0 + 10 * n)) for n in range(40)]
    bot = [q.admit(make_event("bot", f"i{n}", t=T0 + 0.5 * n)) for n in range(60)]
    assert all(person)
    assert all(bot[:30]) and not any(bot[30:])  # the 31st event within a minute
    assert q.figures() == {"quarantined_users": 1, "quarantined_events": 30}
    assert not q.admit(make_event("bot", "x", t=T0 + 400))  # still within the quarantine
    assert q.admit(make_event("bot", "x", t=T0 + 30 + 601))  # over: a slow event is learned again
    q.forget("person")
    assert q.users() == []
    assert Quarantine(max_events_per_minute=0, quarantine_s=1).admit(make_event("bot", "i", t=T0))
