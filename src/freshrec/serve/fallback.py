"""Popularity fallback: what to show when no model can say better.

Used for users without history and, until the online model is trained, for
everyone. Items the user already interacted with are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from freshrec.domain import Item, UserId
from freshrec.storage.base import Store


@dataclass(frozen=True, slots=True)
class Recommendation:
    item: Item
    score: float
    explanation: str


def popular_for(store: Store, user_id: UserId, k: int = 10, history: int = 1_000) -> list[Recommendation]:
    """The ``k`` most interacted-with catalog items the user has not touched yet."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    seen = {e.item_id for e in store.user_history(user_id, history)}
    out: list[Recommendation] = []
    for item_id, count in store.popular_items(k + len(seen)):
        if item_id in seen:
            continue
        item = store.get_item(item_id)
        if item is not None:
            out.append(Recommendation(item, float(count), f"popular: {count:,} interactions"))
        if len(out) == k:
            break
    return out
