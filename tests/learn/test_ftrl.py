from __future__ import annotations

import math

import pytest
import torch

from freshrec.learn.ftrl import FTRL


def reference(grads: list[float], alpha: float, beta: float, l1: float, l2: float) -> list[float]:
    """Algorithm 1 of McMahan et al. (2013) for one coordinate, written out."""
    z = n = w = 0.0
    out = []
    for g in grads:
        sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / alpha
        z += g - sigma * w
        n += g * g
        w = 0.0 if abs(z) <= l1 else -(z - math.copysign(l1, z)) / ((beta + math.sqrt(n)) / alpha + l2)
        out.append(w)
    return out


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.0), (0.3, 0.0), (0.0, 1.0), (0.2, 0.5)])
def test_matches_the_closed_form_update(l1: float, l2: float) -> None:
    grads = [0.5, -1.5, 2.0, 0.25, -0.75]
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = FTRL([p], lr=0.4, beta=1.0, l1=l1, l2=l2)
    for g, expected in zip(grads, reference(grads, 0.4, 1.0, l1, l2), strict=True):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert p.item() == pytest.approx(expected, abs=1e-12)


def fit_sparse_logistic(l1: float) -> torch.Tensor:
    """Sparse binary features (as in ad click data); only the first two matter."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2000, 40, generator=gen) < 0.1).float()
    y = (torch.rand(2000, generator=gen) < torch.sigmoid(3 * x[:, 0] - 3 * x[:, 1])).float()
    w = torch.nn.Parameter(torch.zeros(40))
    opt = FTRL([w], lr=0.5, l1=l1)
    for i in range(0, 2000, 10):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(
            x[i : i + 10] @ w, y[i : i + 10], reduction="sum"
        ).backward()
        opt.step()
    return w.detach()


def test_l1_gives_exact_zeros() -> None:
    plain, sparse = fit_sparse_logistic(0.0), fit_sparse_logistic(10.0)
    assert (plain[2:] != 0).all()
    assert (sparse[2:] == 0).float().mean() >= 0.75  # exactly zero, not merely small
    assert sparse[0] > 1.5 and sparse[1] < -1.5  # the real signal survives


def test_rows_without_gradient_are_left_alone() -> None:
    table = torch.nn.Parameter(torch.zeros(3, 2))
    opt = FTRL([table], lr=1.0)
    table.grad = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.5, 0.0]])
    opt.step()
    assert table[1].abs().sum() == 0 and table[0].abs().sum() > 0
    before = opt.state[table]["n"].clone()
    table.grad = torch.zeros(3, 2)
    opt.step()
    assert torch.equal(opt.state[table]["n"], before)


def test_invalid_hyperparameters() -> None:
    with pytest.raises(ValueError, match="invalid FTRL"):
        FTRL([torch.nn.Parameter(torch.zeros(1))], lr=0)


def test_a_sparse_gradient_steps_its_rows_as_the_dense_one_and_leaves_the_others() -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 3, generator=gen)
    dense, sparse = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    optimizers = [FTRL([dense], lr=0.5, l1=0.1, l2=0.2), FTRL([sparse], lr=0.5, l1=0.1, l2=0.2)]
    for _ in range(3):
        grad = torch.zeros(6, 3)
        grad[[1, 4]] = torch.randn(2, 3, generator=gen)
        dense.grad = grad
        sparse.grad = grad.to_sparse(1)  # rows 1 and 4
        for o in optimizers:
            o.step()
    assert torch.equal(sparse[[1, 4]], dense[[1, 4]])
    assert torch.equal(optimizers[1].state[sparse]["z"], optimizers[0].state[dense]["z"])
    # rows without a gradient keep their weights; a dense step recomputes them from their state
    assert torch.equal(sparse[[0, 2, 3, 5]], start[[0, 2, 3, 5]])
