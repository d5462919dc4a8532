"""The learner's in-memory histories: each user's last events, packed, across micro-batches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.domain import Event, EventType
from freshrec.learn.histories import STEP, Histories

EVENTS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(1, 7)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(EVENTS, st.integers(0, 6))
def test_each_row_holds_its_users_last_events_before_it_whatever_the_batches(
    raw: list[tuple[int, int, int]], length: int
) -> None:
    """Rows read like a plain list of each user's earlier events, cut to the last
    ``length``, however the stream is split into micro-batches."""
    events = [Event(f"u{u}", f"i{i}", EventType.CLICK, float(n), offset=n) for n, (u, i, _) in enumerate(raw)]
    items = {f"i{n}": n for n in range(10)}
    histories, seen = Histories(length), {}
    start = 0
    for size in [cut for _, _, cut in raw] or [1]:
        chunk = events[start : start + size]
        start += size
        batch, skipped = histories.batch(chunk, items)
        assert skipped == 0 and batch.hist_item.shape == (len(chunk), length)
        for row, e in enumerate(chunk):
            before = seen.setdefault(e.user_id, [])
            want = before[max(len(before) - length, 0) :] if length else []
            got, times = batch.hist_item[row], batch.hist_time[row]
            assert [item for item, _ in want] == list(got[got >= 0]) and (got[: length - len(want)] == -1).all()
            assert [t for _, t in want] == list(times[got >= 0]) and np.isnan(times[got < 0]).all()
            before.append((items[e.item_id], e.timestamp))
    for user, past in seen.items():
        kept = histories.recent.get(user)
        if not length:  # nothing to keep
            assert kept is None
            continue
        assert kept is not None and kept.dtype == STEP
        assert list(kept["item"]) == [item for item, _ in past[max(len(past) - length, 0) :]]


def test_a_history_is_packed_into_seventeen_bytes_an_event() -> None:
    histories = Histories(20)
    items = {f"i{n}": n for n in range(5)}
    histories.batch([Event("u", f"i{n % 5}", EventType.RATING, float(n), 4.0, offset=n) for n in range(50)], items)
    kept = histories.recent["u"]
    assert kept.nbytes == 17 * 20 and kept["value"].tolist() == [4.0] * 20 and kept["time"][-1] == 49.0
    assert np.isnan(histories.batch([Event("u", "i1", EventType.CLICK, 60.0, offset=50)], items)[0].value).all()


def test_learning_that_starts_mid_log_reads_a_new_users_earlier_events_from_the_store() -> None:
    """A warm start on the log's most recent events meets users whose history began
    before it: with ``reload_new`` their past comes from the store, up to each event."""
    stored = [Event("u", f"i{n}", EventType.CLICK, float(n), offset=n) for n in range(8)]

    def reload(user_id: str, before: int) -> list[Event]:
        return [e for e in stored if e.user_id == user_id and (e.offset or 0) < before]

    items = {f"i{n}": n for n in range(8)}
    for reload_new, want in ((False, []), (True, [3, 4, 5])):
        histories = Histories(3, reload=reload, reload_new=reload_new)
        batch, _ = histories.batch(stored[6:], items)  # the window: offsets 6 and 7
        first = batch.hist_item[0]
        assert list(first[first >= 0]) == want
