"""What the freshrec model promises beyond the shared contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec import serialization
from freshrec.domain import EventType
from freshrec.encoders.hashing import HashingEncoder
from freshrec.evaluate.log import EventLog
from freshrec.evaluate.replay import Sequences
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.learn.recommender import build_freshrec
from freshrec.model import sequence
from freshrec.model.base import FIELDS, Interactions
from freshrec.model.freshrec import FreshRec
from freshrec.model.histories import tensors
from freshrec.model.rows import Room
from freshrec.serve.network import text_part_made
from freshrec.settings import LearnSettings, ModelSettings
from tests.evaluate.helpers import tiny_log

MODEL = ModelSettings(dim=16, history_length=6, heads=2)
LEARN = LearnSettings(epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def log() -> EventLog:
    rng = np.random.default_rng(1)
    rows = [(f"u{rng.integers(15)}", f"i{rng.integers(30)}", float(t)) for t in range(500)]
    return tiny_log(rows, items=[f"i{n}" for n in range(40)])  # i30..i39: never touched


def model(log: EventLog, model: ModelSettings = MODEL, **learn: object) -> FreshRec:
    text = HashingEncoder(32).encode(log.catalog.texts)
    return build_freshrec(log.n_items, text, model, LEARN.model_copy(update=learn))


def test_state_round_trip(log: EventLog) -> None:
    seqs = Sequences(log)
    a = model(log)
    a.fit(seqs.batch(np.arange(300), 6))
    a.learn(seqs.batch(np.arange(300, 400), 6))
    b = model(log, epochs=1)
    b.load_state(serialization.loads(serialization.dumps(a.state())))  # as a checkpoint carries it
    queries = seqs.batch(np.arange(400, 500), 6, queries=True)
    np.testing.assert_array_equal(a.score(queries), b.score(queries))
    # and they keep learning the same way: optimizer state and RNG travelled too
    a.learn(seqs.batch(np.arange(400, 450), 6))
    b.learn(seqs.batch(np.arange(400, 450), 6))
    np.testing.assert_allclose(a.score(queries), b.score(queries), rtol=1e-5, atol=1e-5)


def test_untouched_items_are_scored_by_text_alone(log: EventLog) -> None:
    seqs = Sequences(log)
    m = model(log)
    m.fit(seqs.batch(np.arange(400), 6))
    assert not m.net.active[30:].any() and m.net.active[:30].all()
    assert torch.count_nonzero(m.net.item_id.weight[30:]) == 0  # no ID row, no push-down
    scores = m.score(seqs.batch(np.arange(400, 410), 6, queries=True))
    assert np.isfinite(scores[:, 30:]).all() and np.ptp(scores[:, 30:]) > 0  # text still tells them apart


def test_frozen_model_does_not_learn(log: EventLog) -> None:
    seqs = Sequences(log)
    m = model(log, online=False)
    m.fit(seqs.batch(np.arange(300), 6))
    queries = seqs.batch(np.arange(400, 420), 6, queries=True)
    before = m.score(queries)
    m.learn(seqs.batch(np.arange(300, 400), 6))
    np.testing.assert_array_equal(before, m.score(queries))


def test_non_finite_batches_are_skipped_and_counted(log: EventLog) -> None:
    seqs = Sequences(log)
    m = model(log)
    m.fit(seqs.batch(np.arange(300), 6))
    state = {k: v.clone() for k, v in m.net.state_dict().items()}
    with torch.no_grad():
        m.net.text_bias.bias.fill_(float("inf"))
    state["text_bias.bias"] = m.net.text_bias.bias.clone()
    assert m.trainer.step(seqs.batch(np.arange(300, 364), 6)) is None
    assert m.trainer.health.skipped_non_finite == 1
    for name, value in m.net.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_a_loss_spike_restores_the_last_good_state_and_learns_the_batches_since_again(log: EventLog) -> None:
    seqs = Sequences(log)
    m = model(log, spike_factor=1.5, epochs=4, batch_size=32, patience=4)
    m.fit(seqs.batch(np.arange(400), 6))
    trainer = m.trainer
    assert trainer.health.steps >= 20
    start = 0
    while trainer.health.steps % 50 != 1:  # online steps (no dropout: replays are exact) up to a good state
        trainer.step(seqs.batch(np.arange(start, start + 16) % 400, 6), dropout=False)
        start += 16
    good = trainer._good
    assert good is not None
    for _ in range(5):  # five micro-batches learned after it
        assert trainer.step(seqs.batch(np.arange(start, start + 16) % 400, 6), dropout=False) is not None
        start += 16
    learned = {k: v.clone() for k, v in m.net.state_dict().items()}
    with torch.no_grad():  # wreck the model: every target now scores lowest
        m.net.item_bias.weight.fill_(-50.0)
    assert trainer.step(seqs.batch(np.arange(400, 464), 6)) is None
    assert trainer.health.reverted_spikes == 1
    # not the good state of five batches ago: those five were learned again, the spike was not
    assert not torch.equal(m.net.item_bias.weight, good["net"]["item_bias.weight"])
    for name, value in m.net.state_dict().items():
        torch.testing.assert_close(value, learned[name], msg=name)


@pytest.mark.parametrize("full_softmax_max", [4_096, 1])  # 1: a "large" catalog, seeded from the rows it needs
def test_an_item_first_seen_online_starts_near_its_first_user(log: EventLog, full_softmax_max: int) -> None:
    seqs = Sequences(log)
    m = model(log, full_softmax_max=full_softmax_max)
    m.fit(seqs.batch(np.arange(400), 6))
    first = 400
    event = seqs.batch(np.array([first]), 6)
    item = int(event.item[0])
    with torch.no_grad():  # pretend the item was never seen, to watch it being seeded
        m.net.interactions[item] = 0
        m.net.active[item] = False
        m.net.item_id.weight[item] = 0
        m.net.eval()
        table, _ = m.net.item_table()
        state = m.net.users(table, **tensors(event))[0]
    m.model_settings = MODEL.model_copy(update={"new_item_seed": 0.5})
    m._seed_new_items(event)
    torch.testing.assert_close(m.net.item_id.weight[item], 0.5 * state)
    untouched = m.net.item_id.weight[35]
    assert torch.count_nonzero(untouched) == 0


def test_unused_item_rows_expire_and_start_over_from_text(log: EventLog) -> None:
    seqs = Sequences(log)
    text = HashingEncoder(32).encode(log.catalog.texts)
    m = build_freshrec(log.n_items, text, MODEL.model_copy(update={"id_ttl_s": 50.0}), LEARN)
    m.fit(seqs.batch(np.arange(300), 6))  # events at t = 0 .. 299
    m.learn(seqs.batch(np.arange(400, 450), 6))
    m.learn(seqs.batch(np.arange(450, 500), 6))  # now t = 499: rows unused since before t = 449 expire
    recent = {int(log.item[i]) for i in range(500) if log.time[i] >= 449}
    table = m.trainer.optimizers[1].state[m.net.item_id.weight]["sum"]  # Adagrad's accumulator
    for item in range(30):
        if item in recent:
            assert m.net.active[item]
        else:
            assert not m.net.active[item] and torch.count_nonzero(m.net.item_id.weight[item]) == 0
            assert torch.count_nonzero(table[item]) == 0
    assert (~m.net.active).sum() > 10


def test_sampled_softmax_on_a_row_subset_matches_the_full_one_when_it_samples_everything(log: EventLog) -> None:
    """A large catalog computes only the rows a step needs; with every item sampled
    the loss must be exactly the full softmax's."""
    seqs = Sequences(log)
    batch = seqs.batch(np.arange(200, 300), 6)
    full = model(log)
    sampled = model(log, full_softmax_max=1, negatives=5_000)
    sampled.net.load_state_dict(full.net.state_dict())
    full.net.eval()
    sampled.net.eval()
    for every_position in (False, True):
        full.trainer._rng = np.random.default_rng(0)
        sampled.trainer._rng = np.random.default_rng(0)
        with torch.no_grad():
            a = full.trainer.loss(batch, every_position)
            b = sampled.trainer.loss(batch, every_position)
        torch.testing.assert_close(a, b)


