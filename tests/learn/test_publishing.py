"""The learner's snapshots for serving: deltas built from the rows the model changed, made
only when the sender can take one, and whole where a delta cannot say what changed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.online import Learner
from freshrec.learn.publishing import Due
from freshrec.learn.sender import Sender
from freshrec.model import deltas
from freshrec.model.deltas import ITEM_TOWER, SnapshotDelta, apply
from freshrec.model.snapshot import Snapshot
from freshrec.settings import LearnSettings, Settings
from freshrec.storage import SQLiteStore
from tests.learn.test_online import SETTINGS, world  # noqa: F401  (the fixture)

World = tuple[SQLiteStore, list[dict[str, Any]], Path]
LARGE = SETTINGS.model_copy(update={"learn": LearnSettings(epochs=1, batch_size=16, full_softmax_max=8, negatives=8)})
"""A catalog "large" enough for sampled softmax: the tables' gradients are sparse."""


def served(published: list[Snapshot | SnapshotDelta]) -> Snapshot:
    """What serving holds after receiving ``published`` in order."""
    model = None
    for one in published:
        if isinstance(one, Snapshot):
            model = one
        else:
            assert model is not None
            model = apply(model, one)
    assert model is not None
    return model


def learner_with(settings: Settings, store: SQLiteStore, tmp: Path, due: list[Due]) -> tuple[Learner, list[Any]]:
    published: list[Snapshot | SnapshotDelta] = []
    learner = Learner(store, settings, Checkpoints(tmp / "checkpoints"), on_update=published.append)
    learner.publishing.due = lambda: due[0]
    return learner, published


def catch_up(learner: Learner, store: SQLiteStore, events: list[dict[str, Any]]) -> None:
    from freshrec.ingest.importer import import_events
    from freshrec.ingest.validate import Validator

    import_events(store, events, Validator(SETTINGS.ingest))
    learner.catch_up()


def test_deltas_of_the_rows_the_model_changed_give_serving_the_learners_model(world: World) -> None:  # noqa: F811
    store, later, tmp = world
    due: list[Due] = ["whole"]
    learner, published = learner_with(LARGE, store, tmp, due)
    learner.train()
    due[0] = "delta"
    catch_up(learner, store, later[:150])  # ten micro-batches: ten deltas
    kinds = [type(p).__name__ for p in published]
    assert kinds[0] == "Snapshot" and kinds.count("SnapshotDelta") >= 9
    whole, got = learner.snapshot(), served(published)
    assert any(len(p.rows) < len(whole.item_ids) for p in published if isinstance(p, SnapshotDelta))
    assert got.item_ids == whole.item_ids
    for name, tensor in whole.state.items():
        if not name.startswith(ITEM_TOWER):  # serving keeps the last whole one's item tower
            assert torch.equal(got.state[name], tensor), name


def test_a_dense_step_or_a_busy_sender_gets_no_delta(world: World) -> None:  # noqa: F811
    store, later, tmp = world
    due: list[Due] = ["delta"]
    learner, published = learner_with(SETTINGS, store, tmp, due)  # a small catalog: full softmax, dense
    learner.train()
    catch_up(learner, store, later[:128])
    assert published and all(isinstance(p, Snapshot) for p in published)
    count = len(published)
    due[0] = None  # the sender is busy: nothing is built, and the change is owed
    catch_up(learner, store, later[128:200])
    assert len(published) == count + 1  # catch_up hands over what it owes at its end
    due[0] = None
    learner._publish()
    assert len(published) == count + 1 and learner.publishing.stale and not learner.publishing.owed()
    due[0] = "resync"
    assert learner.publishing.owed()


def test_the_sender_merges_a_delta_into_the_one_waiting_and_drops_one_on_a_snapshot_it_did_not_deliver(
    world: World,  # noqa: F811
) -> None:
    store, later, tmp = world
    due: list[Due] = ["whole"]
    learner, published = learner_with(LARGE, store, tmp, due)
    learner.train()
    due[0] = "delta"
    catch_up(learner, store, later[:64])  # a whole one, then four deltas
    first, *chain = published
    sent: list[Snapshot | SnapshotDelta] = []
    gate = threading.Event()

    def deliver(data: bytes, start: bool) -> None:
        gate.wait(5)
        sent.append(deltas.read(data))

    sender = Sender(deliver, lambda message: None, 0.0, full_every_s=60.0).start()
    try:
        assert sender.due() == "resync"
        sender.snapshot(first)
        wait_for(lambda: sender.pending is None)  # being delivered: the next ones wait, and merge
        for one in chain:
            sender.snapshot(one)
        assert sender.due() is None  # one is waiting
        gate.set()
        wait_for(lambda: len(sent) == 2)
        assert isinstance(sent[1], SnapshotDelta) and sent[1].parent == first.serial
        wait_for(lambda: sender.due() == "delta")
        sender.snapshot(chain[0])  # names a snapshot the receiver already moved past
        wait_for(lambda: sender.due() == "resync")
        assert len(sent) == 2
    finally:
        sender.close(5)
    got = served(sent)
    for name, tensor in served(published).state.items():
        assert torch.equal(got.state[name], tensor), name


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["whole", "delta"])
def test_a_whole_snapshot_is_built_when_the_blend_counts_go_whole(world: World, kind: Due) -> None:  # noqa: F811
    store, later, tmp = world
    learner, published = learner_with(LARGE, store, tmp, [kind])
    learner.publishing.counts_due = lambda: True
    learner.train()
    catch_up(learner, store, later[:32])
    assert all(isinstance(p, Snapshot) for p in published)


@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("kind", ["whole", "delta"])
def test_where_whole_snapshots_are_far_apart_whole_counts_ride_deltas_and_every_whole_one_is_a_start(
    world: World,  # noqa: F811
    kind: Due,
    counts: bool,
) -> None:
    store, later, tmp = world
    learner, published = learner_with(LARGE, store, tmp, [kind])
    learner.publishing.counts_due = lambda: counts
    learner.publishing.counts_ride = lambda: True
    learner.train()
    catch_up(learner, store, later[:32])
    assert len(published) > 2
    for one in published[1:]:  # the first, after the warm start, has no base to be a delta on
        assert isinstance(one, Snapshot if kind == "whole" else SnapshotDelta)
        assert one.blend is not None
        assert (one.blend["signals"] is not None) == (counts or kind == "whole")


def test_whole_snapshots_are_spaced_by_what_the_last_one_cost(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from freshrec.learn import sender as sending

    monkeypatch.setattr(sending, "WHOLE_SHARE", 0.1)
    store, _later, tmp = world
    learner, published = learner_with(LARGE, store, tmp, ["whole"])
    learner.train()
    sent: list[bool] = []

    def deliver(data: bytes, start: bool) -> None:
        sent.append(start)
        time.sleep(0.1)  # a whole snapshot this slow is sent at most once a second

    sender = Sender(deliver, lambda message: None, 0.0, full_every_s=0.01).start()
    try:
        assert sender.due() == "resync"
        sender.snapshot(published[-1])
        wait_for(lambda: sender.due() is not None)
        assert sender.due() == "delta"  # 0.01 s have long passed, but not ten times 0.1 s
        assert not sender.counts_ride()  # one second apart: counts due make a snapshot whole
        wait_for(lambda: sender.due() == "whole", timeout_s=3.0)
        sender.snapshot(published[-1])
        wait_for(lambda: sender.due() is not None)
        sender.served(10.0)  # the receiver took ten seconds over that one: whole ones 100 s apart
        assert sender.counts_ride()
        time.sleep(1.2)
        assert sender.due() == "delta"
    finally:
        sender.close(5)
