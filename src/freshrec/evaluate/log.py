"""A time-ordered interaction log and its catalog, as integer-coded arrays.

The replay reads logs from files (a MovieLens folder, or an events file plus
an items file) through the same validation as every other entry point.
Events are sorted by timestamp with a stable sort, so ties keep file order,
as the protocol requires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from freshrec.datasets.files import DataFileError, Record, read_records
from freshrec.datasets.movielens import load_movielens
from freshrec.domain import Event, Item, item_text
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.ingest.validate import InvalidRecord, Validator
from freshrec.settings import IngestSettings

T = TypeVar("T")


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    """Item text as :func:`freshrec.domain.item_text` builds it."""
    categories: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class EventLog:
    name: str
    catalog: Catalog
    user_ids: list[str]
    user: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    type: npt.NDArray[np.int8]
    value: npt.NDArray[np.float32]
    time: npt.NDArray[np.float64]
    problems: dict[str, int] = field(default_factory=dict)
    """Records left out while loading, by reason."""

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def head(self, n: int) -> EventLog:
        """The first ``n`` events (same catalog and user codes)."""
        return EventLog(
            f"{self.name}[:{n}]", self.catalog, self.user_ids, self.user[:n], self.item[:n],
            self.type[:n], self.value[:n], self.time[:n], dict(self.problems),
        )  # fmt: skip


def build_log(name: str, items: Iterable[Item], events: Iterable[Event]) -> tuple[EventLog, int]:
    """Code and sort validated items and events; returns the log and the number
    of events left out because their item is not in the catalog."""
    catalog_items = list({item.item_id: item for item in items}.values())
    catalog = Catalog(
        item_ids=[i.item_id for i in catalog_items],
        titles=[i.title for i in catalog_items],
        texts=[item_text(i.title, i.description, i.categories) for i in catalog_items],
        categories=[i.categories for i in catalog_items],
    )
    item_code = {item_id: n for n, item_id in enumerate(catalog.item_ids)}
    user_code: dict[str, int] = {}
    rows: list[tuple[int, int, int, float, float]] = []
    unknown = 0
    for e in events:
        code = item_code.get(e.item_id)
        if code is None:
            unknown += 1
            continue
        user = user_code.setdefault(e.user_id, len(user_code))
        rows.append((user, code, TYPE_CODES[e.type], np.nan if e.value is None else e.value, e.timestamp))
    columns = np.array(rows, dtype=np.float64).reshape(-1, 5)
    order = np.argsort(columns[:, 4], kind="stable")
    columns = columns[order]
    log = EventLog(
        name=name,
        catalog=catalog,
        user_ids=list(user_code),
        user=columns[:, 0].astype(np.int32),
        item=columns[:, 1].astype(np.int32),
        type=columns[:, 2].astype(np.int8),
        value=columns[:, 3].astype(np.float32),
        time=columns[:, 4].copy(),
    )
    return log, unknown


def load_log(path: Path, items: Path | None = None, limits: IngestSettings | None = None) -> EventLog:
    """Load a MovieLens folder, or an events file together with an items file."""
    validator = Validator(limits or IngestSettings())
    problems: dict[str, int] = {}

    def valid(records: Iterable[Record], kind: str, check: Callable[[dict[str, Any]], T]) -> list[T]:
        out = []
        for record in records:
            try:
                if record.data is None:
                    raise InvalidRecord([])
                out.append(check(record.data))
            except InvalidRecord:
                problems[f"invalid {kind}"] = problems.get(f"invalid {kind}", 0) + 1
        return out

    path = Path(path)
    item_records: Iterable[Record]
    event_records: Iterable[Record]
    if path.is_dir():
        data = load_movielens(path)
        name = f"movielens-{data.layout.removeprefix('ml-')}" if data.layout != "ml-latest" else path.name
        item_records, event_records = data.items, data.events
    else:
        if items is None:
            raise DataFileError(f"{path}: an events file needs an items file too (--items)")
        name = path.stem
        item_records, event_records = read_records(items), read_records(path)
    catalog = valid(item_records, "items", validator.item)
    events = valid(event_records, "events", validator.event)
    log, unknown = build_log(name, catalog, events)
    if unknown:
        problems["events for items not in the catalog"] = unknown
    if not len(log):
        raise DataFileError(f"{path}: no valid events to replay")
    return replace(log, problems=problems)
