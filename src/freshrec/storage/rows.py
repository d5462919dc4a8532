"""Rows as every SQL backend stores them: one encoding of events and items.

Vectors are little-endian float32 bytes, categories and attributes JSON text,
so that a database written by one backend reads the same through another.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from freshrec.domain import Event, EventType, Item, item_text, text_hash

EVENT_COLUMNS = "seq, event_id, user_id, item_id, type, value, ts, context"
ITEM_COLUMNS = "item_id, title, description, categories, attributes, vector, created_at, updated_at"

_TYPES = {t.value: t for t in EventType}  # a dict lookup is several times cheaper than EventType(value)


def context_text(event: Event) -> str | None:
    return json.dumps(event.context, separators=(",", ":"), ensure_ascii=False) if event.context else None


def event_of(row: tuple[Any, ...]) -> Event:
    """An event from a row of :data:`EVENT_COLUMNS`."""
    seq, event_id, user_id, item_id, type_, value, ts, context = row
    return Event(user_id, item_id, _TYPES[type_], ts, value, event_id, json.loads(context) if context else None, seq)


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