def test_user_id_rows_appear_with_users_learn_survive_a_reload_and_are_forgotten(log: EventLog) -> None:
    seqs = Sequences(log)
    with_users = MODEL.model_copy(update={"use_user_ids": True})
    m = model(log, with_users)
    first = seqs.batch(np.arange(20), 6)
    m.fit(first)
    assert m.net.user_id is not None
    assert m.net.user_id.num_embeddings == first.user.max() + 1  # rows only for users seen so far
    late = np.flatnonzero(log.user[20:] > first.user.max())
    assert len(late), "the fixture needs users who first appear later"
    m.learn(seqs.batch(np.arange(20, 400), 6))
    assert m.net.user_id.num_embeddings == log.user[:400].max() + 1
    table = m.net.user_id.weight
    assert torch.count_nonzero(table, dim=1).gt(0).all()  # every user who had an example moved

    # the row is part of the user vector: same history, another user, another vector
    query = seqs.batch(np.array([450]), 6, queries=True)
    other = Interactions(**{**{f: getattr(query, f) for f in FIELDS}, "user": (query.user + 1) % 15})
    assert not np.allclose(m.score(query), m.score(other))

    again = model(log, with_users)
    again.load_state(serialization.loads(serialization.dumps(m.state())))
    queries = seqs.batch(np.arange(400, 500), 6, queries=True)
    np.testing.assert_array_equal(m.score(queries), again.score(queries))

    gone = int(query.user[0])
    assert (m.buffer.data["user"][: len(m.buffer)] == gone).any()
    m.forget_user(gone)
    assert torch.count_nonzero(m.net.user_id.weight[gone]) == 0
    for optimizer in m.trainer.optimizers:
        for value in optimizer.state.get(m.net.user_id.weight, {}).values():
            if value.dim():
                assert torch.count_nonzero(value[gone]) == 0
    assert not (m.buffer.data["user"][: len(m.buffer)] == gone).any()
    before = m.net.user_id.weight.clone()
    m.learn(seqs.batch(np.flatnonzero(log.user[:400] != gone)[-64:], 6))
    assert torch.count_nonzero(m.net.user_id.weight[gone]) == 0  # nothing of theirs came back
    assert not torch.equal(before, m.net.user_id.weight)


