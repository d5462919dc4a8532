"""Explanations: which history event an item's score depends on most.

They are leave-one-out attributions: the scores are recomputed for the
history without each of its events (one batched forward pass, see
:func:`freshrec.serve.request.encode`), and the event whose absence lowers an
item's score most is the one named, with that drop as its weight. With the
blend, the sentence also says which of its features raised the item most above
the items that would fill the list next (why this one rather than them): what
follows what ("often chosen right after X"), what goes together, text, or the
item's own popularity ("popular this week"), where no history event is named.
They say what the model actually used, not a similarity guessed after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshrec.domain import Event, EventType, ItemId
from freshrec.serve.blend import Blended
from freshrec.serve.scoring import Scoring, top


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
    reason: str | None = None
    """With explanations and the blend: the feature that placed the item (its name in
    the blend's report, e.g. ``transitions``, ``recency-7d``)."""


_ABOUT_AN_EVENT = {
    "transitions": "often chosen right after {title}",
    "co-occurrence": "often goes with {title}",
    "text-similarity": "reads like {title}",
    "text-nearest": "reads like {title}",
    "learned-nearest": "liked by those who liked {title}",
}
"""Sentences of the features that follow the user's history, about its strongest event."""
_POPULAR = {
    "popularity-100": "popular right now",
    "popularity-1000": "popular right now",
    "popularity-10000": "popular lately",
    "popularity-100000": "popular all along",
    "recency-1d": "popular today",
    "recency-7d": "popular this week",
    "recency-30d": "popular this month",
    "untouched": "new: nobody has tried it yet",
}


def sentence(because: tuple[Because, ...], placed_by: tuple[str, float] | None) -> str:
    """The explanation: the strongest history event in the words of the feature that
    placed the item (``(name, its weight)``), or that feature alone when it is about
    the item rather than the user."""
    if placed_by is None or placed_by[0] == "network":
        return because[0].sentence() if because else "matches your recent activity"
    name, weight = placed_by
    if name in _ABOUT_AN_EVENT:
        return (
            _ABOUT_AN_EVENT[name].format(title=because[0].title or because[0].item_id)
            if because
            else ("matches your recent activity")
        )
    if name == "age":
        return "new arrival" if weight < 0 else "a long-time favourite"
    return _POPULAR.get(name, "popular")


def because_of(sc: Scoring, event: Event, weight: float) -> Because:
    n = sc.view.codes[event.item_id]
    return Because(event.item_id, sc.view.titles[n], event.type, event.value, weight)


def ranked(
    sc: Scoring,
    code: int,
    score: float,
    because: tuple[Because, ...],
    explain: bool,
    placed_by: tuple[str, float] | None = None,
) -> Ranked:
    explanation = sentence(because, placed_by) if explain else None
    reason = placed_by[0] if placed_by is not None else None
    return Ranked(sc.view.ids[code], score, sc.view.titles[code], explanation, because, reason)


def reasons(
    blended: tuple[Blended, int], allowed: npt.NDArray[np.bool_], codes: list[int]
) -> list[tuple[str, float] | None]:
    """Per listed item (``codes``), the blend's feature that raised its score most above
    the items that would fill the list next (the next ``len(codes)`` ``allowed`` ones), and
    that feature's weight; ``blended``: the batch's blended scores and where the list's row
    is.

    The question a list's reader asks is "why this one and not the others": against the
    average allowed item (mostly items nobody would list), every listed item stands out
    by the same strong feature, so every sentence said the same (on MovieLens-100K
    co-occurrence placed 99.8% of listed items); against its close competitors, an item
    ahead by popularity or by what follows what says so."""
    if not codes:
        return []
    mixed, start = blended
    allowed = allowed.copy()
    allowed[codes] = False
    foil = np.asarray(top(mixed.scores[start].numpy(), allowed, len(codes)), dtype=np.int64)
    if not len(foil):  # the list took every allowed item
        foil = np.asarray(codes, dtype=np.int64)
    typical = mixed.parts(start, foil).mean(0)
    lift = mixed.parts(start, np.asarray(codes, dtype=np.int64)) - typical
    weights = mixed.weights(start)
    return [(mixed.names[int(f)], float(weights[int(f)])) for f in lift.argmax(1)]
