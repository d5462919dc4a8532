"""The learner over a real SQLite store: warm start, catch-up, resume, rollback."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from freshrec.cli.app import app
from freshrec.datasets.files import Record, read_records
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.encoders import build_encoder, embed_items, encoder_key
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.items import CATALOG_SHARE
from freshrec.learn.online import CHECKPOINT_SHARE, Learner
from freshrec.model.snapshot import Snapshot
from freshrec.pacing import Paced
from freshrec.serve.catalog import Catalog
from freshrec.serve.scoring import build_scoring
from freshrec.settings import EncoderSettings, IngestSettings, LearnSettings, ModelSettings, Settings
from freshrec.storage import SQLiteStore

SETTINGS = Settings(
    encoder=EncoderSettings(model="hashing", hashing_dim=32),
    model=ModelSettings(dim=16, history_length=5, heads=2),
    learn=LearnSettings(epochs=1, batch_size=64),
)
ENV = {
    "FRESHREC_ENCODER__MODEL": "hashing",
    "FRESHREC_ENCODER__HASHING_DIM": "32",
    "FRESHREC_MODEL__DIM": "16",
    "FRESHREC_MODEL__HISTORY_LENGTH": "5",
    "FRESHREC_LEARN__EPOCHS": "1",
}


@pytest.fixture
def world(tmp_path: Path) -> tuple[SQLiteStore, list[dict[str, object]], Path]:
    paths = generate(GeneratorSettings(items=60, users=12, events=900, seed=2), tmp_path / "gen")
    store = SQLiteStore(tmp_path / "data" / "freshrec.db")
    validator = Validator(IngestSettings())
    import_items(store, read_records(paths["items"]), validator)
    embed_items(store, build_encoder(SETTINGS.encoder))
    records = list(read_records(paths["events"]))
    import_events(store, records[:600], validator)
    return store, records[600:], tmp_path


def test_warm_start_catch_up_resume_and_rollback(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    learner = Learner(store, SETTINGS, checkpoints)
    first = learner.train()
    assert (first.version, first.events_learned) == (1, 600)
    assert first.offset == store.read_events(0, 10_000)[-1].offset

    import_events(store, later[:200], Validator(IngestSettings()))
    learner._saving = Paced(0.0, CHECKPOINT_SHARE, clock=lambda: float("inf"))  # never put off by their cost
    assert learner.catch_up(checkpoint_every=100) == 200
    versions = checkpoints.list()
    assert [v.version for v in versions] == [1, 2, 3] and versions[-1].events_learned == 800

    # a fresh process resumes from the current version and scores exactly as before
    assert learner.model is not None
    queries = learner._batch(store.read_events(0, 50))
    expected = learner.model.score(queries)
    again = Learner(store, SETTINGS, checkpoints)
    assert again.resume().version == 3 and again.catch_up() == 0
    assert again.model is not None
    np.testing.assert_array_equal(again.model.score(queries), expected)

    # rolling back replays what came after that version's offset
    checkpoints.rollback(1)
    rolled = Learner(store, SETTINGS, checkpoints)
    assert rolled.resume().offset == first.offset
    assert rolled.catch_up() == 200
    assert checkpoints.current().version == 4  # type: ignore[union-attr]
    assert not list((tmp / "checkpoints").glob("*.tmp"))


def test_a_resumed_learner_reads_histories_from_the_store_not_the_log(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    """Resuming does not read the log the checkpoint covers again: each user's history
    comes from the store at their next event, and holds exactly what a learner that
    never stopped holds, for a user with more events since the checkpoint than a history
    and a micro-batch together, and with every user but one evicted from memory."""
    store, later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    kept = Learner(store, SETTINGS, checkpoints)
    first = kept.train()
    heavy = later[0].data
    burst = [
        Record("burst", n, {**heavy, "event_id": f"burst{n}", "item_id": later[n % 50].data["item_id"],
                            "timestamp": heavy["timestamp"] + 0.5 * n})
        for n in range(150)
    ]  # fmt: skip
    import_events(store, [*burst, *later], Validator(IngestSettings()))
    events = store.read_events(first.offset, 10_000)
    expected = kept._batch(events)
    small = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"max_users_in_memory": 1})})
    resumed = Learner(store, small, checkpoints)
    resumed.resume()
    got = resumed._batch(events)
    mine = sum(e.user_id == heavy["user_id"] for e in events)
    assert len(got) == len(events) and mine > SETTINGS.model.history_length + SETTINGS.learn.batch_size
    for column in ("hist_item", "hist_type", "hist_value", "hist_time"):
        np.testing.assert_array_equal(getattr(got, column), getattr(expected, column))


def test_cli_train_learn_list_rollback(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, later, tmp = world
    store.close()
    data = str(tmp / "data")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--data", data, *args], env=ENV)
        assert result.exit_code == code, result.output
        return result.output

    assert "no checkpoint yet" in run("learn", code=1)
    assert "model version 1: learned 600 events" in run("train")
    assert "nothing new" in run("learn")
    events = tmp / "later.jsonl"
    events.write_text("".join(f"{__import__('json').dumps(r.data)}\n" for r in later))
    run("import", "events", str(events))
    assert "learned 300 events; model version 2" in run("learn")
    listing = run("model", "list")
    assert "warm start" in listing and "online" in listing
    assert "model version 1 is current" in run("model", "rollback", "1")
    assert "no checkpoint version 9" in run("model", "rollback", "9", code=1)


def test_follow_learns_events_as_they_arrive(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    import threading
    import time

    store, later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    settings = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"max_wait_ms": 50})})
    Learner(store, settings, checkpoints).train()
    follower = Learner(store, settings, checkpoints)
    follower.resume()
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(follower.follow(stop)))
    thread.start()
    import_events(store, later[:10], Validator(IngestSettings()))  # fewer than a batch: learned after max_wait
    deadline = time.monotonic() + 10
    while follower.state.learned < 610 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert result == [10] and follower.state.offset == store.read_events(0, 10_000)[-1].offset
    assert checkpoints.current().events_learned == 610  # type: ignore[union-attr]


def test_online_checkpoints_are_put_off_by_their_cost_and_written_once_due(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    import threading
    import time

    store, later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    learn = SETTINGS.learn.model_copy(update={"max_wait_ms": 20, "checkpoint_every": 5})
    Learner(store, SETTINGS.model_copy(update={"learn": learn}), checkpoints).train()
    follower = Learner(store, SETTINGS.model_copy(update={"learn": learn}), checkpoints)
    follower.resume()
    now = [0.0]
    follower._saving = Paced(0.0, CHECKPOINT_SHARE, clock=lambda: now[0])
    stop = threading.Event()
    thread = threading.Thread(target=follower.follow, args=(stop,))
    thread.start()

    def learned(n: int) -> None:
        deadline = time.monotonic() + 10
        while follower.state.learned < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.state.learned >= n

    def saved(n: int) -> bool:
        deadline = time.monotonic() + 10
        while checkpoints.current().events_learned != n and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        return checkpoints.current().events_learned == n  # type: ignore[union-attr]

    try:
        validator = Validator(IngestSettings())
        import_events(store, later[:10], validator)
        learned(610)
        assert saved(610)  # due: the first one
        import_events(store, later[10:20], validator)
        learned(620)
        time.sleep(0.2)  # idle: the clock has not moved past the last one's cost over its share
        assert checkpoints.current().events_learned == 610  # type: ignore[union-attr]
        now[0] += 1e6  # as if twenty times what it took had passed
        assert saved(620)  # written while idle, with no further event
    finally:
        stop.set()
        thread.join(timeout=10)


def test_items_added_after_the_checkpoint_join_the_model(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, _later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    published: list[object] = []
    learner = Learner(store, SETTINGS, checkpoints, on_update=published.append)
    learner.train()
    assert len(published) == 1
    n = len(learner.items.ids)
    validator = Validator(IngestSettings())
    store.upsert_items([validator.item({"item_id": "late-1", "title": "A late arrival"})])
    embed_items(store, build_encoder(SETTINGS.encoder))
    events = [
        {"user_id": "u00001", "item_id": "late-1", "type": "click", "timestamp": 1_790_000_000 + s} for s in range(3)
    ]
    events.append({"user_id": "u00001", "item_id": "never-imported", "type": "click", "timestamp": 1_790_000_010})
    store.append_events([validator.event(e) for e in events])
    assert learner.catch_up() == 3
    assert learner.items.ids[n:] == ["late-1"] and learner.state.skipped_unknown_items == 1
    model = learner.model
    assert model is not None and model.n_items == n + 1 and bool(model.net.active[n])
    for optimizer in model.trainer.optimizers:  # per-row optimizer state grew with the table
        for value in optimizer.state.get(model.net.item_id.weight, {}).values():
            assert not value.dim() or value.shape[0] == n + 1
    snapshot = published[-1]
    assert snapshot.item_ids[-1] == "late-1" and snapshot.offset == store.last_offset()  # type: ignore[attr-defined]
    # the checkpoint keeps the grown table; a restarted learner resumes with it
    again = Learner(store, SETTINGS, checkpoints)
    again.resume()
    assert again.items.ids == learner.items.ids


def test_a_warm_start_can_be_limited_to_the_most_recent_events(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, _later, tmp = world
    settings = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"warm_start_events": 100})})
    learner = Learner(store, settings, Checkpoints(tmp / "checkpoints"))
    version = learner.train()
    head = store.last_offset()
    assert version.events_learned == 100 and version.offset == head == learner.state.offset
    everything = Learner(store, SETTINGS, Checkpoints(tmp / "all"))
    assert everything.train().events_learned == len(store.read_events(0, 100_000)) > 100


def test_idle_users_leave_memory_and_come_back_from_the_store(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, later, tmp = world
    small = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"max_users_in_memory": 2})})
    bounded, everyone = Learner(store, small, Checkpoints(tmp / "a")), Learner(store, SETTINGS, Checkpoints(tmp / "b"))
    bounded.train()
    everyone.train()
    assert len(bounded.users.recent) == 2 and len(everyone.users.recent) == 12
    validator = Validator(IngestSettings())
    import_events(store, later[:150], validator)
    events = store.read_events(everyone.state.offset, 1_000)
    assert len({e.user_id for e in events}) > 2
    got, want = bounded._batch(events), everyone._batch(events)  # the same histories, from the store
    for name in ("hist_item", "hist_type", "hist_value", "hist_time"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_checkpoints_leave_the_text_table_to_the_store(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, _later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    learner = Learner(store, SETTINGS, checkpoints)
    version = learner.train()
    _, state = checkpoints.load(version.version)
    assert "text" not in state["model"]["trainer"]["net"] and "item_id.weight" in state["model"]["trainer"]["net"]
    again = Learner(store, SETTINGS, checkpoints)
    again.resume()
    assert again.model is not None and learner.model is not None
    torch.testing.assert_close(again.model.net.text, learner.model.net.text)  # read back from the store
    before, after = learner.snapshot().state, again.snapshot().state
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name])


def catalog_reads(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The encoders of the reads of the catalog's ids from now on (the store still answers them)."""
    reads: list[str] = []
    embedded_ids = store.embedded_ids
    monkeypatch.setattr(store, "embedded_ids", lambda encoder: reads.append(encoder) or embedded_ids(encoder))
    return reads