def test_the_last_item_term_adds_its_vector_by_event_type(log: EventLog) -> None:
    seqs = Sequences(log)
    with_term = model(log, MODEL.model_copy(update={"last_item_weight": 0.7}))
    without = model(log, MODEL.model_copy(update={"last_item_weight": None}))
    without.net.load_state_dict(with_term.net.state_dict(), strict=False)  # same weights but the term
    queries = seqs.batch(np.arange(400, 410), 6, queries=True)
    t = tensors(queries)
    for m in (with_term, without):
        m.net.eval()
    with torch.no_grad():
        table, _ = with_term.net.item_table()
        added = with_term.net.users(table, **t) - without.net.users(table, **t)
        torch.testing.assert_close(added, 0.7 * table[t["hist_item"][:, -1]])
        t["hist_type"][:, -1] = TYPE_CODES[EventType.DISLIKE]  # says nothing like "more of it"
        added = with_term.net.users(table, **t) - without.net.users(table, **t)
    torch.testing.assert_close(added, torch.zeros_like(added))


def test_a_state_from_before_the_last_item_term_resumes_with_its_old_scores(log: EventLog) -> None:
    seqs = Sequences(log)
    old = model(log, MODEL.model_copy(update={"last_item_weight": None}))
    old.fit(seqs.batch(np.arange(300), 6))
    new = model(log)
    new.load_state(old.state())
    queries = seqs.batch(np.arange(400, 500), 6, queries=True)
    np.testing.assert_allclose(new.score(queries), old.score(queries), rtol=1e-5, atol=1e-5)
    assert new.net.last_item is not None and not new.net.last_item.weight.any()
    new.learn(seqs.batch(np.arange(300, 400), 6))  # the optimizer took the new weights on
    assert new.net.last_item.weight.any()


