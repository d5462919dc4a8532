"""Rows as every SQL backend stores them: one encoding of events and items.

Vectors are little-endian float32 bytes, categories and attributes JSON text,
so that a database written by one backend reads the same through another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.domain import Event, EventType, Item, ItemId, item_text, text_hash
from freshrec.storage.base import Erasure, UpsertResult

EVENT_COLUMNS = "seq, event_id, user_id, item_id, type, value, ts, context"
ITEM_COLUMNS = "item_id, title, description, categories, attributes, vector, created_at, updated_at"

TYPES = {t.value: t for t in EventType}  # a dict lookup is several times cheaper than EventType(value)


def event_row(e: Event, now: float) -> tuple[Any, ...]:
    """The stored columns of an event after its offset: event_id, user_id, item_id, type,
    value, ts, context, ingested_at."""
    return (e.event_id, e.user_id, e.item_id, e.type.value, e.value, e.timestamp, context_text(e), now)


def context_text(event: Event) -> str | None:
    return json.dumps(event.context, separators=(",", ":"), ensure_ascii=False) if event.context else None


def erasures_of(rows: list[Any]) -> list[Erasure]:
    """The pending erasures from rows of user id, offset and time asked."""
    return [Erasure(r[0], int(r[1]), float(r[2])) for r in rows]


def event_of(row: tuple[Any, ...]) -> Event:
    """An event from a row of :data:`EVENT_COLUMNS`."""
    seq, event_id, user_id, item_id, type_, value, ts, context = row
    return Event(user_id, item_id, TYPES[type_], ts, value, event_id, json.loads(context) if context else None, seq)


def item_row(item: Item) -> dict[str, Any]:
    """The stored columns of an item, with the hashes that detect changes."""
    categories = json.dumps(list(item.categories), ensure_ascii=False)
    attributes = json.dumps(item.attributes, sort_keys=True, ensure_ascii=False)
    vector = np.asarray(item.vector, dtype="<f4").tobytes() if item.vector is not None else None
    thash = text_hash(item_text(item.title, item.description, item.categories))
    content = "\x1f".join((thash, categories, attributes, vector.hex() if vector else ""))
    return {
        "item_id": item.item_id,
        "title": item.title,
        "description": item.description,
        "categories": categories,
        "attributes": attributes,
        "vector": vector,
        "text_hash": thash,
        "content_hash": text_hash(item.title + "\x1f" + item.description + "\x1f" + content),
    }


def item_of(row: tuple[Any, ...]) -> Item:
    """An item from a row of :data:`ITEM_COLUMNS`."""
    item_id, title, description, categories, attributes, vector, created, updated = row
    return Item(
        item_id=item_id,
        title=title,
        description=description,
        categories=tuple(json.loads(categories)),
        attributes=json.loads(attributes),
        vector=tuple(float(x) for x in np.frombuffer(bytes(vector), dtype="<f4")) if vector else None,
        created_at=created,
        updated_at=updated,
    )


_ITEM_FIELDS = (
    "item_id", "title", "description", "categories", "attributes", "vector", "text_hash", "content_hash",
)  # fmt: skip


def upsert_items_sql(param: Callable[[str], str]) -> str:
    """The statement that inserts or replaces an item row, with each named value
    written by ``param`` (``:name`` for SQLite, ``%(name)s`` for psycopg)."""
    values = ", ".join(param(f) for f in (*_ITEM_FIELDS, "now", "now"))
    updates = ", ".join(f"{f} = excluded.{f}" for f in (*_ITEM_FIELDS[1:], "updated_at"))
    return (
        f"INSERT INTO items ({', '.join(_ITEM_FIELDS)}, created_at, updated_at) VALUES ({values})"
        f" ON CONFLICT (item_id) DO UPDATE SET {updates}"
    )


def changed_items(
    items: Sequence[Item], stored: Mapping[ItemId, str], now: float
) -> tuple[list[dict[str, Any]], UpsertResult]:
    """The rows to write for ``items`` (the last one of each id wins) given the content
    hashes already ``stored``, and what the upsert will report."""
    latest = {item.item_id: item for item in items}
    rows, inserted, updated, unchanged = [], 0, 0, 0
    for item_id, item in latest.items():
        row = item_row(item)
        old = stored.get(item_id)
        if old == row["content_hash"]:
            unchanged += 1
            continue
        if old is None:
            inserted += 1
        else:
            updated += 1
        rows.append({**row, "now": now})
    return rows, UpsertResult(inserted=inserted, updated=updated, unchanged=unchanged)


def texts_to_embed(rows: Iterable[tuple[str, str, str, str]]) -> list[tuple[str, str]]:
    """``(text_hash, text)`` from rows of text hash, title, description and categories."""
    return [(h, item_text(t, d, tuple(json.loads(c)))) for h, t, d, c in rows]


def embedding_rows(
    encoder: str, hashes: Sequence[str], vectors: npt.NDArray[np.float32]
) -> list[tuple[str, str, bytes]]:
    if len(hashes) != len(vectors):
        raise ValueError(f"{len(hashes)} hashes but {len(vectors)} vectors")
    return [(encoder, h, np.asarray(v, dtype="<f4").tobytes()) for h, v in zip(hashes, vectors, strict=True)]


def vector_matrix(encoder: str, rows: Sequence[tuple[ItemId, bytes]]) -> tuple[list[ItemId], npt.NDArray[np.float32]]:
    """Ids and the ``(n, width)`` matrix of rows of item id and vector bytes."""
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    dims = {len(r[1]) for r in rows}
    if len(dims) > 1:
        raise ValueError(
            f"item vectors for encoder {encoder!r} have mixed sizes {sorted(d // 4 for d in dims)}; "
            "precomputed vectors must match the encoder's dimension"
        )
    matrix = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4").reshape(len(rows), -1)
    return [r[0] for r in rows], matrix.astype(np.float32)