def test_catalog_items_no_event_named_join_the_model_for_servings_numbering(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _later, tmp = world
    learner = Learner(store, SETTINGS, Checkpoints(tmp / "checkpoints"))
    learner.train()
    n = len(learner.items.ids)
    validator = Validator(IngestSettings())
    store.upsert_items([validator.item({"item_id": f"quiet-{k}", "title": f"Nobody clicked {k}"}) for k in range(2)])
    embed_items(store, build_encoder(SETTINGS.encoder))
    known = learner.items.ids[0]
    event = {"user_id": "u00001", "item_id": known, "type": "click", "timestamp": 1_790_000_000}
    store.append_events([validator.event(event)])
    assert learner.catch_up() == 1 and len(learner.items.ids) == n  # not yet: the catalog is read now and then
    learner.items._catalog = Paced(0.0, CATALOG_SHARE)  # as if CATALOG_S had passed
    store.append_events([validator.event({**event, "timestamp": 1_790_000_100})])
    assert learner.catch_up() == 1
    assert learner.items.ids[n:] == ["quiet-0", "quiet-1"] and learner.snapshot().item_ids[n:] == ["quiet-0", "quiet-1"]
    assert learner.model is not None and learner.model.n_items == n + 2 and not learner.model.net.active[n:].any()

    # the ids are read again only once the catalog's version says it changed
    reads = catalog_reads(store, monkeypatch)
    for k, item in enumerate([None, {"item_id": "quiet-2", "title": "Nobody clicked this one either"}]):
        if item is not None:
            store.upsert_items([validator.item(item)])
            embed_items(store, build_encoder(SETTINGS.encoder))
        learner.items._catalog = Paced(0.0, CATALOG_SHARE)
        store.append_events([validator.event({**event, "timestamp": 1_790_000_200 + k})])
        assert learner.catch_up() == 1
    assert len(reads) == 1 and learner.items.ids[n:] == ["quiet-0", "quiet-1", "quiet-2"]


def test_a_resumed_learner_takes_in_the_items_its_checkpoint_lacks_without_reading_the_ids_again(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _later, tmp = world
    Learner(store, SETTINGS, Checkpoints(tmp / "checkpoints")).train()
    validator = Validator(IngestSettings())
    store.upsert_items([validator.item({"item_id": f"new-{k}", "title": f"Added after {k}"}) for k in range(2)])
    embed_items(store, build_encoder(SETTINGS.encoder))
    reads = catalog_reads(store, monkeypatch)
    resumed = Learner(store, SETTINGS, Checkpoints(tmp / "checkpoints"))
    resumed.resume()
    n = len(resumed.items.ids)
    assert "new-0" not in resumed.items.codes  # the checkpoint's numbering first
    resumed.items._catalog = Paced(0.0, CATALOG_SHARE)
    event = {"user_id": "u00001", "item_id": resumed.items.ids[0], "type": "click", "timestamp": 1_790_000_000}
    store.append_events([validator.event(event)])
    assert resumed.catch_up() == 1
    assert resumed.items.ids[n:] == ["new-0", "new-1"] and not reads
    assert resumed.model is not None and resumed.model.n_items == n + 2
    _, vectors = store.item_vectors(encoder_key(SETTINGS.encoder), ["new-0", "new-1"])
    torch.testing.assert_close(resumed.model.net.text[n:], torch.from_numpy(vectors))


def test_user_ids_travel_with_checkpoints_and_snapshots_and_deletion_erases_them(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    store, later, tmp = world
    settings = SETTINGS.model_copy(update={"model": SETTINGS.model.model_copy(update={"use_user_ids": True})})
    checkpoints = Checkpoints(tmp / "checkpoints")
    published: list[Snapshot] = []
    learner = Learner(store, settings, checkpoints, on_update=published.append)
    learner.train()
    import_events(store, later[:100], Validator(IngestSettings()))
    learner.catch_up()
    model = learner.model
    assert model is not None and model.net.user_id is not None
    users = sorted(learner.users.codes)
    assert len(users) == 12 and learner.users.ids == [learner.users.ids[c] for c in range(len(learner.users.ids))]
    assert model.net.user_id.num_embeddings == len(learner.users.ids)

    # serving gets the user table and which row is whose
    catalog = Catalog()
    catalog.load(store, encoder_key(settings.encoder))
    scoring = build_scoring(published[-1], catalog.view)
    assert scoring.net is not None and scoring.net.user_id is not None
    for user in users:
        row = learner.users.codes[user]
        assert scoring.user_rows[user] == row
        torch.testing.assert_close(scoring.net.user_id.weight[row], model.net.user_id.weight[row])

    # a restarted learner maps each user to the same row
    again = Learner(store, settings, checkpoints)
    again.resume()
    assert again.users.codes == learner.users.codes

    gone = users[0]
    row = learner.users.codes[gone]
    learner.forget_user(gone)
    assert gone not in learner.users.codes and learner.users.ids[row] is None
    assert torch.count_nonzero(model.net.user_id.weight[row]) == 0
    assert gone not in learner.snapshot().user_ids
    learner._checkpoint("after a deletion")
    _, state = checkpoints.load(checkpoints.current().version)  # type: ignore[union-attr]
    assert gone not in state["user_ids"]
    assert torch.count_nonzero(state["model"]["trainer"]["net"]["user_id.weight"][row]) == 0


def test_events_of_a_deleted_user_read_before_the_deletion_are_not_learned(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    store, later, tmp = world
    learner = Learner(store, SETTINGS, Checkpoints(tmp / "checkpoints"))
    learner.train()
    import_events(store, later[:100], Validator(IngestSettings()))
    pending = store.read_events(learner.state.offset, 1_000)  # read, then the user is deleted
    gone = pending[0].user_id
    store.delete_user(gone)
    learner.forget_user(gone)
    learned = learner._learn(pending)
    assert learned == sum(e.user_id != gone for e in pending)
    assert gone not in learner.users.codes and gone not in learner.users.recent
    assert learner.state.offset == pending[-1].offset
    assert not learner._tombstones  # read past the deletion: no batch from before can come
    returning = [
        Record("back", n, {**(r.data or {}), "user_id": gone, "event_id": f"back-{n}"})
        for n, r in enumerate(later[100:110])
    ]
    import_events(store, returning, Validator(IngestSettings()))
    assert learner.catch_up() >= len(returning)
    assert gone in learner.users.codes and gone in learner.users.recent  # a returning user is learned again


def test_a_bursting_user_is_stored_but_not_learned(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, _later, tmp = world
    settings = SETTINGS.model_copy(update={"ingest": IngestSettings(max_events_per_minute=5, repeat_window_s=0)})
    learner = Learner(store, settings, Checkpoints(tmp / "checkpoints"))
    learner.train()
    validator = Validator(settings.ingest)
    item = learner.items.ids[0]
    burst = [{"user_id": "bot", "item_id": item, "type": "view", "timestamp": 1_790_000_000 + s / 2} for s in range(20)]
    calm = [
        {"user_id": "person", "item_id": item, "type": "view", "timestamp": 1_790_000_000 + 30 * s} for s in range(4)
    ]
    store.append_events([validator.event(e) for e in burst + calm])
    assert learner.catch_up() == 5 + 4  # the bot's first five, then nothing of it
    assert len(learner.users.recent["bot"]) == 5 and len(learner.users.recent["person"]) == 4
    assert learner.quarantine.figures() == {"quarantined_users": 1, "quarantined_events": 15}
    assert len(store.user_history("bot", 100)) == 20  # stored all the same

    # a restarted learner still holds the bot in quarantine, with the last minute's counts
    learner._checkpoint("with a bot")
    published: list[Snapshot] = []
    again = Learner(store, settings, learner.checkpoints, on_update=published.append)
    again.resume()
    assert again.quarantine.figures() == learner.quarantine.figures() and again.quarantine.users() == ["bot"]
    store.append_events([validator.event({**burst[-1], "timestamp": burst[-1]["timestamp"] + 1})])
    assert again.catch_up() == 0
    # nothing learned, but the log was read to its end: serving must not see the learner behind
    assert published[-1].offset == store.last_offset()


def test_a_user_deleted_during_the_warm_start_is_erased_once_it_ends(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    import threading

    store, _later, tmp = world
    learner = Learner(store, SETTINGS, Checkpoints(tmp / "checkpoints"))
    started = threading.Event()
    original = learner._new_model

    def new_model(*args: object) -> object:  # the warm start has read the log and holds the learner
        started.set()
        return original(*args)  # type: ignore[arg-type]

    learner._new_model = new_model  # type: ignore[method-assign]
    gone = store.read_events(0, 1)[0].user_id
    training = threading.Thread(target=learner.train)
    training.start()
    assert started.wait(30)
    store.delete_user(gone)
    learner.forget_user(gone)  # waits for the warm start, which read the user's events
    training.join()
    assert learner.model is not None and gone not in learner.users.codes and gone not in learner.users.recent
    code = learner.users.ids.index(None)
    assert not (learner.model.buffer.data["user"][: learner.model.buffer.size] == code).any()
    _, state = learner.checkpoints.load(learner.checkpoints.current().version)  # type: ignore[union-attr]
    assert gone not in state["user_ids"]


def test_a_mirrored_checkpoint_resumes_a_learner_elsewhere_and_is_rewritten_by_erasure(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    from freshrec.learn.role import shared_checkpoints

    store, later, tmp = world
    settings = SETTINGS.model_copy(update={"data_dir": tmp / "first"})
    learner = Learner(store, settings, shared_checkpoints(settings, store)[0])
    learner.train()
    import_events(store, later[:100], Validator(IngestSettings()))
    learner.catch_up()
    mirrored = store.published("checkpoint")
    assert mirrored is not None and mirrored[0] == 1  # the warm start; the catch-up came within 30 s
    gone = next(iter(learner.users.codes))
    assert gone.encode() in mirrored[1]

    elsewhere = settings.model_copy(update={"data_dir": tmp / "second"})  # an empty data folder
    moved, _shelf = shared_checkpoints(elsewhere, store)
    assert moved.current().version == 1  # type: ignore[union-attr]
    second = Learner(store, elsewhere, moved)
    second.resume()
    second.catch_up()  # the log after the mirrored offset
    assert second.state.offset == learner.state.offset and second.users.codes == learner.users.codes

    store.delete_user(gone)
    second.forget_user(gone)
    rewritten = store.published("checkpoint", after=mirrored[0])
    assert rewritten is not None and gone.encode() not in rewritten[1]


def test_a_checkpoint_of_another_store_is_refused(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    from freshrec.learn.online import OtherStore

    store, _later, tmp = world
    checkpoints = Checkpoints(tmp / "checkpoints")
    learner = Learner(store, SETTINGS, checkpoints)
    learner.train()
    assert checkpoints.current().store == learner.store_id != ""  # type: ignore[union-attr]
    assert Learner(store, SETTINGS, checkpoints).store_id == learner.store_id  # kept in the store
    recreated = SQLiteStore(tmp / "recreated.db")  # say, the database was dropped and imported again
    recreated.upsert_items(list(store.iter_items()))
    with pytest.raises(OtherStore, match="written for another store"):
        Learner(recreated, SETTINGS, checkpoints).resume()


def test_the_warm_start_publishes_as_it_goes(world: tuple[SQLiteStore, list, Path]) -> None:  # type: ignore[type-arg]
    store, _, tmp = world
    settings = SETTINGS.model_copy(update={"learn": SETTINGS.learn.model_copy(update={"warm_publish_s": 1e-9})})
    published: list[Snapshot] = []
    Learner(store, settings, Checkpoints(tmp / "checkpoints"), on_update=published.append).train()
    # one publish per warm-start step (the interval is tiny here) and the final one
    assert len(published) > 2
    assert not all(torch.equal(published[0].state["query"], s.state["query"]) for s in published[1:])


def test_private_accounting_counts_the_examples_a_crash_replay_uses_twice(
    world: tuple[SQLiteStore, list, Path],  # type: ignore[type-arg]
) -> None:
    from freshrec.settings import PrivacySettings

    store, later, tmp = world
    learn = SETTINGS.learn.model_copy(update={"privacy": PrivacySettings(enabled=True), "max_wait_ms": 20})
    settings = SETTINGS.model_copy(update={"learn": learn})
    checkpoints = Checkpoints(tmp / "checkpoints")
    Learner(store, settings, checkpoints).train()
    validator = Validator(IngestSettings())

    def run_once(events: list[Record], stop_cleanly: bool) -> dict[str, Any]:
        learner = Learner(store, settings, checkpoints)
        learner.resume()
        import_events(store, events, validator)
        if stop_cleanly:
            stop = threading.Event()
            stop.set()
            learner.follow(stop)  # stops at once: the stopping checkpoint
        else:
            learner.catch_up(checkpoint_every=10**9)  # learned and served, never checkpointed: then a crash
        assert learner.model is not None and learner.model.private is not None
        report: dict[str, Any] = learner.model.private.report(SETTINGS.model.history_length)
        return report

    clean = run_once(later[:50], stop_cleanly=True)
    assert clean["uses"] == 1
    assert run_once(later[50:100], stop_cleanly=True)["uses"] == 1  # resumed from a clean stop: nothing twice
    crashed = run_once(later[100:150], stop_cleanly=False)  # catch_up's last flush is not a stop
    after = Learner(store, settings, checkpoints)
    after.resume()
    assert after.model is not None and after.model.private is not None
    report = after.model.private.report(SETTINGS.model.history_length)
    assert crashed["uses"] == 1 and report["uses"] == 2
    assert report["epsilon_example"] > clean["epsilon_example"] * 1.2  # two uses compose
