"""The trainer's steps on large catalogs: sparse table gradients, and the good state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.evaluate.log import EventLog
from freshrec.evaluate.replay import Sequences
from freshrec.learn.optim import clip_gradients, takes_sparse
from freshrec.model.base import Interactions
from freshrec.model.freshrec import FreshRec
from freshrec.settings import ModelSettings, OptimizerSettings
from tests.evaluate.helpers import tiny_log
from tests.learn.test_freshrec import MODEL
from tests.learn.test_freshrec import model as freshrec_model


@pytest.fixture(scope="module")
def log() -> EventLog:
    rng = np.random.default_rng(2)
    rows = [(f"u{rng.integers(15)}", f"i{rng.integers(30)}", float(t)) for t in range(400)]
    return tiny_log(rows, items=[f"i{n}" for n in range(40)])  # i30..i39: never touched


def model(log: EventLog, settings: ModelSettings = MODEL, **learn: object) -> FreshRec:
    """The model of ``test_freshrec``'s tests, with one warm-start epoch unless told."""
    return freshrec_model(log, settings, **{"epochs": 1, **learn})


def batch(log: EventLog, start: int, size: int = 32) -> Interactions:
    return Sequences(log).batch(np.arange(start, start + size) % 300, 6)


def past_a_good_state(m: FreshRec, log: EventLog, size: int, steps: int) -> int:
    """Step ``m``'s trainer on batches of ``size`` up to a fresh good state, then ``steps``
    more; returns where the next batch starts."""
    trainer, start = m.trainer, 0
    while trainer.health.steps % 50 != 1:
        trainer.step(batch(log, start, size), dropout=False)
        start += size
    for _ in range(steps):
        trainer.step(batch(log, start, size), dropout=False)
        start += size
    return start


@pytest.mark.parametrize("optimizer", ["adagrad", "ftrl", "sgd", "adam"])
@pytest.mark.parametrize("users", [False, True])
def test_a_sampled_step_with_sparse_table_gradients_equals_the_dense_step(
    log: EventLog, optimizer: str, users: bool
) -> None:
    """With every item sampled, a large catalog's step (sparse gradients for the ID and bias
    tables, stepped row by row, or densified for Adam) lands where the full softmax's does."""
    settings = MODEL.model_copy(update={"use_user_ids": users})
    tables = OptimizerSettings(name=optimizer, lr=0.05)  # type: ignore[arg-type]
    dense = model(log, settings, embeddings=tables)
    sparse = model(log, settings, embeddings=tables, full_softmax_max=1, negatives=5_000)
    dense.fit(Sequences(log).batch(np.arange(200), 6))
    sparse.trainer.restore(dense.trainer.snapshot())
    # one online step (it names every item: 5,000 draws of 40). One: Adagrad's sparse update
    # rounds differently, and Adam on a bias whose gradient is a sum of terms that cancel
    # magnifies that into visible differences a few steps later.
    for m in (dense, sparse):
        assert m.trainer.step(batch(log, 200), dropout=False) is not None
    grad = sparse.net.item_id.weight.grad
    assert grad is not None and grad.is_sparse == (optimizer != "adam")
    for name, value in dense.net.state_dict().items():
        torch.testing.assert_close(sparse.net.state_dict()[name], value, msg=name)


def test_a_sampled_step_writes_only_the_rows_it_names_and_their_optimizer_state(log: EventLog) -> None:
    m = model(log, full_softmax_max=1, negatives=3)
    m.fit(Sequences(log).batch(np.arange(200), 6))
    net, trainer = m.net, m.trainer
    weights, state = net.item_id.weight.detach().clone(), trainer.optimizers[1].state[net.item_id.weight]["sum"].clone()
    b = batch(log, 200)
    assert trainer._gradients(b, every_position=False, dropout=False) is not None
    grad = net.item_id.weight.grad
    assert grad is not None and grad.is_sparse
    named = set(grad.coalesce().indices()[0].tolist())
    assert set(b.item.tolist()) <= named and len(named) < net.item_id.num_embeddings
    trainer.advance(1.0)
    after = trainer.optimizers[1].state[net.item_id.weight]["sum"]
    others = torch.tensor(sorted(set(range(net.item_id.num_embeddings)) - named))
    assert torch.equal(net.item_id.weight[others], weights[others])
    assert torch.equal(after[others], state[others])
    assert not torch.equal(after[b.item[:1]], state[b.item[:1]])


