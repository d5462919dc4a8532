"""Rows of large tables read and written by their numbers (freshrec.model.rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from freshrec.model.rows import put, take


@given(st.data())
def test_take_and_put_do_what_indexing_does(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30))
    width = data.draw(st.sampled_from([(), (1,), (5,)]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bool, torch.int64]))
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1)))), dtype=torch.int64)
    table = (torch.arange(n * int(np.prod(width))).reshape(n, *width) % 7).to(dtype)
    values = (torch.arange(len(rows) * int(np.prod(width))).reshape(len(rows), *width) % 3).to(dtype)
    assert torch.equal(take(table, rows), table[rows])
    expected = table.clone()
    expected[rows] = values
    put(table, rows, values)
    assert torch.equal(table, expected)


def test_put_refuses_rows_of_another_shape_or_type() -> None:
    table = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="cannot put"):
        put(table, torch.tensor([0, 2]), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot put"):
        put(table, torch.tensor([0, 2]), torch.ones(3, 3))
    assert not table.any()


def test_a_parameter_is_read_and_written_without_autograd() -> None:
    weight = torch.nn.Parameter(torch.zeros(5, 2))
    put(weight, torch.tensor([1, 3]), torch.ones(2, 2))
    assert weight.requires_grad and weight.sum().item() == 4.0
    assert not take(weight, torch.tensor([1])).requires_grad
