"""The contract every model must pass (cf. river/checks, implicit's recommender_base_test)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest

from freshrec.encoders.hashing import HashingEncoder
from freshrec.evaluate.log import EventLog
from freshrec.evaluate.replay import Sequences
from freshrec.evaluate.runner import ABLATIONS, MODELS, Inputs
from freshrec.model.base import Interactions, Recommender
from freshrec.settings import LearnSettings, ModelSettings, Settings
from tests.evaluate.helpers import tiny_log

# small enough for a unit test; the shape of the network is the same
SMALL = Settings(model=ModelSettings(dim=16, history_length=6, heads=2), learn=LearnSettings(epochs=2, batch_size=64))


@pytest.fixture(scope="module")
def log() -> EventLog:
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(20)}", f"i{rng.integers(40)}", float(t)) for t in range(600)]
    return tiny_log(rows, items=[f"i{n}" for n in range(40)])


@pytest.fixture(params=[*sorted(MODELS), "freshrec-net", "freshrec-retrain", "freshrec-user-ids", "freshrec-dp"])
def factory(request: pytest.FixtureRequest, log: EventLog) -> Callable[[EventLog], Recommender]:
    inputs = Inputs(SMALL, HashingEncoder(32).encode(log.catalog.texts))
    return lambda log: {**MODELS, **ABLATIONS}[request.param](log, inputs)


@pytest.fixture
def private(request: pytest.FixtureRequest) -> bool:
    """Differentially private online learning draws fresh noise in every run, on purpose."""
    return "dp" in request.node.callspec.params["factory"]


def batches(model: Recommender, log: EventLog) -> tuple[Interactions, Interactions, Interactions]:
    seqs = Sequences(log)
    n = model.history_length
    return seqs.batch(np.arange(400), n), seqs.batch(np.arange(400, 600), n), seqs.batch(np.arange(580, 600), n, True)


def test_scores_have_the_catalog_shape_and_are_finite(
    factory: Callable[[EventLog], Recommender], log: EventLog
) -> None:
    model = factory(log)
    warm, _stream, queries = batches(model, log)
    model.fit(warm)
    scores = model.score(queries)
    assert scores.shape == (len(queries), log.n_items) and np.isfinite(scores).all()


def test_same_inputs_same_scores(factory: Callable[[EventLog], Recommender], log: EventLog, private: bool) -> None:
    results = []
    for _ in range(2):
        model = factory(log)
        warm, stream, queries = batches(model, log)
        model.fit(warm)
        model.learn(stream)
        results.append(np.array(model.score(queries)))
    if private:  # never the same noise twice: two updates could otherwise cancel it
        assert not np.array_equal(*results)
    else:
        np.testing.assert_array_equal(*results)


def test_inputs_are_not_mutated_and_scoring_changes_nothing(
    factory: Callable[[EventLog], Recommender], log: EventLog
) -> None:
    model = factory(log)
    warm, stream, queries = batches(model, log)
    before = copy.deepcopy((warm, stream, queries))
    model.fit(warm)
    model.learn(stream)
    first = np.array(model.score(queries))
    second = np.array(model.score(queries))
    np.testing.assert_array_equal(first, second)
    for a, b in zip((warm, stream, queries), before, strict=True):
        for field in a.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_learning_an_event_changes_scores(factory: Callable[[EventLog], Recommender], log: EventLog) -> None:
    model = factory(log)
    warm, stream, queries = batches(model, log)
    model.fit(warm)
    before = np.array(model.score(queries))
    model.learn(stream)
    assert not np.array_equal(before, model.score(queries))