def test_clipping_takes_sparse_gradients_and_clips_as_if_they_were_dense() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(10, 4, generator=gen))
    dense = torch.nn.Parameter(torch.randn(3, generator=gen))
    lookups = torch.tensor([1, 3, 3, 7])  # row 3 twice: its gradients add up
    (torch.nn.functional.embedding(lookups, table, sparse=True) ** 2).sum().backward()
    (dense**2).sum().backward()
    assert table.grad is not None and table.grad.is_sparse
    expected = [table.grad.to_dense().clone(), dense.grad.clone()]  # type: ignore[union-attr]
    reference = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
    for p, g in zip(reference, expected, strict=True):
        p.grad = g
    norm = clip_gradients([table, dense], 1.0)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(reference, 1.0))
    torch.testing.assert_close(table.grad.to_dense(), reference[0].grad)
    torch.testing.assert_close(dense.grad, reference[1].grad)


def test_optimizers_that_would_move_rows_without_gradient_get_dense_gradients() -> None:
    def build(name: str, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        from freshrec.learn.optim import build_optimizer

        settings = OptimizerSettings(name=name, lr=0.1, weight_decay=weight_decay)  # type: ignore[arg-type]
        return build_optimizer([torch.nn.Parameter(torch.zeros(2))], settings)

    assert takes_sparse(build("adagrad")) and takes_sparse(build("ftrl")) and takes_sparse(build("sgd"))
    assert takes_sparse(build("ftrl", 0.1))  # FTRL's L2 is part of its own formula
    assert not takes_sparse(build("adagrad", 0.1)) and not takes_sparse(build("sgd", 0.1))
    assert not takes_sparse(build("adam")) and not takes_sparse(build("adamw"))


def test_a_second_spike_restores_the_same_good_state_as_the_first(log: EventLog) -> None:
    """The good state is restored as a copy: the batches learned again after a spike must
    not change it (the optimizers took its tensors as their own, and a second spike then
    restored the accumulators of those batches as well)."""
    m = model(log, spike_factor=1.5, epochs=4, batch_size=32, patience=4)
    m.fit(Sequences(log).batch(np.arange(300), 6))
    trainer = m.trainer
    past_a_good_state(m, log, 16, 3)
    states = []
    for _ in range(2):
        with torch.no_grad():  # wreck the model: every target now scores lowest
            m.net.item_bias.weight.fill_(-50.0)
        assert trainer.step(batch(log, 0, 64)) is None
        states.append(trainer.snapshot())
    assert trainer.health.reverted_spikes == 2
    first, second = states
    for name, value in first["net"].items():
        assert torch.equal(second["net"][name], value), name
    for a, b in zip(first["optimizers"], second["optimizers"], strict=True):
        for key, value in a["state"].items():
            for field, tensor in value.items():
                assert torch.equal(b["state"][key][field], tensor), (key, field)


def test_a_reverted_spike_names_the_rows_it_put_back(log: EventLog) -> None:
    """Serving takes a delta after a revert, not the whole model: every row that differs from
    what the last snapshot took is among the changed rows (those learned since the good
    state, before and after that snapshot), and the rows nobody touched are not."""
    from freshrec.model.deltas import ROW_STATE

    m = model(log, spike_factor=1.5, epochs=4, batch_size=32, patience=4, full_softmax_max=1, negatives=2)
    m.fit(Sequences(log).batch(np.arange(300), 6))
    trainer = m.trainer
    start = past_a_good_state(m, log, 4, 2)  # rows changed since the good state, before the snapshot
    with torch.no_grad():  # and a row the model writes itself (as a new item's seed)
        m.net.item_id.weight[33] = 1.0
    trainer.changed.add(torch.tensor([33]))
    trainer.changed.take()
    taken = {name: value.clone() for name, value in m.net.state_dict().items() if name in ROW_STATE}
    trainer.step(batch(log, start, 4), dropout=False)  # and after it
    with torch.no_grad():  # wreck the model outside any step: the revert puts every row back
        m.net.item_id.weight.mul_(-50.0)
    assert trainer.step(batch(log, 0, 64)) is None and trainer.health.reverted_spikes == 1
    rows = trainer.changed.take()
    assert rows is not None and 0 < len(rows) < m.net.item_id.num_embeddings
    for name, value in m.net.state_dict().items():
        if name in ROW_STATE:
            differs = torch.nonzero((value != taken[name]).reshape(len(value), -1).any(1)).squeeze(1)
            assert set(differs.tolist()) <= set(rows.tolist()), name
    assert 33 in rows and len(set(range(30, 40)) - set(rows.tolist())) > 0  # items no event names, not sampled
