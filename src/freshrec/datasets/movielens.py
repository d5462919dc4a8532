"""MovieLens loaders: 100K (``u.data``/``u.item``), 1M (``ratings.dat``/
``movies.dat``) and the ml-latest layout (``ratings.csv``/``movies.csv``,
optional ``tags.csv``).

Ratings become ``rating`` events, sorted by timestamp (stable, so ties keep
file order, as the benchmark protocol requires). A movie's title (which
carries its year) and its genres become the item text. Tags, when present,
are kept in the item's ``attributes`` and deliberately not in its text: they
are written by users over time, and putting them in the text would leak the
future into a replay.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from freshrec.datasets.files import DataFileError, Record

Layout = Literal["ml-100k", "ml-1m", "ml-latest"]

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRE = {"unknown", "(no genres listed)"}


@dataclass(frozen=True, slots=True)
class MovieLens:
    layout: Layout
    items: list[Record]
    events: list[Record]
    """Sorted by timestamp; unparseable lines come first, as error records."""


def detect_layout(root: Path) -> Layout:
    if (root / "u.data").is_file() and (root / "u.item").is_file():
        return "ml-100k"
    if (root / "ratings.dat").is_file() and (root / "movies.dat").is_file():
        return "ml-1m"
    if (root / "ratings.csv").is_file() and (root / "movies.csv").is_file():
        return "ml-latest"
    raise DataFileError(
        f"{root}: not a MovieLens folder; expected u.data + u.item (100K), "
        "ratings.dat + movies.dat (1M) or ratings.csv + movies.csv (latest)"
    )


def load_movielens(root: Path) -> MovieLens:
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: no such directory")
    layout = detect_layout(root)
    if layout == "ml-100k":
        genres = _ml100k_genres(root)
        items = list(_ml100k_items(root / "u.item", genres))
        events = _sorted(_split_lines(root / "u.data", "\t", "latin-1", header=False))
    elif layout == "ml-1m":
        items = list(_ml1m_items(root / "movies.dat"))
        events = _sorted(_split_lines(root / "ratings.dat", "::", "latin-1", header=False))
    else:
        tags = _tags(root / "tags.csv") if (root / "tags.csv").is_file() else {}
        items = list(_latest_items(root / "movies.csv", tags))
        events = _sorted(_split_lines(root / "ratings.csv", ",", "utf-8", header=True))
    return MovieLens(layout, items, events)


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _split_lines(path: Path, sep: str, encoding: str, header: bool) -> Iterator[Record]:
    """Rating lines ``user sep item sep rating sep timestamp``, as raw records."""
    for number, line in _lines(path, encoding):
        if header and number == 1:
            continue
        parts = line.split(sep)
        if len(parts) != 4:
            yield Record(path.name, number, None, f"expected 4 fields separated by {sep!r}, found {len(parts)}")
            continue
        user, item, rating, ts = (p.strip() for p in parts)
        yield Record(
            path.name,
            number,
            {"user_id": user, "item_id": item, "type": "rating", "value": rating, "timestamp": ts},
        )


def _sorted(records: Iterator[Record]) -> list[Record]:
    good, bad, keys = [], [], []
    for record in records:
        if record.data is None:
            bad.append(record)
            continue
        try:
            key = float(record.data["timestamp"])
        except ValueError:
            key = float("inf")  # validation will reject it with a precise message
        good.append(record)
        keys.append(key)
    order = sorted(range(len(good)), key=keys.__getitem__)
    return bad + [good[i] for i in order]


def _ml100k_genres(root: Path) -> tuple[str, ...]:
    path = root / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    names: dict[int, str] = {}
    for _, line in _lines(path, "latin-1"):
        name, _, index = line.rpartition("|")
        if name and index.strip().isdigit():
            names[int(index)] = name
    return tuple(names[i] for i in sorted(names)) if names else ML100K_GENRES


def _ml100k_items(path: Path, genres: tuple[str, ...]) -> Iterator[Record]:
    for number, line in _lines(path, "latin-1"):
        parts = line.split("|")
        if len(parts) != 5 + len(genres):
            yield Record(
                path.name, number, None, f"expected {5 + len(genres)} '|'-separated fields, found {len(parts)}"
            )
            continue
        flags = parts[5:]
        categories = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1" and g not in _NO_GENRE]
        attributes = {k: v for k, v in (("release_date", parts[2]), ("imdb_url", parts[4])) if v}
        yield Record(
            path.name,
            number,
            {"item_id": parts[0].strip(), "title": parts[1], "categories": categories, "attributes": attributes},
        )


def _ml1m_items(path: Path) -> Iterator[Record]:
    for number, line in _lines(path, "latin-1"):
        parts = line.split("::")
        if len(parts) != 3:
            yield Record(path.name, number, None, f"expected 3 '::'-separated fields, found {len(parts)}")
            continue
        yield Record(path.name, number, _movie(parts[0], parts[1], parts[2], []))


def _latest_items(path: Path, tags: dict[str, list[str]]) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        for row in reader:
            number = reader.line_num
            if number == 1 and row and row[0].strip().lower() == "movieid":
                continue
            if len(row) != 3:
                yield Record(path.name, number, None, f"expected 3 CSV fields (movieId,title,genres), found {len(row)}")
                continue
            yield Record(path.name, number, _movie(row[0], row[1], row[2], tags.get(row[0].strip(), [])))


def _movie(item_id: str, title: str, genres: str, tags: list[str]) -> dict[str, object]:
    categories = [g for g in genres.split("|") if g.strip() and g.strip() not in _NO_GENRE]
    data: dict[str, object] = {"item_id": item_id.strip(), "title": title, "categories": categories}
    if tags:
        data["attributes"] = {"tags": tags}
    return data


def _tags(path: Path, top: int = 20) -> dict[str, list[str]]:
    """The most frequent tags of each movie (``userId,movieId,tag,timestamp``)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.reader(fh):
            if len(row) == 4 and row[0] != "userId" and row[2].strip():
                counts[row[1].strip()][row[2].strip().lower()] += 1
    return {movie: [t for t, _ in c.most_common(top)] for movie, c in counts.items()}
