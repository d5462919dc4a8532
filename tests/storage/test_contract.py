"""The storage contract: every backend must pass these tests unchanged.

A new backend is added by extending the ``store`` fixture's parameters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from freshrec.domain import Event, EventType, item_text, text_hash
from freshrec.storage import Store, iter_log, open_store
from freshrec.storage.base import identity
from tests.conftest import T0, make_event, make_item

ENC = "test-encoder"


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = {"sqlite-file": f"sqlite:///{tmp_path / 'db' / 'store.db'}", "sqlite-memory": "sqlite:///:memory:"}[
            request.param
        ]
    s = open_store(url)
    yield s
    s.close()


def test_append_assigns_increasing_offsets_and_reads_back_in_order(store: Store) -> None:
    events = [make_event(f"u{i % 3}", f"i{i}", t=T0 + i, context={"n": i}) for i in range(10)]
    result = store.append_events(events)
    assert (result.accepted, result.duplicates) == (10, 0)
    back = store.read_events(0, 100)
    assert [e.item_id for e in back] == [f"i{i}" for i in range(10)]
    offsets = [e.offset for e in back]
    assert offsets == sorted(offsets) and len(set(offsets)) == 10
    assert result.last_offset == offsets[-1] == store.last_offset()
    assert back[3].context == {"n": 3} and back[3].timestamp == T0 + 3 and back[3].type is EventType.CLICK


def test_read_from_offset_and_limit(store: Store) -> None:
    assert store.last_offset() == 0
    store.append_events([make_event(item=f"i{i}") for i in range(25)])
    first = store.read_events(0, 10)
    rest = store.read_events(first[-1].offset, 100)
    assert len(first) == 10 and len(rest) == 15
    assert [e.item_id for e in first + rest] == [f"i{i}" for i in range(25)]
    assert [e.item_id for e in iter_log(store, 0, batch=7)] == [f"i{i}" for i in range(25)]
    assert store.read_events(rest[-1].offset, 10) == []


def test_append_is_idempotent_on_event_id(store: Store) -> None:
    a = make_event(item="a", event_id="e1")
    b = make_event(item="b", event_id="e2")
    anonymous = make_event(item="c")
    assert store.append_events([a, b, anonymous]).accepted == 3
    again = store.append_events([a, make_event(item="changed", event_id="e2"), anonymous, a])
    assert (again.accepted, again.duplicates) == (1, 3)  # only the event without an id is new
    items = [e.item_id for e in store.read_events(0, 100)]
    assert items == ["a", "b", "c", "c"]
    fresh = store.append_events([make_event(item="d", event_id="e3"), b, make_event(item="e", event_id="e4")])
    assert (fresh.accepted, fresh.stored) == (2, frozenset({"e3", "e4"}))  # which ones were new


def test_values_survive_the_round_trip(store: Store) -> None:
    e = make_event(type_=EventType.RATING, value=4.5, event_id="x", context={"page": "home", "pos": [1, 2]})
    store.append_events([e])
    (back,) = store.read_events()
    assert (back.value, back.event_id, back.context, back.type) == (
        4.5,
        "x",
        {"page": "home", "pos": [1, 2]},
        EventType.RATING,
    )


def test_user_history_is_the_last_n_oldest_first(store: Store) -> None:
    store.append_events([make_event("u1" if i % 2 else "u2", f"i{i}", t=T0 + i) for i in range(20)])
    history = store.user_history("u1", 3)
    assert [e.item_id for e in history] == ["i15", "i17", "i19"]
    assert store.user_history("nobody", 5) == []
    before = history[1].offset  # what was known of u1 when i17 arrived
    assert [e.item_id for e in store.user_history("u1", 3, before=before)] == ["i11", "i13", "i15"]
    assert store.user_history("u1", 3, before=store.read_events()[0].offset) == []
    assert store.user_items("u1", 3) == {"i15", "i17", "i19"}
    assert store.user_items("u1", 100) == {f"i{i}" for i in range(1, 20, 2)} and store.user_items("nobody", 5) == set()


def test_the_catalog_version_grows_with_each_write_that_changed_the_catalog(store: Store) -> None:
    versions = [store.catalog_version()]

    def changed() -> bool:
        versions.append(store.catalog_version())
        return versions[-1] > versions[-2]

    store.upsert_items([make_item("i1"), make_item("i2")])
    assert changed()
    store.upsert_items([make_item("i1")])  # as stored
    store.append_events([make_event("u1", "i1")])
    assert not changed()
    store.upsert_items([make_item("i1", title="Another title")])
    assert changed()
    store.put_embeddings("enc", [text_hash(item_text("Another title", "", ()))], np.ones((1, 4), np.float32))
    assert changed()
    assert store.delete_item("i2") and changed()
    assert not store.delete_item("i2") and not changed()


def test_delete_user_removes_all_their_events_only(store: Store) -> None:
    store.append_events([make_event("u1", "a"), make_event("u2", "b"), make_event("u1", "c")])
    assert store.delete_user("u1") == 2
    assert [e.user_id for e in store.read_events()] == ["u2"]
    assert store.user_history("u1", 10) == []
    assert store.delete_user("u1") == 0


def test_upkeep_changes_no_answer(store: Store) -> None:
    """What ``maintain`` derives (SQLite's sorted runs) only speeds reads up; with no more
    to do it says so at once."""
    store.append_events([make_event(f"u{n % 3}", f"i{n}") for n in range(30)])
    before = [(store.user_context(u, 5, 20), store.user_history(u, 50)) for u in ("u0", "u1", "u2")]
    while store.maintain(1.0):
        pass
    assert store.maintain(1.0) is False
    assert [(store.user_context(u, 5, 20), store.user_history(u, 50)) for u in ("u0", "u1", "u2")] == before


def test_user_context_is_history_and_seen_items_in_one_read(store: Store) -> None:
    store.append_events(
        [make_event("u1", f"i{n}", t=T0 + n, event_id=f"e{n}", context={"page": n}) for n in range(5)]
        + [make_event("u1", "i5", EventType.RATING, T0 + 5, value=4.5), make_event("u2", "x")]
    )

    def bare(events: list[Event]) -> list[Event]:  # what a recommendation reads (the rest may be left out)
        return [replace(e, event_id=None, context=None) for e in events]

    history, seen = store.user_context("u1", 3, 5)
    assert [e.item_id for e in history] == ["i3", "i4", "i5"]  # oldest first, as user_history
    assert bare(history) == bare(store.user_history("u1", 3))
    assert seen == {"i1", "i2", "i3", "i4", "i5"} == store.user_items("u1", 5)
    history, seen = store.user_context("u1", 7, 0)
    assert seen == set() and len(history) == 6
    assert bare(history) == bare(store.user_history("u1", 7))
    at = history[3].offset  # the learner's view at a point of the log: the events below an offset
    history, seen = store.user_context("u1", 2, 5, before=at)
    assert bare(history) == bare(store.user_history("u1", 2, before=at)) and [e.item_id for e in history] == [
        "i1",
        "i2",
    ]
    assert seen == {"i0", "i1", "i2"} and store.user_context("u1", 5, 5, before=1) == ([], set())
    assert store.user_context("nobody", 3, 5) == ([], set())
    assert isinstance(store.remote, bool)

    async def on_a_loop() -> list[tuple[list[Event], set[str]]]:  # as the server reads, twice at once
        got = await asyncio.gather(*(store.user_context_async("u1", 3, 5) for _ in range(2)))
        await store.aclose()
        return list(got)

    assert asyncio.run(on_a_loop()) == [store.user_context("u1", 3, 5)] * 2


def test_a_deletion_is_recorded_as_a_pending_erasure_until_done(store: Store) -> None:
    store.append_events([make_event("u1", "a"), make_event("u2", "b")])
    store.delete_user("u1")
    (first,) = store.pending_erasures()
    assert (first.user_id, first.at) == ("u1", store.last_offset())
    store.append_events([make_event("u1", "c"), make_event("u3", "d")])  # u1 comes back
    store.delete_user("u3")
    store.delete_user("u1")  # and is deleted again: the newer head counts
    pending = {e.user_id: e for e in store.pending_erasures()}
    assert set(pending) == {"u1", "u3"} and pending["u1"].at > first.at
    store.erasure_done(first)  # the older erasure done: the newer one stays
    assert {e.user_id for e in store.pending_erasures()} == {"u1", "u3"}
    for erasure in store.pending_erasures():
        store.erasure_done(erasure)
    assert store.pending_erasures() == []
    assert [e.user_id for e in store.read_events()] == ["u2"]


def test_upsert_items_reports_inserted_updated_unchanged(store: Store) -> None:
    first = store.upsert_items([make_item("a", "Alpha"), make_item("b", "Beta", categories=("x", "y"))])
    assert (first.inserted, first.updated, first.unchanged) == (2, 0, 0)
    second = store.upsert_items([make_item("a", "Alpha"), make_item("b", "Beta 2", categories=("x", "y"))])
    assert (second.inserted, second.updated, second.unchanged) == (0, 1, 1)
    b = store.get_item("b")
    assert b is not None and b.title == "Beta 2" and b.categories == ("x", "y")
    assert b.created_at is not None and b.updated_at is not None and b.updated_at >= b.created_at


def test_item_round_trip_and_delete(store: Store) -> None:
    item = make_item("a", "Alpha", description="d", attributes={"price": 3.5, "tags": ["t"]}, vector=(1.0, 0.5))
    store.upsert_items([item])
    back = store.get_item("a")
    assert back is not None
    assert (back.title, back.description, back.attributes, back.vector) == (
        "Alpha",
        "d",
        {"price": 3.5, "tags": ["t"]},
        (1.0, 0.5),
    )
    assert [i.item_id for i in store.iter_items()] == ["a"]
    assert store.delete_item("a") and not store.delete_item("a")
    assert store.get_item("a") is None


def test_embedding_cache_by_text_hash(store: Store) -> None:
    store.upsert_items(
        [
            make_item("a", "Same"),
            make_item("b", "Same"),
            make_item("c", "Other"),
            make_item("v", "Vec", vector=(0.0, 1.0)),
        ]
    )
    todo = store.items_to_embed(ENC)
    assert sorted(text for _, text in todo) == ["Other.", "Same."]  # one per distinct text; not the precomputed one
    hashes = [h for h, _ in todo]
    assert hashes == [text_hash(t) for _, t in todo]
    store.put_embeddings(ENC, hashes, np.eye(2, dtype=np.float32))
    assert store.items_to_embed(ENC) == []
    assert len(store.items_to_embed("another-encoder")) == 2
    ids, vectors = store.item_vectors(ENC)
    assert ids == ["a", "b", "c", "v"] and vectors.shape == (4, 2) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[3], [0.0, 1.0])
    some, part = store.item_vectors(ENC, ["v", "b", "missing"])
    assert some == ["b", "v"]
    np.testing.assert_array_equal(part, vectors[[1, 3]])
    assert sorted(store.embedded_ids(ENC)) == ids and store.embedded_ids("another-encoder") == ["v"]
    assert len(store.embedded_ids(ENC)) == len(ids)  # a and b share a text; v has its own vector
    store.upsert_items([make_item("c", "Changed")])
    assert [t for _, t in store.items_to_embed(ENC)] == [item_text("Changed")]
    assert sorted(store.embedded_ids(ENC)) == ["a", "b", "v"]  # c's new text has no vector yet


def test_counts(store: Store) -> None:
    empty = store.counts(ENC)
    assert (empty.items, empty.events, empty.users, empty.first_timestamp) == (0, 0, 0, None)
    store.upsert_items([make_item("a"), make_item("b", "B")])
    store.put_embeddings(ENC, [h for h, _ in store.items_to_embed(ENC)][:1], np.ones((1, 3), dtype=np.float32))
    store.append_events(
        [make_event("u1", t=T0 + 5), make_event("u2", type_=EventType.VIEW, t=T0), make_event("u1", t=T0 + 1)]
    )
    c = store.counts(ENC)
    assert (c.items, c.items_embedded, c.users, c.events) == (2, 1, 2, 3)
    assert c.events_by_type == {"click": 2, "view": 1}
    assert (c.first_timestamp, c.last_timestamp) == (T0, T0 + 5)


def test_popular_items_counts_catalog_items_only(store: Store) -> None:
    store.upsert_items([make_item("a"), make_item("b")])
    store.append_events(
        [
            make_event(item="a"),
            make_event(item="b"),
            make_event(item="b"),
            make_event(item="ghost"),
            make_event(item="a", type_=EventType.DISLIKE),
            make_event(item="a", type_=EventType.IMPRESSION),
        ]
    )
    assert store.popular_items(10) == [("b", 2), ("a", 1)]
    assert store.popular_items(1) == [("b", 2)]
    first_b = store.read_events(0, 10)[1].offset
    assert first_b is not None
    assert store.popular_items(10, after=first_b) == [("b", 1)]  # the events after that offset alone


def test_popular_items_decay_by_arrival_time(store: Store) -> None:
    store.upsert_items([make_item("old"), make_item("new")])
    store.append_events([make_event(item="old", t=T0 + n) for n in range(4)])
    time.sleep(0.6)
    store.append_events([make_event(item="new", t=T0 - 100)])  # arrived last, whatever its event time
    assert [item for item, _ in store.popular_items(10)] == ["old", "new"]
    decayed = dict(store.popular_items(10, half_life_s=0.1))
    assert decayed["old"] < 4 * 0.5**5 and 0.5 < decayed["new"] <= 1.0
    assert max(decayed, key=decayed.__getitem__) == "new"


def test_transaction_rolls_back_everything(store: Store) -> None:
    store.append_events([make_event(item="kept")])
    with pytest.raises(RuntimeError), store.transaction():
        store.append_events([make_event(item="lost")])
        store.upsert_items([make_item("lost")])
        with store.transaction():
            store.append_events([make_event(item="lost-nested")])
        raise RuntimeError("abort")
    assert [e.item_id for e in store.read_events()] == ["kept"]
    assert store.get_item("lost") is None
    store.append_events([make_event(item="after")])
    assert [e.item_id for e in store.read_events()] == ["kept", "after"]


def test_offsets_are_never_reused_after_deleting_the_newest_events(store: Store) -> None:
    store.append_events([make_event("u1", "a"), make_event("gone", "b")])
    newest = store.read_events()[-1].offset
    store.delete_user("gone")
    store.append_events([make_event("u1", "c")])
    assert store.read_events()[-1].offset > newest


def test_published_blobs_carry_increasing_versions(store: Store) -> None:
    assert store.published("snapshot") is None
    assert store.publish("snapshot", b"one") == 1
    assert store.published("snapshot") == (1, b"one")
    assert store.publish("snapshot", b"two\x00") == 2
    assert store.published("snapshot", after=1) == (2, b"two\x00")
    assert store.published("snapshot", after=2) is None
    assert store.publish("catalog", b"") == 1 and store.published("snapshot") == (2, b"two\x00")


def test_concurrent_appends_get_distinct_offsets_visible_in_order(store: Store) -> None:
    """Readers of ``offset > W`` must never see a higher offset before a lower one
    commits: the learner would skip the lower one for good."""
    import threading

    def writer(n: int) -> None:
        for k in range(20):
            store.append_events([make_event(f"w{n}", f"i{k}-{j}") for j in range(5)])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    seen: list[int] = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or (seen[-1] if seen else 0) < store.last_offset():
        seen += [e.offset for e in store.read_events(seen[-1] if seen else 0, 1000) if e.offset is not None]
    assert len(seen) == len(set(seen)) == 400 and seen == sorted(seen)


def test_a_lease_has_one_holder_until_it_expires_and_changes_hands_with_a_new_token(store: Store) -> None:
    first = store.take_lease("learner", "host-a:1", ttl_s=30)
    assert (first.holder, first.token) == ("host-a:1", 1)
    assert store.take_lease("learner", "host-a:1", ttl_s=30).token == 1  # taking one's own again
    held = store.take_lease("learner", "host-b:2", ttl_s=30)
    assert held.holder == "host-a:1" and held.age_s < 30  # refused: a live lease
    assert store.renew_lease("learner", "host-a:1", 1)
    assert not store.renew_lease("learner", "host-b:2", 1) and not store.renew_lease("learner", "host-a:1", 2)
    taken = store.take_lease("learner", "host-b:2", ttl_s=0)  # not renewed within ttl: taken over
    assert (taken.holder, taken.token) == ("host-b:2", 2)
    assert not store.renew_lease("learner", "host-a:1", 1)  # the old holder learns it lost the lease
    store.release_lease("learner", "host-a:1", 1)  # a no-op: no longer theirs
    assert store.take_lease("learner", "host-c:3", ttl_s=30).holder == "host-b:2"
    store.release_lease("learner", "host-b:2", 2)
    released = store.take_lease("learner", "host-c:3", ttl_s=30)
    assert (released.holder, released.token) == ("host-c:3", 3)  # tokens never repeat
    assert store.take_lease("other", "host-a:1", ttl_s=30).holder == "host-a:1"  # leases are independent


def test_two_processes_starting_together_agree_on_the_stores_identity(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    both_looked = threading.Barrier(2)
    looked = store.published

    def slow(name: str, after: int = 0) -> tuple[int, bytes] | None:
        got = looked(name, after)
        if name == "identity" and got is None:
            both_looked.wait(timeout=10)  # each saw no identity yet: the race
        return got

    monkeypatch.setattr(store, "published", slow)
    found: list[str] = []
    threads = [threading.Thread(target=lambda: found.append(identity(store))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(found) == 2 and found[0] == found[1] == identity(store)
