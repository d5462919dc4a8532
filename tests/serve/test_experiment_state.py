"""An experiment's state and counts in the store: they outlive the server that made them,
on SQLite and PostgreSQL, and what is read back is validated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec.domain import Event, EventType
from freshrec.serve.catalog import Catalog
from freshrec.serve.experiments import Experiment, ExperimentError
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Ranker
from freshrec.settings import Settings
from freshrec.storage import Store, open_store

SETTINGS = Settings(experiment={"name": "colours", "arms": {"blue": {"share": 0.5}, "red": {"share": 0.5}}})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    s = open_store(url)
    yield s
    s.close()


def started(store: Store, clock: list[float]) -> Experiment:
    """A server's experiment; the default model serves every arm (no arm has settings of its own)."""
    return Experiment(store, SETTINGS, Ranker(Catalog()), {}, Metrics(), clock=lambda: clock[0])


def click(user: str, item: str, rid: str, kind: EventType = EventType.CLICK, value: float | None = None) -> Event:
    return Event(user, item, kind, 0.0, value=value, context={"recommendation_id": rid})


def test_counts_and_state_outlive_the_server(store: Store) -> None:
    clock = [1_000.0]
    first = started(store, clock)
    assert first.state["status"] == "running"
    route = first.route("someone")
    assert route.arm in ("blue", "red") and route.variant == route.arm
    rid = first.served(route, "someone", ["i1", "i2"])
    first.events([click("someone", "i2", rid), click("someone", "i1", rid, EventType.RATING, 2.0)])  # a low rating
    clock[0] += SETTINGS.experiment.window_s + 1
    first.events([click("someone", "i1", rid, EventType.PURCHASE)])  # too late
    first.save()
    first.change("concluded", route.arm)

    again = started(store, clock)  # a restart
    counts = again.counts[route.arm]
    assert (counts.lists, counts.clicked, counts.attributed) == (1, 1, 1)
    assert (counts.trials, counts.hits) == (3, 3)  # positive events on the last list, attributed or not
    again.events([click("someone", "i1", rid)])  # the lists served before a restart are not remembered
    assert (counts.attributed, counts.trials) == (1, 3)
    assert again.state["status"] == "concluded" and again.state["winner"] == route.arm
    assert again.route("anyone").variant == route.arm and again.route("anyone").arm is None
    summary = again.summary()
    assert summary["arms"][route.arm]["click_through"] == 1.0 and summary["winner"] == route.arm


def test_changes_are_checked_and_a_bad_stored_state_is_refused(store: Store) -> None:
    experiment = started(store, [0.0])
    for status, winner in (("concluded", None), ("running", "blue"), ("paused", None), ("concluded", "green")):
        with pytest.raises(ExperimentError):
            experiment.change(status, winner)
    experiment.change("stopped")
    assert experiment.route("someone").variant == "default"
    store.publish("experiment:colours", b'{"status": "concluded", "winner": "green", "changed_at": 1}')
    with pytest.raises(ExperimentError, match="winner 'green'"):
        experiment.refresh()
    store.publish("experiment:colours:counts", b'{"blue": {"lists": -3}}')
    store.publish("experiment:colours", b'{"status": "running", "winner": null, "changed_at": 1}')
    assert started(store, [0.0]).counts["blue"].lists == 0  # unreadable counts are ignored, with a warning


def test_a_change_made_elsewhere_is_seen_at_the_next_refresh(store: Store) -> None:
    serving, elsewhere = started(store, [0.0]), started(store, [0.0])
    elsewhere.change("stopped")
    assert serving.route("someone").arm is not None  # not yet read
    serving.refresh()  # the server does this once a second
    assert serving.state["status"] == "stopped" and serving.route("someone").variant == "default"
