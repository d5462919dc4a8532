"""The Redis bus against the real Redis: delivery, acknowledgement, redelivery, retention."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from freshrec.bus import RedisBus, connect, keys
from freshrec.ingest.importer import import_events
from freshrec.ingest.validate import Validator
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.erasures import Eraser
from freshrec.learn.online import Learner
from freshrec.learn.worker import BusFeed
from freshrec.settings import ClusterSettings, IngestSettings
from freshrec.storage import SQLiteStore
from tests.learn.test_online import SETTINGS, world

__all__ = ["world"]  # the fixture, shared with the learner's tests


@pytest.fixture
def cluster(redis_url: str) -> Iterator[ClusterSettings]:
    settings = ClusterSettings(bus_url=redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}", stream_max_len=1_000)
    yield settings
    client = redis.Redis.from_url(redis_url)
    client.delete(*keys(settings.prefix).values())
    client.close()


def test_announcements_wake_the_learner_and_are_acknowledged_once_learned(cluster: ClusterSettings) -> None:
    api, learner = RedisBus(cluster), RedisBus(cluster)
    learner.join()
    api.announce(5)
    api.announce(9)
    started = time.monotonic()
    assert learner.wait(5.0, lambda *_: None) == 9
    assert time.monotonic() - started < 1.0, "a waiting learner must wake at once"
    assert learner.backlog()[learner.log_key] == 2
    learner.learned(5)
    assert learner.backlog()[learner.log_key] == 1
    learner.learned(9)
    assert learner.backlog()[learner.log_key] == 0
    started = time.monotonic()
    learner.wait(0.2, lambda *_: None)
    assert 0.15 < time.monotonic() - started < 2.0  # nothing new: it waited out the timeout


def test_a_new_learner_is_handed_what_the_dead_one_did_not_acknowledge(cluster: ClusterSettings) -> None:
    api, first = RedisBus(cluster), RedisBus(cluster)
    first.join()
    api.announce(3)
    api.command("forget", "alice")
    carried: list[tuple[str, str]] = []
    crashed = True

    def crash(name: str, argument: str) -> None:
        if crashed:
            raise RuntimeError("died while forgetting")
        carried.append((name, argument))

    with pytest.raises(RuntimeError):
        first.wait(1.0, crash)
    first.close()  # never acknowledged either entry
    crashed = False
    second = RedisBus(cluster)  # same consumer name: the next run of the learner
    second.join()
    assert second.wait(1.0, crash) == 3
    assert carried == [("forget", "alice")]
    assert second.backlog() == {second.log_key: 1, second.commands_key: 0}
    second.learned(3)
    assert second.wait(0.05, crash) == 0 and carried == [("forget", "alice")]  # nothing twice


def test_retention_is_bounded(cluster: ClusterSettings) -> None:
    bus = RedisBus(cluster)
    bus.join()
    for n in range(5_000):
        bus.announce(n)
    assert bus.client.xlen(bus.log_key) < 2_000  # MAXLEN ~ 1,000: trimmed in whole nodes


def test_an_unreachable_bus_does_not_fail_an_acknowledged_append(cluster: ClusterSettings) -> None:
    bus = RedisBus(cluster)
    bus.client = connect("redis://127.0.0.1:1/0")  # nothing listens there
    started = time.monotonic()
    bus.announce(1)  # logged, not raised: the events are durable and the learner polls
    for n in range(100):
        bus.announce(2 + n)  # skipped for a while, not tried again and again
    assert time.monotonic() - started < 1.0


def test_the_learner_follows_the_log_through_the_bus(
    world: tuple[SQLiteStore, list[dict[str, object]], Path], cluster: ClusterSettings
) -> None:
    store, later, tmp = world
    settings = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"max_wait_ms": 50})})
    checkpoints = Checkpoints(tmp / "checkpoints")
    Learner(store, settings, checkpoints).train()
    follower = Learner(store, settings, checkpoints)
    follower.resume()
    start = follower.state.offset
    bus, api = RedisBus(cluster), RedisBus(cluster)
    stop = threading.Event()
    eraser = Eraser(store, follower.forget_user, stop).start()
    feed = BusFeed(bus, eraser)
    thread = threading.Thread(target=follower.follow, args=(stop,), kwargs={"feed": feed})
    thread.start()
    validator = Validator(IngestSettings())
    try:
        import_events(store, later[:10], validator)
        api.announce(store.last_offset())
        import_events(store, later[10:12], validator)  # as if a replica died between its commit and XADD
        silent = store.last_offset()
        deadline = time.monotonic() + 10
        while follower.state.offset < silent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert follower.state.offset == silent > start
        assert follower.state.learned == 612
        victim = str(later[0].data["user_id"])  # type: ignore[index]
        assert victim in follower.users.codes
        store.delete_user(victim)  # what an API replica does: recorded as pending, then announced
        api.command("erase", "")
        while store.pending_erasures() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert victim not in follower.users.codes and victim not in follower.users.recent
        while bus.backlog()[bus.commands_key] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bus.backlog() == {bus.log_key: 0, bus.commands_key: 0}
    finally:
        stop.set()
        thread.join(timeout=30)
        eraser.close(30)


def test_snapshots_travel_in_order_from_the_newest_start_and_survive_a_flushed_redis(cluster: ClusterSettings) -> None:
    learner, replica = RedisBus(cluster), RedisBus(cluster)
    assert replica.snapshots() == []
    learner.put_snapshot(b"delta before any start", start=False)
    assert replica.snapshots() == []  # nothing to begin from
    s1 = learner.put_snapshot(b"one", start=True)
    d1 = learner.put_snapshot(b"d1\x00", start=False)
    assert replica.snapshots() == [(s1, b"one"), (d1, b"d1\x00")]
    s2 = learner.put_snapshot(b"two", start=True)
    d2 = learner.put_snapshot(b"d2", start=False)
    assert replica.snapshots() == [(s2, b"two"), (d2, b"d2")]  # a new replica: from the newest start
    assert replica.snapshots(after=s1) == [(d1, b"d1\x00"), (s2, b"two"), (d2, b"d2")]  # one that follows: each
    assert replica.snapshots(after=s1, count=2) == [(d1, b"d1\x00"), (s2, b"two")]
    assert replica.snapshots(after=d2) == []
    learner.client.delete(learner.snapshots_key)  # Redis restarted without its data
    assert replica.snapshots(after=d2) == [] and replica.snapshots() == []
    time.sleep(0.01)  # ids are Redis's clock: a restart takes longer than the millisecond they share here
    s3 = learner.put_snapshot(b"three", start=True)
    assert replica.snapshots(after=d2) == [(s3, b"three")]


def test_the_snapshots_stream_keeps_its_length_and_a_start_far_back(cluster: ClusterSettings) -> None:
    short = cluster.model_copy(update={"snapshot_stream_len": 60})
    learner, replica = RedisBus(short), RedisBus(short)
    start = learner.put_snapshot(b"start", start=True)
    for n in range(59):
        learner.put_snapshot(b"d%d" % n, start=False)
    got = replica.snapshots(count=100)
    assert got[0] == (start, b"start") and len(got) == 60  # found 59 entries back (pages of 50)
    learner.put_snapshot(b"one too many", start=False)
    assert learner.client.xlen(learner.snapshots_key) == 60 and replica.snapshots() == []
    s2 = learner.put_snapshot(b"second start", start=True)
    d = learner.put_snapshot(b"delta", start=False)
    s3 = learner.put_snapshot(b"third start", start=True)  # trims what came before the second
    assert [entry for entry, _ in replica.snapshots(after="0-0")] == [s2, d, s3]


def test_a_failed_command_is_handed_over_again_and_an_unreachable_bus_means_polling(cluster: ClusterSettings) -> None:
    api, learner = RedisBus(cluster), RedisBus(cluster)
    learner.join()
    learner.wait(0.01, lambda *_: None)  # past the (empty) backlog
    api.command("forget", "bob")
    carried: list[str] = []

    def flaky(name: str, argument: str) -> None:
        if not carried:
            carried.append("failed once")
            raise RuntimeError("the learner was busy failing")
        carried.append(argument)

    with pytest.raises(RuntimeError):
        learner.wait(1.0, flaky)
    learner.wait(1.0, flaky)  # the same learner, after its retry: the entry comes again
    assert carried == ["failed once", "bob"] and learner.backlog()[learner.commands_key] == 0

    learner.client = connect("redis://127.0.0.1:1/0")  # Redis went away
    started = time.monotonic()
    assert learner.wait(0.3, flaky) == 0  # no exception: the learner keeps polling the store
    assert time.monotonic() - started >= 0.3
    learner.learned(10)  # nothing to acknowledge, nothing raised


def test_a_deletion_on_a_replica_that_cannot_reach_the_bus_still_reaches_the_learner(
    tmp_path: Path, cluster: ClusterSettings
) -> None:
    from freshrec.bus import connect
    from freshrec.serve.replica import Replica
    from freshrec.serve.service import Service
    from tests.conftest import make_event
    from tests.serve.conftest import make_settings

    settings = make_settings(tmp_path).model_copy(update={"cluster": cluster})
    store = SQLiteStore(tmp_path / "store.db")
    service = Service(store, settings)
    replica = Replica(service, store, RedisBus(cluster), 0.1)
    store.append_events([make_event("gone", "i1"), make_event("stays", "i1")])
    replica.bus.client = connect("redis://127.0.0.1:1/0")  # Redis went away
    assert service.delete_user("gone") == 1  # answered: the erasure is recorded in the store
    assert store.user_history("gone", 5) == [] and len(store.user_history("stays", 5)) == 1
    assert [e.user_id for e in store.pending_erasures()] == ["gone"]  # the learner's poll finds it
    assert service.figures.tick()["erasures_pending"] == 1
    service.close()
    store.close()
