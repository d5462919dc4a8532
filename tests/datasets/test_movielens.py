"""The three MovieLens layouts, on tiny hand-written fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.datasets.files import DataFileError
from freshrec.datasets.movielens import load_movielens
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.storage import SQLiteStore

FLAGS = "|".join(["0"] * 19)


def ml100k(root: Path) -> Path:
    root.mkdir()
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    (root / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
            "2|Café Society (1995)|01-Jan-1995||http://y|" + FLAGS + "\n"
        ).encode("latin-1")
    )
    (root / "u.data").write_text("1\t2\t4\t881250950\n1\t1\t5\t881250949\n2\t1\t7\t881250960\n3\t1\n")
    return root


def test_ml100k_layout(tmp_path: Path, validator: Validator) -> None:
    data = load_movielens(ml100k(tmp_path / "ml-100k"))
    assert data.layout == "ml-100k"
    items = [r.data for r in data.items]
    assert items[0] == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "categories": ["Animation", "Comedy"],
        "attributes": {"release_date": "01-Jan-1995", "imdb_url": "http://x"},
    }
    assert items[1]["title"] == "Café Society (1995)"  # Latin-1 decoded
    assert data.events[0].error == "expected 4 fields separated by '\\t', found 2" and data.events[0].line == 4
    assert [r.data["item_id"] for r in data.events[1:]] == ["1", "2", "1"]  # sorted by timestamp

    store = SQLiteStore(":memory:")
    with store.transaction():
        assert import_items(store, data.items, validator).stored == 2
        report = import_events(store, data.events, validator)
    assert (report.stored, report.skipped) == (2, 2)
    assert report.errors[1] == "u.data:3: value: 7.0 is outside the rating scale [0.5, 5.0]"
    assert [e.value for e in store.read_events()] == [5.0, 4.0]


def test_ml1m_layout(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Broken\n".encode("latin-1"))
    (root / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978300700\n")
    data = load_movielens(root)
    assert data.layout == "ml-1m"
    assert data.items[0].data == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "categories": ["Animation", "Children's", "Comedy"],
    }
    assert data.items[1].error and data.items[1].line == 2
    assert [r.data["value"] for r in data.events] == ["3", "5"]


def test_ml_latest_layout_with_tags(tmp_path: Path) -> None:
    root = tmp_path / "ml-latest-small"
    root.mkdir()
    (root / "movies.csv").write_text(
        'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Nothing (2000),(no genres listed)\n"
    )
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n")
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,politics,1\n2,1,Politics,2\n2,1,funny,3\n")
    data = load_movielens(root)
    assert data.layout == "ml-latest"
    first = data.items[0].data
    assert first["title"] == "American President, The (1995)" and first["categories"] == ["Comedy", "Drama", "Romance"]
    assert first["attributes"] == {"tags": ["politics", "funny"]}
    assert data.items[1].data["categories"] == []
    assert [r.data["item_id"] for r in data.events] == ["2", "1"]


def test_not_a_movielens_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not a MovieLens folder"):
        load_movielens(tmp_path)
    with pytest.raises(DataFileError, match="no such directory"):
        load_movielens(tmp_path / "missing")
