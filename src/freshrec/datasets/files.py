"""Generic CSV, JSONL and Parquet readers (optionally gzip-compressed text).

CSV: a header row names the fields; empty cells count as absent; lists
(``categories``) are ``|``-separated and objects (``context``, ``attributes``)
are JSON. JSONL: one JSON object per line. Parquet: one row per record, with
native list and timestamp types allowed. Undecodable bytes are kept as
surrogate escapes so that validation reports the line instead of the reader
crashing on it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Format = Literal["csv", "jsonl", "parquet"]
_SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DataFileError(ValueError):
    """A file that cannot be read at all (missing, unknown format, corrupt)."""


@dataclass(frozen=True, slots=True)
class Record:
    source: str
    line: int
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def detect_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise DataFileError(
            f"{path}: cannot tell the format from the name; use one of {known} (optionally .gz) or --format"
        )
    return fmt


def read_records(path: Path, fmt: Format | None = None) -> Iterator[Record]:
    """Yield every record of a data file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        yield from _parquet(path)
        return
    with _open_text(path) as fh:
        if fmt == "csv":
            delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
            yield from _csv(fh, path.name, delimiter)
        else:
            yield from _jsonl(fh, path.name)


def _open_text(path: Path) -> io.TextIOBase:
    raw: Any = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv(fh: Any, name: str, delimiter: str) -> Iterator[Record]:
    reader = csv.reader(fh, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataFileError(f"{name}:1: unreadable header: {exc}") from exc
    fields = [h.strip().lower() for h in header]
    if len(set(fields)) != len(fields) or not all(fields):
        raise DataFileError(f"{name}:1: the header has empty or repeated column names: {header}")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(name, reader.line_num, None, f"malformed CSV: {exc}")
            continue
        if not row or row == [""]:
            continue
        if len(row) != len(fields):
            yield Record(name, reader.line_num, None, f"has {len(row)} fields; the header has {len(fields)}")
            continue
        yield Record(name, reader.line_num, {k: v for k, v in zip(fields, row, strict=True) if v != ""})


def _jsonl(fh: Any, name: str) -> Iterator[Record]:
    for number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Record(name, number, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            yield Record(name, number, None, "invalid JSON: nested too deeply")
            continue
        if not isinstance(data, dict):
            yield Record(name, number, None, f"expected a JSON object, got {type(data).__name__}")
            continue
        yield Record(name, number, data)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path.name}: not a readable Parquet file: {exc}") from exc
    row = 0
    batches = handle.iter_batches(batch_size=8192)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise DataFileError(f"{path.name}: unreadable after row {row}: {exc}") from exc
        for data in batch.to_pylist():
            row += 1
            yield Record(path.name, row, {k.strip().lower(): v for k, v in data.items() if v is not None})
