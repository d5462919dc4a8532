"""Rows of large tables read and written by their numbers (freshrec.model.rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from freshrec.model.rows import Room, put, spare_rows, take


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


def plain(table: torch.Tensor | np.ndarray) -> np.ndarray:
    return table.numpy() if isinstance(table, torch.Tensor) else table


@given(st.lists(st.tuples(st.integers(0, 1_000), st.integers(0, 40)), min_size=1, max_size=25), st.booleans())
def test_a_room_extends_any_table_it_handed_out_and_never_changes_one(
    steps: list[tuple[int, int]], numpy: bool
) -> None:
    """Tables extended one from another, in any order (the last, or an earlier one again):
    each holds its rows followed by the added ones, and no later extension changes a table
    handed out before. A table grows in place exactly where it is the longest handed out of
    its block and the block has the rows: else into a new block with its spare rows."""
    room, counter = Room(), iter(range(1_000_000))

    def rows(k: int) -> torch.Tensor | np.ndarray:
        made = torch.tensor([[next(counter), 0.5] for _ in range(k)], dtype=torch.float64).reshape(k, 2)
        return made.numpy() if numpy else made

    first = rows(3)
    # each table handed out, its rows then, and its block's size (0: not the room's)
    tables: list[tuple[torch.Tensor | np.ndarray, np.ndarray, int]] = [(first, plain(first).copy(), 0)]
    for pick, k in steps:
        table, content, size = tables[pick % len(tables)]
        longest = all(len(t) <= len(table) for t, _, _ in tables if np.shares_memory(plain(t), plain(table)))
        more = rows(k)
        grown = room.extended(table, more)
        assert type(grown) is type(table) and len(grown) == len(table) + k
        np.testing.assert_array_equal(plain(grown), np.concatenate([content, plain(more)]))
        in_place = np.shares_memory(plain(grown), plain(table))
        assert in_place == (size > 0 and longest and len(grown) <= size)
        tables.append((grown, plain(grown).copy(), size if in_place else len(grown) + spare_rows(len(grown))))
        for handed, was, _ in tables:
            np.testing.assert_array_equal(plain(handed), was)


def test_a_room_forgets_the_blocks_of_tables_not_kept_and_refuses_other_rows() -> None:
    room = Room()
    table = room.extended(torch.zeros(4, 3), torch.ones(1, 3))
    assert room.extended(table, torch.ones(2, 3)).data_ptr() == table.data_ptr()  # spare rows
    grown = room.extended(torch.zeros(4, 3), torch.ones(1, 3))
    room.keep([])
    assert room.extended(grown, torch.ones(1, 3)).data_ptr() != grown.data_ptr()  # forgotten: a copy
    with pytest.raises(ValueError, match="cannot add rows"):
        room.extended(table, torch.ones(1, 2))
    with pytest.raises(ValueError, match="cannot add rows"):
        room.extended(table, torch.ones(1, 3, dtype=torch.float64))
