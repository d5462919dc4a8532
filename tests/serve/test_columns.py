"""Columns shared by a catalog's views: every view reads what it was made with, whatever
the views made after it wrote."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.serve import columns
from freshrec.serve.columns import Codes, Column

writes = st.lists(
    st.tuples(
        st.integers(0, 6),  # which column written from (0: the newest; else an older one)
        st.lists(st.tuples(st.integers(0, 40), st.integers()), max_size=4),  # edits (row taken modulo the length)
        st.lists(st.integers(), max_size=5),  # rows added
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(), max_size=5), writes, st.integers(1, 6))
def test_a_column_reads_what_it_was_made_with_whatever_the_columns_written_after_it(
    first: list[int], steps: list[tuple[int, list[tuple[int, int]], list[int]]], most_edits: int
) -> None:
    old = columns.EDITS
    columns.EDITS = most_edits  # rows copied with the edits in, now and then
    try:
        made = [(Column(list(first)), list(first))]
        for back, edits, added in steps:
            column, rows = made[max(0, len(made) - 1 - back)]
            edits = [(row % len(rows), value) for row, value in edits] if rows else []
            expected = list(rows)
            for row, value in edits:
                expected[row] = value
            made.append((column.written(dict(edits), added), [*expected, *added]))
        for column, rows in made:
            assert len(column) == len(rows) and list(column) == rows and column == rows
            assert [column[k] for k in range(-len(rows), len(rows))] == rows + rows
            assert column[1:-1] == rows[1:-1] and column[::2] == rows[::2]
    finally:
        columns.EDITS = old
    with pytest.raises(IndexError):
        made[-1][0][len(made[-1][1])]
    with pytest.raises(IndexError, match="past the column's end"):
        made[-1][0].written({len(made[-1][1]): 0}, [])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text("abc", min_size=1, max_size=3), max_size=4), max_size=10), st.data())
def test_codes_hold_a_views_ids_alone_whatever_the_views_after_it_added(
    batches: list[list[str]], data: st.DataObject
) -> None:
    made = [(Codes({}), [])]
    for batch in batches:
        back = data.draw(st.integers(0, len(made) - 1))
        codes, ids = made[len(made) - 1 - back]
        new = list(dict.fromkeys(i for i in batch if i not in codes))
        made.append((codes.added(new), [*ids, *new]))
    for codes, ids in made:
        expected = {item_id: row for row, item_id in enumerate(ids)}
        assert dict(codes) == expected and len(codes) == len(ids)
        asked = [*ids, "zzz", *made[-1][1]]
        assert codes.rows_of(asked) == [expected.get(i, -1) for i in asked]
        for item_id in {i for batch in batches for i in batch} | {"zzz"}:
            assert (item_id in codes) == (item_id in expected)
            assert codes.get(item_id) == expected.get(item_id)
            if item_id not in expected:
                with pytest.raises(KeyError):
                    codes[item_id]
