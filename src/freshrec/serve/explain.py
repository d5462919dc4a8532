"""Explanations: which history event an item's score depends on most.

They are leave-one-out attributions: the user vector is recomputed for the
history without each of its events (one batched forward pass, see
:func:`freshrec.serve.ranker.encode`), and the event whose absence lowers an
item's score most is the one named in "because you rated X", with that drop as
its weight. They say what the model actually used, not a similarity guessed
after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass

from freshrec.domain import Event, EventType, ItemId
from freshrec.serve.scoring import Scoring


@dataclass(frozen=True, slots=True)
class Because:
    item_id: ItemId
    title: str
    type: EventType
    value: float | None
    weight: float
    """How much the item's score drops without this history event."""

    def sentence(self) -> str:
        title = self.title or self.item_id
        if self.type is EventType.RATING and self.value is not None:
            return f"because you rated {title} {self.value:g}"
        return f"because you {_VERBS[self.type]} {title}"


_VERBS = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "clicked",
    EventType.FAVORITE: "saved",
    EventType.CART: "put in your cart",
    EventType.PURCHASE: "bought",
    EventType.RATING: "rated",
    EventType.DISLIKE: "disliked",
    EventType.IMPRESSION: "were shown",
}


@dataclass(frozen=True, slots=True)
class Ranked:
    item_id: ItemId
    score: float
    title: str
    explanation: str | None
    because: tuple[Because, ...] = ()


def because_of(sc: Scoring, event: Event, weight: float) -> Because:
    n = sc.view.codes[event.item_id]
    return Because(event.item_id, sc.view.titles[n], event.type, event.value, weight)


def ranked(sc: Scoring, code: int, score: float, because: tuple[Because, ...], explain: bool) -> Ranked:
    explanation = None
    if explain:
        explanation = because[0].sentence() if because else "matches your recent activity"
    return Ranked(sc.view.ids[code], score, sc.view.titles[code], explanation, because)
