from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from freshrec.datasets.files import read_records
from freshrec.datasets.synthetic import GeneratorSettings, GroupSampler, World, generate
from freshrec.datasets.vocabulary import TOPICS
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.settings import IngestSettings
from freshrec.storage import SQLiteStore

SMALL = GeneratorSettings(items=200, users=40, events=3_000, seed=7)


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = generate(SMALL, tmp_path / "a")
    b = generate(SMALL, tmp_path / "b")
    c = generate(GeneratorSettings(items=200, users=40, events=3_000, seed=8), tmp_path / "c")
    for name in ("items", "events", "users"):
        assert a[name].read_bytes() == b[name].read_bytes()
    assert a["events"].read_bytes() != c["events"].read_bytes()


def test_generated_files_import_cleanly(tmp_path: Path) -> None:
    paths = generate(SMALL, tmp_path)
    store = SQLiteStore(":memory:")
    validator = Validator(IngestSettings())
    items = import_items(store, read_records(paths["items"]), validator, strict=True)
    events = import_events(store, read_records(paths["events"]), validator, strict=True)
    assert (items.stored, events.stored) == (200, 3_000)
    counts = store.counts("x")
    assert counts.users <= 40 and len(counts.events_by_type) == 8


def test_stream_is_time_ordered_and_uses_new_items(tmp_path: Path) -> None:
    world = World(SMALL)
    events = list(world.events())
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)
    late = {world.items[i]["item_id"] for i in range(SMALL.items) if world.item_created[i] > SMALL.start}
    assert late and any(e["item_id"] in late for e in events)
    created = {world.items[i]["item_id"]: world.item_created[i] for i in range(SMALL.items)}
    assert all(created[e["item_id"]] <= e["timestamp"] for e in events)


def test_tastes_drift_and_show_in_behaviour() -> None:
    world = World(GeneratorSettings(items=300, users=30, events=20_000, seed=3))
    events = list(world.events())
    topic_of = {item["item_id"]: item["categories"][0] for item in world.items}
    names = [t.name for t in TOPICS]
    checked = follows = moved = 0
    for u in range(30):
        uid = f"u{u:05d}"
        own = [e for e in events if e["user_id"] == uid and e["type"] != "dislike"]
        early = Counter(topic_of[e["item_id"]] for e in own if e["timestamp"] < world.drift_time[u] - 3 * 86_400)
        late = Counter(topic_of[e["item_id"]] for e in own if e["timestamp"] > world.drift_time[u] + 3 * 86_400)
        if sum(early.values()) > 30 and sum(late.values()) > 30:
            checked += 1
            top_early = {names[i] for i in world.taste_early[u].argsort()[-3:]}
            top_late = {names[i] for i in world.taste_late[u].argsort()[-3:]}
            follows += early.most_common(1)[0][0] in top_early and late.most_common(1)[0][0] in top_late
            moved += early.most_common(1)[0][0] != late.most_common(1)[0][0]
    # behaviour follows the hidden taste of each period, and the taste moves
    assert checked >= 5
    assert follows >= 0.8 * checked
    assert moved >= 0.5 * checked


def test_items_carry_text_categories_and_prices() -> None:
    item = World(SMALL).items[0]
    assert item["title"] and item["description"].startswith("A ")
    assert item["categories"][0] in {t.name for t in TOPICS}
    assert item["attributes"]["price"] > 0
    json.dumps(item)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="items must be at least 1"):
        GeneratorSettings(items=0)


def test_the_large_catalog_sampler_draws_from_the_exact_distributions() -> None:
    """Catalogs above EXACT_MAX_ITEMS are drawn from by group in logarithmic time: over
    many draws, each kind of draw (by taste, continuing the previous item's
    sub-category, a dislike weighted by topic) lands on items as often as weighing the
    whole catalog does, and only on items that exist at the time."""
    settings = GeneratorSettings(items=400, users=5, events=10, seed=4, continue_share=0.5)
    exact, grouped = World(settings), World(settings)
    grouped.sampler = GroupSampler(grouped)
    t = settings.start + 0.4 * settings.days * 86_400  # some items exist, some not yet
    previous = int(np.flatnonzero(exact.available(t))[0])
    draws = 30_000
    for kind in ("taste", "continue", "dislike"):
        counts = []
        for world in (exact, grouped):
            taste = world.taste(0, t)
            if kind == "dislike":
                avoid = 1.0 / (taste + 1e-3)
                if world.sampler is not None:
                    picks = [world.sampler.by_topic_weights(avoid, t) for _ in range(draws)]
                else:
                    weights = world.item_popularity * avoid[world.item_topic] * world.available(t)
                    picks = list(world.rng.choice(settings.items, size=draws, p=weights / weights.sum()))
            else:
                picks = [world.choose_item(0, t, previous if kind == "continue" else None) for _ in range(draws)]
            assert world.available(t)[picks].all()
            counts.append(np.bincount(picks, minlength=settings.items) / draws)
        distance = 0.5 * np.abs(counts[0] - counts[1]).sum()
        assert distance < 0.06, (kind, distance)  # two samples of one distribution; others differ by far more