@pytest.mark.parametrize("group_cost", [0, sequence.GROUP_COST])  # always grouped; grouped where it pays
def test_grouping_rows_by_history_length_and_the_query_only_last_layer_change_no_output(
    group_cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder runs rows in groups cut to their length, and its last layer for the
    query alone when only the query's state is wanted; each output equals that of the
    whole padded batch through every layer at every position (the cost differs, not
    the result), gradients included."""
    monkeypatch.setattr(sequence, "GROUP_COST", group_cost)
    settings = ModelSettings(dim=16, history_length=20, heads=2, layers=2, dropout=0.0)
    net = build_freshrec(10, HashingEncoder(8).encode([f"i{n}" for n in range(10)]), settings).net
    rng = np.random.default_rng(3)
    lengths = np.array([0, 1, 2, 3, 5, 9, 16, 17, 20, 0, 4])
    size = settings.history_length + 1
    padding = torch.from_numpy(np.arange(size)[None, :] < (size - 1 - lengths)[:, None])
    padding[-1, size - 3] = True  # a gap inside a history: kept, as it was
    seq = torch.from_numpy(rng.normal(size=(len(lengths), size, 16)).astype(np.float32)).requires_grad_()
    allowed = net.causal.unsqueeze(0) & (~padding.unsqueeze(1) | net.eye)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")).repeat_interleave(2, dim=0)
    reference = net.encoder(seq + net.position.weight.unsqueeze(0), mask=mask)
    for every_position in (False, True):
        out = net._encode(seq, padding, every_position)
        out = out[~padding] if every_position else out  # padded positions' states are never read
        expected = reference[~padding] if every_position else reference[:, -1]
        torch.testing.assert_close(out, expected)
        (grad,) = torch.autograd.grad(out.sum(), seq)
        (expected_grad,) = torch.autograd.grad(expected.sum(), seq, retain_graph=True)
        torch.testing.assert_close(grad, expected_grad)


def test_the_validation_loss_is_computed_a_slice_at_a_time_and_equals_the_whole(log: EventLog) -> None:
    """A warm start's validation slice is scored in slices of 16 batches (a million-item
    shop's 100,000-event slice asked for 27 GB at once); the loss is the same."""
    m = model(log, batch_size=8)  # slices of 128 events: the 500 events take four
    events = Sequences(log).batch(np.arange(len(log), dtype=np.int64), MODEL.history_length)
    m.fit(events)
    sliced = m._evaluate(events)  # in eval mode from here on
    with torch.no_grad():
        assert sliced == pytest.approx(float(m.trainer.loss(events)), rel=1e-5)


@pytest.mark.parametrize("update", [{}, {"use_text": False}, {"use_ids": False}])
def test_the_item_table_without_autograd_equals_the_one_with_it(update: dict[str, bool]) -> None:
    """Serving builds item tables with no gradient recorded, in place (no temporary per
    term), into tables it gives where it has them; the learner's steps build them with
    autograd: the numbers must agree, whole and for some rows, with the text part given or
    computed."""
    torch.manual_seed(3)
    net = sequence.SequenceNet(30, torch.randn(30, 8), MODEL.model_copy(update=update))
    with torch.no_grad():
        net.item_id.weight.normal_()
        net.item_bias.weight.normal_()
        net.active[::3] = True
    rows = torch.tensor([0, 4, 9, 29])
    for which in (None, rows):
        with torch.enable_grad():
            want = [t.detach() for t in net.item_table(which)]
        with torch.no_grad():
            got = net.item_table(which)
            given = net.item_table(which, text_part=net.text_part(which)) if net.use_text else got
            n = len(net.active) if which is None else len(which)
            out = torch.full((n, net.item_id.embedding_dim), float("nan")), torch.full((n,), float("nan"))
            into = net.item_table(which, out=out)
        assert into[0].data_ptr() == out[0].data_ptr() and into[1].data_ptr() == out[1].data_ptr()
        with pytest.raises(ValueError, match="where nothing records gradients"):
            net.item_table(which, out=out)
        for mine in (*got, *given, *into):
            assert not mine.requires_grad
        for mine in (got, given, into):
            torch.testing.assert_close(mine[0], want[0])
            torch.testing.assert_close(mine[1], want[1])


@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_the_text_part_made_in_spare_rows_is_the_networks_own(adapter: str) -> None:
    """Serving writes a whole model's text part into a block with spare rows (the first item
    added after it grows it in place): the very numbers of :meth:`SequenceNet.text_part`."""
    torch.manual_seed(4)
    net = sequence.SequenceNet(40, torch.randn(40, 8), MODEL.model_copy(update={"adapter": adapter})).eval()
    room = Room()
    with torch.no_grad():
        want, got = net.text_part(), text_part_made(net, room)
        grown = room.extended(got[0], torch.zeros(1, MODEL.dim))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[1].shape == (40,) and grown.data_ptr() == got[0].data_ptr()
