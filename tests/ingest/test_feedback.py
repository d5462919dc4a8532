from __future__ import annotations

import numpy as np
import pytest

from freshrec.domain import EventType
from freshrec.ingest.feedback import TYPE_CODES, FeedbackWeights
from freshrec.settings import FeedbackSettings, IngestSettings


@pytest.fixture
def fw() -> FeedbackWeights:
    return FeedbackWeights(FeedbackSettings(), IngestSettings())


def test_signs_follow_the_documented_defaults(fw: FeedbackWeights) -> None:
    positive = [EventType.VIEW, EventType.CLICK, EventType.FAVORITE, EventType.CART, EventType.PURCHASE]
    assert all(fw.weight(t) > 0 for t in positive)
    assert [fw.weight(t) for t in positive] == sorted(fw.weight(t) for t in positive)
    assert fw.weight(EventType.DISLIKE) < fw.weight(EventType.IMPRESSION) < 0


def test_ratings_are_scaled_around_the_neutral_value(fw: FeedbackWeights) -> None:
    assert [fw.weight(EventType.RATING, v) for v in (5, 4, 3, 2, 0.5)] == pytest.approx([1.0, 0.5, 0.0, -0.4, -1.0])


def test_vectorised_weights_match_scalar_ones(fw: FeedbackWeights) -> None:
    types = list(EventType) * 2
    values = [4.0 if t is EventType.RATING else np.nan for t in types]
    codes = np.array([TYPE_CODES[t] for t in types])
    expected = [fw.weight(t, None if np.isnan(v) else v) for t, v in zip(types, values, strict=True)]
    np.testing.assert_allclose(fw.weights(codes, np.array(values)), expected)


def test_weights_come_from_settings() -> None:
    fw = FeedbackWeights(FeedbackSettings(weights={EventType.VIEW: 0.0}, rating_neutral=2.5), IngestSettings())
    assert fw.weight(EventType.VIEW) == 0.0
    assert fw.weight(EventType.CLICK) == 0.5  # unspecified types keep their defaults
    assert fw.weight(EventType.RATING, 2.5) == 0.0
