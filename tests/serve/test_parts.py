"""The service's small parts: popularity, live figures, catalog, keys."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from freshrec import runtime
from freshrec.domain import Event, EventType, Item
from freshrec.learn.worker import learner_main
from freshrec.serve.auth import AuthError, Keys, Role, is_loopback
from freshrec.serve.catalog import Catalog
from freshrec.serve.engine import Engine
from freshrec.serve.fallback import Popularity
from freshrec.serve.live import Live
from freshrec.settings import ServeSettings
from freshrec.storage import SQLiteStore
from tests.conftest import make_event, resident_share
from tests.serve.conftest import make_settings, wait_for


class Clock:
    def __init__(self, t: float = 1_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def click(user: str, item: str, type_: EventType = EventType.CLICK) -> Event:
    return Event(user, item, type_, 0.0)


def test_popularity_decays_with_a_half_life() -> None:
    clock = Clock()
    pop = Popularity(half_life_s=100.0, clock=clock)
    pop.add([click("u", "old")] * 4)
    clock.t += 200  # two half-lives: the four old events weigh one new one
    pop.add([click("u", "new")] * 2 + [click("u", "x", EventType.DISLIKE)] * 9)
    top = dict(pop.top())
    assert top["new"] / top["old"] == pytest.approx(2.0) and "x" not in top
    pop.forget("new")
    assert [i for i, _ in pop.top()] == ["old"]


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 30), max_size=8), st.floats(0.0, 40.0)),
        st.tuples(st.just("forget"), st.integers(0, 30), st.just(0.0)),
        st.tuples(st.just("top"), st.just(0), st.just(0.0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=_STEPS, size=st.integers(1, 6))
def test_popularity_ranks_as_a_sort_of_every_count_would(steps: list[tuple[str, object, float]], size: int) -> None:
    """Each ranking looks at the items ranked before and those counted since, unless a count
    fell: it must equal a sort of every count (ties by id), after any adds (some of them
    rescaling: a half-life of one second and up to 40 s between them), forgets and rankings."""
    clock = Clock(0.0)
    pop = Popularity(half_life_s=1.0, clock=clock, size=size, refresh_s=-1.0)
    for kind, arg, wait in steps:
        if kind == "add":
            clock.t += wait
            pop.add([click("u", f"i{n:02d}") for n in arg])  # type: ignore[union-attr]
        elif kind == "forget":
            pop.forget(f"i{arg:02d}")
        every = sorted(pop.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        assert pop.top() == every


def test_popularity_weighs_events_of_the_same_moment_alike_while_another_add_rescales() -> None:
    now = [0.0]
    pop = Popularity(half_life_s=1.0, clock=lambda: now[0])
    now[0] = 30.0  # weights of 2**30: each add rescales the counts and moves the origin
    other_done = threading.Event()

    def other() -> None:
        pop.add([click("b", "b-item")])
        other_done.set()

    class Interleaved:
        """The real lock; the first time this thread asks for it, another add runs first."""

        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __enter__(self) -> None:
            if threading.current_thread() is threading.main_thread() and not other_done.is_set():
                threading.Thread(target=other).start()
                other_done.wait(5)
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    pop._lock = Interleaved()  # type: ignore[assignment]
    pop.add([click("a", "a-item")])
    top = dict(pop.top())
    assert top["a-item"] == pytest.approx(top["b-item"])


def test_a_seeded_popularity_decays_what_the_store_counted_by_arrival_time() -> None:
    from freshrec.storage import SQLiteStore
    from tests.conftest import make_item

    store = SQLiteStore(":memory:")
    store.upsert_items([make_item("old"), make_item("new")])
    store.append_events([click(f"u{n}", "old") for n in range(5)])
    time.sleep(0.6)
    store.append_events([click("u", "new")])
    pop = Popularity(half_life_s=0.1)
    pop.seed(store)
    assert [item for item, _ in pop.top()] == ["new", "old"]  # all-time counts would put "old" first
    store.close()


def test_popularity_is_seeded_from_the_latest_events_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.serve import fallback
    from freshrec.storage import SQLiteStore
    from tests.conftest import make_item

    monkeypatch.setattr(fallback, "SEED_EVENTS", 3)
    store = SQLiteStore(":memory:")
    store.upsert_items([make_item("early"), make_item("late")])
    store.append_events([click(f"u{n}", "early") for n in range(5)] + [click(f"v{n}", "late") for n in range(3)])
    pop = Popularity()
    pop.seed(store)
    assert [item for item, _ in pop.top()] == ["late"]  # five clicks on "early", all before the latest three
    store.close()


def test_hit_rate_counts_positive_feedback_on_served_items() -> None:
    clock = Clock()
    live = Live(clock=clock)
    live.events([click("a", "i1")])  # nothing served yet: not a trial
    live.served_list("a", ["i1", "i2"])
    live.events([click("a", "i2"), click("a", "i9"), click("a", "i1", EventType.IMPRESSION)])
    assert live.hit_rate() == 0.5
    clock.t += 1_000
    assert live.hit_rate() is None  # outside the window
    series = live.series()
    assert series["events"]["click"] == [2, 0] or sum(series["events"]["click"]) == 3
    live.forget("a")
    live.events([click("a", "i2")])
    assert live.trials_total == 2


def test_catalog_views_are_copies_on_write() -> None:
    catalog = Catalog()
    catalog.put([Item("a", "A", categories=("X",)), Item("b", "B")], np.eye(2, dtype=np.float32))
    before = catalog.view
    catalog.put([Item("b", "B2", categories=("Y",)), Item("c", "C")], np.ones((2, 2), dtype=np.float32))
    view = catalog.view
    assert before.ids == ["a", "b"] and before.titles == ["A", "B"]
    assert view.ids == ["a", "b", "c"] and view.titles == ["A", "B2", "C"]
    np.testing.assert_array_equal(view.text[1], [1.0, 1.0])
    assert view.in_categories(["y", "x"]).tolist() == [True, True, False]
    assert catalog.remove("a") and not catalog.remove("a") and not catalog.remove("zzz")
    assert catalog.view.alive.tolist() == [False, True, True] and view.alive.all()
    with pytest.raises(ValueError, match="width"):
        catalog.put([Item("d")], np.ones((1, 3), dtype=np.float32))


def test_keys_and_roles() -> None:
    keys = Keys(
        ServeSettings(
            read_keys=[SecretStr("r" * 16)], write_keys=[SecretStr("w" * 16)], admin_keys=[SecretStr("a" * 16)]
        )
    )
    assert keys.role_of("r" * 16) is Role.READ and keys.role_of("a" * 16) is Role.ADMIN
    assert keys.role_of("r" * 15) is None and keys.role_of(None) is None
    keys.check("w" * 16, Role.READ)
    with pytest.raises(AuthError) as denied:
        keys.check("w" * 16, Role.ADMIN)
    assert denied.value.status == 403
    with pytest.raises(AuthError) as unknown:
        keys.check("nope", Role.READ)
    assert unknown.value.status == 401
    assert Keys(ServeSettings(), open=True).role_of(None) is Role.ADMIN
    with pytest.raises(ValueError, match="no API key"):
        Keys(ServeSettings())
    with pytest.raises(ValueError, match="16 characters"):
        Keys(ServeSettings(read_keys=[SecretStr("short")]))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serving_never_imports_training_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, freshrec.serve.api, freshrec.serve.service;"
        "bad = sorted(m for m in sys.modules if m.startswith('freshrec.learn'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_requests_ready_together_share_one_model_pass() -> None:
    import asyncio
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher

    calls: list[int] = []
    batcher = Batcher(run=lambda requests: calls.append(len(requests)), finish=lambda r: [r.name])  # type: ignore[attr-defined]

    async def main() -> list[object]:
        pending = [SimpleNamespace(result=None, name=n) for n in range(3)]
        lists = await asyncio.gather(*(batcher.rank(r) for r in pending))  # type: ignore[arg-type]
        await batcher.rank(SimpleNamespace(result=None, name=3))  # type: ignore[arg-type]
        settled = await batcher.rank(SimpleNamespace(result=["done"]))  # type: ignore[arg-type]  # needs no pass
        return [*lists, settled]

    try:
        assert asyncio.run(main()) == [[0], [1], [2], ["done"]]
        assert calls == [3, 1]
    finally:
        batcher.close()


def test_requests_that_come_while_a_pass_runs_make_the_next_batch_and_the_loop_stays_free() -> None:
    import asyncio
    import threading
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher

    release = threading.Event()
    batches: list[list[int]] = []
    threads: set[str] = set()

    def run(requests: list[SimpleNamespace]) -> None:
        threads.add(threading.current_thread().name)
        batches.append([r.name for r in requests])
        if len(batches) == 1:
            assert release.wait(5), "the loop was blocked by the pass"

    batcher = Batcher(run=run, finish=lambda r: [r.name])  # type: ignore[arg-type, attr-defined]

    async def main() -> list[object]:
        first = asyncio.ensure_future(batcher.rank(SimpleNamespace(result=None, name=0)))  # type: ignore[arg-type]
        while not batches:  # the first pass runs; the loop goes on meanwhile
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(batcher.rank(SimpleNamespace(result=None, name=n))) for n in (1, 2, 3)]  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert len(batches) == 1, "a second pass started beside the first"
        release.set()
        return await asyncio.gather(first, *later)

    try:
        assert asyncio.run(main()) == [[0], [1], [2], [3]]
        assert batches == [[0], [1, 2, 3]]
        assert len(threads) == 1 and threads != {threading.current_thread().name}
    finally:
        batcher.close()


def test_a_batch_a_closed_loop_left_behind_does_not_hold_up_the_next_loops_requests() -> None:
    import asyncio
    import threading
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher

    release = threading.Event()

    def run(requests: list[SimpleNamespace]) -> None:
        if requests[0].name == "first":
            release.wait(5)

    batcher = Batcher(run=run, finish=lambda r: [r.name])  # type: ignore[arg-type, attr-defined]

    async def first() -> None:
        waiting = asyncio.ensure_future(batcher.rank(SimpleNamespace(result=None, name="first")))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # its pass is running when the loop closes
        assert not waiting.done()

    async def second() -> list[object]:
        return await asyncio.wait_for(batcher.rank(SimpleNamespace(result=None, name="second")), 5)  # type: ignore[arg-type]

    try:
        asyncio.run(first())
        release.set()
        assert asyncio.run(second()) == ["second"]
    finally:
        batcher.close()


def test_a_failed_model_pass_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    import asyncio
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher

    calls: list[int] = []

    def run(requests: list[object]) -> None:
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("broken pass")

    def finish(request: SimpleNamespace) -> list[object]:
        if request.name == "bad":
            raise ValueError("broken list")
        return [request.name]

    batcher = Batcher(run=run, finish=finish)  # type: ignore[arg-type]

    async def main() -> tuple[list[object], list[object]]:
        failed = await asyncio.gather(
            *(batcher.rank(SimpleNamespace(result=None, name=n)) for n in range(2)),  # type: ignore[arg-type]
            return_exceptions=True,
        )
        # one request's failure after the pass is its own
        mixed = await asyncio.gather(
            *(batcher.rank(SimpleNamespace(result=None, name=n)) for n in ("bad", "good")),  # type: ignore[arg-type]
            return_exceptions=True,
        )
        return failed, mixed

    try:
        failed, mixed = asyncio.run(main())
    finally:
        batcher.close()
    assert [str(f) for f in failed] == ["broken pass", "broken pass"] and calls == [2, 2]
    assert isinstance(mixed[0], ValueError) and mixed[1] == ["good"]


def test_a_request_that_waited_past_the_deadline_is_refused_without_its_model_pass() -> None:
    import asyncio
    import time
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher, Overloaded

    ran: list[list[str]] = []
    shed: list[int] = []
    batcher = Batcher(
        run=lambda requests: ran.append([r.name for r in requests]),  # type: ignore[attr-defined]
        finish=lambda r: [],
        deadline_s=0.5,
        shed=lambda: shed.append(1),
    )

    async def main() -> list[object]:
        now = time.monotonic()
        late, fresh = (
            SimpleNamespace(result=None, arrived=now - 0.6, name="late"),
            SimpleNamespace(result=None, arrived=now, name="fresh"),
        )
        return await asyncio.gather(batcher.rank(late), batcher.rank(fresh), return_exceptions=True)  # type: ignore[arg-type]

    late, fresh = asyncio.run(main())
    assert isinstance(late, Overloaded) and "waited 6" in str(late) and fresh == []
    assert ran == [["fresh"]] and shed == [1]
    # nobody in time: no pass at all
    old = SimpleNamespace(result=None, arrived=time.monotonic() - 1.0, name="old")

    async def alone() -> list[object]:
        return await asyncio.gather(batcher.rank(old), return_exceptions=True)  # type: ignore[arg-type]

    assert isinstance(asyncio.run(alone())[0], Overloaded) and ran == [["fresh"]] and shed == [1, 1]
    batcher.close()
    # closed (the server stops): a request fails at once instead of waiting for ever
    after = SimpleNamespace(result=None, arrived=time.monotonic(), name="after")

    async def closed() -> list[object]:
        return await asyncio.gather(batcher.rank(after), return_exceptions=True)  # type: ignore[arg-type]

    assert isinstance(asyncio.run(closed())[0], RuntimeError) and ran == [["fresh"]]


def test_a_proxys_time_of_arrival_is_read_in_its_units_and_a_far_one_is_ignored() -> None:
    import time

    from freshrec.serve.batching import SKEW_S, Batcher, Overloaded, arrival

    wall, mono = time.time(), time.monotonic()
    for stamp in (f"t={wall - 3:.6f}", f"{(wall - 3) * 1e3:.0f}", f" t={(wall - 3) * 1e6:.0f} "):
        assert abs((mono - arrival(stamp)) - 3.0) < 0.1, stamp
    for stamp in (None, "", "t=", "soon", "inf", "-1", f"t={wall + 5:.3f}", f"t={wall - SKEW_S - 5:.3f}"):
        assert abs(arrival(stamp) - time.monotonic()) < 0.1, stamp  # now
    shed: list[int] = []
    batcher = Batcher(deadline_s=0.5, shed=lambda: shed.append(1))
    batcher.check(time.monotonic() - 0.4)
    with pytest.raises(Overloaded, match="waited 6"):
        batcher.check(time.monotonic() - 0.6)
    assert shed == [1]
    Batcher(deadline_s=None).check(0.0)  # no deadline: never refused
    batcher.close()


def test_the_learners_safeguard_counts_become_prometheus_counters(tmp_path: Path) -> None:
    from freshrec.serve.service import Service
    from freshrec.storage import SQLiteStore
    from tests.serve.conftest import make_settings

    store = SQLiteStore(tmp_path / "s.db")
    service = Service(store, make_settings(tmp_path))

    def exported() -> float:
        return service.metrics.registry.get_sample_value("freshrec_reverted_spikes_total") or 0.0

    for reported, expected in ((2, 2.0), (3, 3.0), (1, 3.0), (4, 4.0)):  # 1: a learner restarted from older counts
        service.figures.hygiene = {**service.figures.hygiene, "reverted_spikes": reported}
        service.figures.tick()
        assert exported() == expected
    assert service.figures.status()["reverted_spikes"] == 4
    service.close()
    store.close()


def test_refreeze_collects_the_young_each_time_and_what_frozen_objects_left_only_once_in_a_while() -> None:
    """The frozen objects are scanned the first time (a server's first whole snapshot comes
    before its traffic) and then at most once per ``full_every_s``: that scan of the whole
    server held the interpreter lock 300-450 ms on a million items."""
    import gc
    import weakref

    from freshrec.serve.engine import Refreeze

    class Node:
        pass

    def frozen_cycle() -> weakref.ref[Node]:
        node = Node()
        node.me = node  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        gc.freeze()  # frozen while still in use
        return gone

    now = [0.0]
    refreeze = Refreeze(full_every_s=60.0, clock=lambda: now[0])
    first = frozen_cycle()
    refreeze()
    assert first() is None  # the first time: everything
    frozen = frozen_cycle()
    young = Node()
    young.me = young  # type: ignore[attr-defined]
    young_gone = weakref.ref(young)
    del young
    kept = Node()
    now[0] = 59.0
    refreeze()
    assert young_gone() is None  # collected
    assert frozen() is not None  # not scanned yet
    assert not any(o is kept for o in gc.get_objects())  # frozen: out of every generation's scans
    now[0] = 60.0
    refreeze()
    assert frozen() is None
    assert gc.get_freeze_count() > 0


def test_the_server_tells_the_learner_each_whole_snapshots_cost_and_prefetches_the_store_after_the_first(
    tmp_path: Path,
) -> None:
    """The first whole snapshot served makes the server ready: traffic comes now, so the
    store's file is read into memory then (pages the startup read may be gone by then)."""
    path = tmp_path / "freshrec.db"
    with SQLiteStore(path) as store:
        store.append_events([make_event(f"u{n}", f"i{n % 7}", event_id=f"e{n}") for n in range(2_000)])
        settings = make_settings(tmp_path)
        engine = Engine(store, settings, Keys(settings.serve), "127.0.0.1", 0, learner=learner_main)
        try:
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert resident_share(path) < 0.5
            engine.service.models.on_whole(0.25)  # type: ignore[misc]
            wait_for(lambda: resident_share(path) > 0.99, timeout=20)
            engine.service.models.on_whole(0.5)  # type: ignore[misc]
            assert [engine.commands.get(timeout=5) for _ in range(2)] == [("served", 0.25, None), ("served", 0.5, None)]
        finally:
            engine.service.close()


@pytest.mark.skipif(sys.platform != "linux", reason="pipe sizes are Linux's")
def test_the_pipe_from_the_learner_holds_a_large_delta_at_once(tmp_path: Path) -> None:
    """64 KiB unless asked: a million items' delta of 1.4 MB crossed in 22 turns of the two
    processes (:data:`~freshrec.runtime.PIPE_BYTES`)."""
    most = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    with SQLiteStore(tmp_path / "freshrec.db") as store:
        settings = make_settings(tmp_path)
        engine = Engine(store, settings, Keys(settings.serve), "127.0.0.1", 0, learner=learner_main)
        try:
            room = fcntl.fcntl(engine.updates.fileno(), fcntl.F_GETPIPE_SZ)
            assert room == min(runtime.PIPE_BYTES, most) > 1 << 16
        finally:
            engine.service.close()
