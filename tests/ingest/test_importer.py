from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freshrec.datasets.files import DataFileError, read_records
from freshrec.ingest.importer import ChunkSizer, ImportAborted, derive_event_id, import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.storage import SQLiteStore, Store
from tests.conftest import T0, make_event, write


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return SQLiteStore(tmp_path / "s.db")


EVENTS_CSV = f"""user_id,item_id,type,value,timestamp,context
u1,i1,click,,{T0},
u1,i2,rating,4.5,{T0 + 1},"{{""page"": ""home""}}"
u2,i1,rating,9,{T0 + 2},
u2,i3,view,,{T0 + 3},
"""


def test_csv_import_skips_bad_rows_and_names_file_and_line(store: Store, tmp_path: Path, validator: Validator) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV)
    report = import_events(store, read_records(path), validator)
    assert (report.read, report.stored, report.skipped) == (4, 3, 1)
    assert report.errors == ["events.csv:4: value: 9.0 is outside the rating scale [0.5, 5.0]"]
    stored = store.read_events()
    assert [e.item_id for e in stored] == ["i1", "i2", "i3"]
    assert stored[1].context == {"page": "home"} and stored[1].value == 4.5


def test_strict_import_aborts_and_stores_nothing(store: Store, tmp_path: Path, validator: Validator) -> None:
    store.append_events([make_event(item="before")])
    path = write(tmp_path / "events.csv", EVENTS_CSV)
    with pytest.raises(ImportAborted, match=r"events\.csv:4: value"):
        import_events(store, read_records(path), validator, strict=True, batch=1)
    assert [e.item_id for e in store.read_events()] == ["before"]


def test_reimport_adds_nothing_thanks_to_derived_ids(store: Store, tmp_path: Path, validator: Validator) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV)
    import_events(store, read_records(path), validator)
    again = import_events(store, read_records(path), validator)
    assert (again.stored, again.duplicates) == (0, 3)
    assert store.counts("x").events == 3


def test_derived_ids_depend_on_content() -> None:
    a = make_event(item="a")
    assert derive_event_id(a) == derive_event_id(make_event(item="a"))
    assert derive_event_id(a) != derive_event_id(make_event(item="a", t=T0 + 1))


def test_jsonl_gzip_and_malformed_lines(store: Store, tmp_path: Path, validator: Validator) -> None:
    path = tmp_path / "events.jsonl.gz"
    lines = [
        json.dumps({"user_id": "u", "item_id": "i", "type": "click", "timestamp": T0}),
        "{not json",
        "[1, 2]",
        "",
        json.dumps({"user_id": "u", "item_id": "j", "type": "view", "timestamp": T0}),
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    report = import_events(store, read_records(path), validator)
    assert report.stored == 2
    assert report.errors[0].startswith("events.jsonl.gz:2: invalid JSON")
    assert report.errors[1] == "events.jsonl.gz:3: expected a JSON object, got list"


def test_parquet_items_with_native_lists(store: Store, tmp_path: Path, validator: Validator) -> None:
    table = pa.table(
        {"item_id": ["a", "b", ""], "title": ["Alpha", "Beta", "Nameless"], "categories": [["x", "y"], [], ["z"]]}
    )
    pq.write_table(table, tmp_path / "items.parquet")
    report = import_items(store, read_records(tmp_path / "items.parquet"), validator)
    assert (report.stored, report.skipped) == (2, 1)
    assert report.errors == ["items.parquet:3: item_id: must not be empty"]
    item = store.get_item("a")
    assert item is not None and item.categories == ("x", "y")
    assert import_items(store, read_records(tmp_path / "items.parquet"), validator).duplicates == 2


def test_csv_with_wrong_field_count_and_invalid_utf8(store: Store, tmp_path: Path, validator: Validator) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"item_id,title\na,Alpha\nb,Beta,extra\nc\xff,Gamma\n")
    report = import_items(store, read_records(path), validator)
    assert report.stored == 1
    assert report.errors[0] == "items.csv:3: has 3 fields; the header has 2"
    assert report.errors[1].startswith("items.csv:4: item_id: contains the control or invalid character")


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no such file"):
        list(read_records(tmp_path / "missing.csv"))
    with pytest.raises(DataFileError, match="cannot tell the format"):
        list(read_records(write(tmp_path / "data.txt", "x")))
    with pytest.raises(DataFileError, match="not a readable Parquet file"):
        list(read_records(write(tmp_path / "bad.parquet", "not parquet")))


def test_chunks_follow_the_stores_speed_towards_the_lock_budget() -> None:
    sizer = ChunkSizer(10_000, budget_s=0.2, first=1_000)
    assert sizer() == 1_000
    sizer.took(1_000, 0.01)  # fast: grows, but at most twice per chunk
    assert sizer() == 2_000
    for _ in range(10):
        sizer.took(sizer(), 0.001)
    assert sizer() == 10_000  # never above the most
    sizer.took(10_000, 1.0)  # the store slowed down: a chunk that fits the budget
    assert sizer() == 2_000
    sizer.took(500, 10.0)  # a short last chunk says little
    assert sizer() == 2_000
    sizer.took(2_000, 1_000.0)
    assert sizer() == 1


def test_an_import_commits_in_chunks_it_sizes(store: Store, tmp_path: Path, validator: Validator) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(
        "".join(
            json.dumps({"user_id": f"u{n}", "item_id": "i", "type": "view", "timestamp": T0 + n}) + "\n"
            for n in range(2_500)
        )
    )
    sizes: list[int] = []
    report = import_events(store, read_records(path), validator, batch=700, committed=lambda r: sizes.append(r.stored))
    assert report.stored == 2_500 and store.counts("hashing").events == 2_500
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= 700 and sum(steps) == 2_500
