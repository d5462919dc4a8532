"""The two facts freshrec knows about the world: items and events.

These are plain, immutable value objects. They carry no validation logic of
their own: anything built from outside input goes through
:mod:`freshrec.ingest.validate` first, which is the one place that knows the
rules (and reports them field by field). Code that reads back from the store
builds them directly because what the store holds was validated on the way in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

UserId = str
ItemId = str
Offset = int
"""Position of an event in the append-only log: strictly increasing, never reused."""


class EventType(StrEnum):
    """What a user did with an item.

    ``impression`` means the item was shown; an impression that is not followed
    by a click is a weak negative signal (see :mod:`freshrec.ingest.feedback`).
    """

    VIEW = "view"
    CLICK = "click"
    FAVORITE = "favorite"
    CART = "cart"
    PURCHASE = "purchase"
    RATING = "rating"
    DISLIKE = "dislike"
    IMPRESSION = "impression"


@dataclass(frozen=True, slots=True)
class Event:
    """One piece of feedback.

    ``timestamp`` is in seconds since the Unix epoch, UTC. ``value`` is set for
    ratings only. ``offset`` is assigned by the store and is ``None`` until the
    event has been appended to the log.
    """

    user_id: UserId
    item_id: ItemId
    type: EventType
    timestamp: float
    value: float | None = None
    event_id: str | None = None
    context: dict[str, Any] | None = None
    offset: Offset | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """A recommendable thing, described by text so that it can be understood
    before anyone has interacted with it.

    ``vector`` is an optional precomputed embedding supplied by the user; when
    present it replaces the text encoder's output for this item.
    ``created_at``/``updated_at`` are epoch seconds set by the store.
    """

    item_id: ItemId
    title: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    vector: tuple[float, ...] | None = None
    created_at: float | None = None
    updated_at: float | None = None


def iso(ts: float | None) -> str | None:
    """Format epoch seconds as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def item_text(title: str, description: str = "", categories: tuple[str, ...] | list[str] = ()) -> str:
    """The text an item is understood by: the one function that builds it.

    Title first, then categories, then description. Sentence encoders truncate
    long inputs (all-MiniLM-L6-v2 reads 256 word pieces), so the short, dense
    parts go first and a long description can only lose its own tail.

    >>> item_text("Toy Story (1995)", "", ("Animation", "Comedy"))
    'Toy Story (1995). Animation, Comedy.'
    """
    parts = [title.strip()]
    if categories:
        parts.append(", ".join(c.strip() for c in categories if c.strip()))
    if description.strip():
        parts.append(description.strip())
    text = ". ".join(p.rstrip(".") for p in parts if p)
    return text + "." if text else ""


def text_hash(text: str) -> str:
    """Content hash keying the embedding cache: same text, same embedding."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
