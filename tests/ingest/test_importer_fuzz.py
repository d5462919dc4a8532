"""Arbitrary bytes never crash an importer: every problem names file and line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.datasets.files import DataFileError, read_records
from freshrec.datasets.movielens import load_movielens
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.settings import IngestSettings
from freshrec.storage import SQLiteStore

VALIDATOR = Validator(IngestSettings(), clock=lambda: 2_000_000_000.0)
# Byte soup biased towards the separators and tokens that steer the parsers.
chunks = st.sampled_from(
    [b",", b"\n", b"\r\n", b'"', b"{", b"}", b":", b"\t", b"|", b"::", b"\x00", b"\xff", b"user_id", b"item_id",
     b"type", b"rating", b"click", b"4.5", b"1e400", b"NaN", b"[", b"]", b"title"]
)  # fmt: skip
soup = st.lists(st.binary(max_size=8) | chunks, max_size=40).map(b"".join)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(report_errors: list[str], name: str) -> None:
    assert all(e.startswith(f"{name}:") for e in report_errors), report_errors


@FUZZ
@given(
    data=soup,
    suffix=st.sampled_from([".csv", ".jsonl", ".tsv"]),
    header=st.sampled_from([b"", b"user_id,item_id,type,value,timestamp\n"]),
)
def test_event_files(data: bytes, suffix: str, header: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"events{suffix}"
        path.write_bytes(header + data)
        store = SQLiteStore(":memory:")
        try:
            report = import_events(store, read_records(path), VALIDATOR)
        except DataFileError as exc:
            assert str(exc).startswith(f"events{suffix}") or str(path) in str(exc)
            assert store.counts("x").events == 0
            return
        _check(report.errors, path.name)
        assert report.stored + report.skipped + report.duplicates == report.read


@FUZZ
@given(data=soup, suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_item_files(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"items{suffix}"
        path.write_bytes(b"item_id,title\n" + data if suffix == ".csv" else data)
        store = SQLiteStore(":memory:")
        try:
            report = import_items(store, read_records(path), VALIDATOR)
        except DataFileError:
            assert store.counts("x").items == 0
            return
        _check(report.errors, path.name)


@FUZZ
@given(ratings=soup, movies=soup, layout=st.sampled_from(["100k", "1m", "latest"]))
def test_movielens_folders(ratings: bytes, movies: bytes, layout: str) -> None:
    names = {"100k": ("u.data", "u.item"), "1m": ("ratings.dat", "movies.dat"), "latest": ("ratings.csv", "movies.csv")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / names[layout][0]).write_bytes(ratings)
        (root / names[layout][1]).write_bytes(movies)
        data = load_movielens(root)
        store = SQLiteStore(":memory:")
        items = import_items(store, data.items, VALIDATOR)
        events = import_events(store, data.events, VALIDATOR)
        _check(items.errors, names[layout][1])
        _check(events.errors, names[layout][0])
