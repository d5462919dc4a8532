"""Signed weights: how much an event says about a user's taste.

Defaults (``[feedback.weights]`` in the config) and why:

=============  ======  ==============================================================
type           weight  reason
=============  ======  ==============================================================
impression     -0.05   shown but (unless a click follows) ignored: a weak negative,
                       kept small because users skip good items all the time
view           +0.25   cheap and often accidental
click          +0.5    an explicit choice, but still cheap
favorite       +1.0    deliberate, lasting interest
cart           +1.0    intent to pay
purchase       +1.5    the strongest implicit signal; money was spent
dislike        -1.0    an explicit rejection, as strong as a favorite
rating         scaled  ``weight * (value - neutral) / (max - neutral)`` above the
                       neutral value, ``weight * (value - neutral) / (neutral - min)``
                       below it: 5 stars -> +1, 4 -> +0.5, 3 -> 0, 2 -> -0.4,
                       0.5 -> -1 on the default 0.5-5 scale with neutral 3
=============  ======  ==============================================================

The sign says whether the user liked the item. Whether an event is an
*interaction* (the user chose to spend time on the item, so it belongs to
their history) is a different question that the model answers: a 2-star
rating is a negative preference but still tells what the user watched.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from freshrec.domain import EventType
from freshrec.settings import FeedbackSettings, IngestSettings

TYPE_CODES: dict[EventType, int] = {t: i for i, t in enumerate(EventType)}
"""Stable small-integer codes for event types, for array-based code."""


class FeedbackWeights:
    """Computes signed event weights from the ``[feedback]`` and ``[ingest]``
    sections (the latter gives the rating scale).

    >>> from freshrec.settings import FeedbackSettings, IngestSettings
    >>> fw = FeedbackWeights(FeedbackSettings(), IngestSettings())
    >>> fw.weight(EventType.RATING, 5.0), fw.weight(EventType.RATING, 1.75)
    (1.0, -0.5)
    """

    def __init__(self, feedback: FeedbackSettings, scale: IngestSettings):
        self.neutral = feedback.rating_neutral
        self.lo, self.hi = scale.rating_min, scale.rating_max
        self._by_code = np.array([feedback.weights[t] for t in EventType], dtype=np.float32)

    def weight(self, type_: EventType, value: float | None = None) -> float:
        return float(self.weights(np.array([TYPE_CODES[type_]]), np.array([value if value is not None else np.nan]))[0])

    def weights(self, codes: npt.NDArray[np.integer], values: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Vectorised :meth:`weight` over type codes and values (NaN where absent)."""
        base: npt.NDArray[np.float32] = self._by_code[codes]
        is_rating = codes == TYPE_CODES[EventType.RATING]
        if not is_rating.any():
            return base
        v = np.asarray(values, dtype=np.float64)
        above = (v - self.neutral) / max(self.hi - self.neutral, 1e-9)
        below = (v - self.neutral) / max(self.neutral - self.lo, 1e-9)
        scaled = np.where(v >= self.neutral, above, below)
        out: npt.NDArray[np.float32] = np.where(is_rating, base * np.nan_to_num(scaled), base).astype(np.float32)
        return out
