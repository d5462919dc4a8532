"""Differential privacy for online updates: per-example clipping, Gaussian noise, accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.evaluate.log import EventLog
from freshrec.evaluate.replay import Sequences
from freshrec.learn.privacy import epsilon
from freshrec.learn.recommender import FreshRec
from freshrec.model.histories import tensors
from freshrec.settings import PrivacySettings
from tests.learn.test_freshrec import LEARN, log, model

__all__ = ["log"]  # the fixture, shared with the model's tests


def private(log: EventLog, **privacy: object) -> FreshRec:
    settings = PrivacySettings(enabled=True, **privacy)  # type: ignore[arg-type]
    m = model(log, privacy=settings)
    m.fit(Sequences(log).batch(np.arange(300), 6))
    return m


def test_the_gradient_is_the_mean_of_clipped_per_example_gradients(log: EventLog) -> None:
    m = private(log, noise_multiplier=0.0, max_grad_norm=0.05, chunk=7)  # chunks that do not divide the batch
    assert m.private is not None
    batch = Sequences(log).batch(np.arange(300, 340), 6)
    got, _ = m.private.gradient(batch)

    # the same by hand: one example at a time through ordinary autograd
    net = m.net
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    expected = {n: torch.zeros_like(p) for n, p in params}
    norms = []
    for row in range(len(batch)):
        net.zero_grad(set_to_none=True)
        m.private.loss(
            {k: v[row] for k, v in dict(tensors(batch.take(np.arange(len(batch))))).items()},
            torch.tensor(int(batch.item[row])),
            torch.from_numpy(m.trainer.weights(batch))[row],
        ).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for _, p in params if p.grad is not None))
        norms.append(float(norm))
        for n, p in params:
            if p.grad is not None:
                expected[n] += p.grad * min(1.0, 0.05 / (float(norm) + 1e-6))
    assert min(norms) > 0.05, "the bound must bite for this test to mean anything"
    for n, _ in params:
        torch.testing.assert_close(got[n], expected[n] / LEARN.batch_size, rtol=1e-4, atol=1e-7)


def test_noise_has_the_configured_scale(log: EventLog) -> None:
    batch = Sequences(log).batch(np.arange(300, 340), 6)
    quiet = private(log, noise_multiplier=0.0, max_grad_norm=0.5)
    loud = private(log, noise_multiplier=2.0, max_grad_norm=0.5)
    assert quiet.private is not None and loud.private is not None
    clean, _ = quiet.private.gradient(batch)
    noisy, _ = loud.private.gradient(batch)
    noise = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean])
    expected = 2.0 * 0.5 / LEARN.batch_size
    assert noise.numel() > 3_000
    assert abs(float(noise.std()) / expected - 1) < 0.05 and abs(float(noise.mean())) < expected / 10


def test_online_learning_in_private_mode_skips_replay_seeding_and_activation(log: EventLog) -> None:
    m = private(log)
    seqs = Sequences(log)
    buffered, active = m.buffer.size, m.net.active.clone()
    before = {n: p.detach().clone() for n, p in m.net.named_parameters()}
    steps = m.trainer.health.steps
    m.learn(seqs.batch(np.arange(300, 400), 6))
    assert m.trainer.health.steps == steps + 1 and m.buffer.size == buffered
    assert torch.equal(m.net.active, active)
    assert any(not torch.equal(p, before[n]) for n, p in m.net.named_parameters())
    report = m.params()["privacy"]
    assert report["epsilon_example"] == pytest.approx(epsilon(PrivacySettings(), 6)["epsilon_example"])


def test_accounting() -> None:
    base = epsilon(PrivacySettings(noise_multiplier=1.0), history_length=20)
    assert 4.0 < base["epsilon_example"] < 5.5  # one Gaussian mechanism, sigma 1, delta 1e-5
    assert base["epsilon_event"] > 10 * base["epsilon_example"]  # an event sits in 2L + 1 examples
    quieter = epsilon(PrivacySettings(noise_multiplier=4.0), history_length=20)
    assert quieter["epsilon_example"] < base["epsilon_example"] / 3
    assert epsilon(PrivacySettings(noise_multiplier=0.0), 20)["epsilon_example"] == float("inf")
